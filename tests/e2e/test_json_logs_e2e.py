"""``sandboxd up --log-format json``: every log line is a JSON object naming what it concerns.

Lines logged while serving a member's exec carry the member's organization and the sandbox;
nothing but the machine-readable ``KEY=value`` lines and ``sandboxd: ...`` notices is plain
text (stdout and stderr are read together here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cwsandbox import Sandbox
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.e2e.conftest import Platform, start_platform
from tests.support.faults import wait_until
from tests.support.processes import admin_call


@pytest.fixture(scope="module")
def json_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from start_platform(tmp_path_factory, "--log-format", "json", "--log-level", "INFO")


def test_log_lines_are_json_with_organization_and_sandbox(
    json_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = admin_call(
        json_platform.target,
        json_platform.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization="team-logs", role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    ).secret
    monkeypatch.setenv("CWSANDBOX_BASE_URL", json_platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", secret)
    with Sandbox.run(profile_names=["locked-down"]) as sandbox:
        sandbox.wait()
        assert sandbox.exec(["true"]).result().returncode == 0

        def exec_lines() -> list[dict[str, str]]:
            found = []
            for line in list(json_platform.proc.lines):
                if line.startswith("{"):
                    entry = json.loads(line)
                    if entry["message"].endswith(
                        f"{sandbox.sandbox_id}: exec by " + entry["message"].rsplit(" ", 1)[-1]
                    ):
                        found.append(entry)
            return found

        wait_until("the exec's log line", lambda: bool(exec_lines()), 10)
        (entry,) = exec_lines()
        assert entry["organization"] == "team-logs"
        assert entry["sandbox_id"] == sandbox.sandbox_id
        assert entry["level"] == "INFO" and entry["logger"] == "sandboxd.controlplane.events"
    for line in json_platform.proc.lines:
        if line.startswith("{"):
            assert set(json.loads(line)) >= {"time", "level", "logger", "message"}
        else:
            assert line.startswith(("sandboxd: ", "  ")) or "=" in line.split(" ", 1)[0], line
