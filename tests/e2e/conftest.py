"""A real ``sandboxd up`` for end-to-end tests, and the official client in its own venv.

Authentication is on: each platform's first administrator key (printed by ``sandboxd up``)
goes into child environments (:meth:`Platform.env`) and, for tests that use the client in
this process, into ``CWSANDBOX_API_KEY`` (with ``CWSANDBOX_BASE_URL``) for the duration of
each test that uses a platform.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.support.official import OFFICIAL_VERSION, official_python
from tests.support.ports import free_port
from tests.support.processes import SANDBOXD, Proc, admin_call, child_env, printed

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["OFFICIAL_VERSION", "Platform", "run_python"]
# The guide's get_runner block looks up this id; the all-in-one runner takes it.
GUIDE_RUNNER_ID = "runner-abc-123"


@dataclass
class Platform:
    """A running ``sandboxd up`` and its administrator key."""

    base_url: str
    runner_id: str
    proc: Proc
    api_key: str

    @property
    def target(self) -> str:
        return self.base_url.split("://", 1)[1]

    def env(self, **extra: str) -> dict[str, str]:
        """A child environment for clients: base URL and the admin key (override with extra)."""
        values = {"CWSANDBOX_BASE_URL": self.base_url, "CWSANDBOX_API_KEY": self.api_key}
        return child_env(**{**values, **extra})

    def member_key(self, organization: str) -> str:
        """A new member key of ``organization`` (made with the administrator key)."""
        response = admin_call(
            self.target,
            self.api_key,
            "CreateApiKey",
            admin_pb2.CreateApiKeyRequest(organization=organization, role=admin_pb2.ROLE_MEMBER),
            admin_pb2.CreateApiKeyResponse,
        )
        return str(response.secret)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One ``sandboxd up`` shared by a test worker's session (tests must clean up after them)."""
    yield from _start_platform(tmp_path_factory)


@pytest.fixture(scope="module")
def quiet_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A ``sandboxd up`` of a module's own, for tests that count what runs on it."""
    yield from _start_platform(tmp_path_factory)


def _start_platform(
    tmp_path_factory: pytest.TempPathFactory, *extra_args: str
) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("up")
    port = free_port()
    proc = Proc(
        [*SANDBOXD, "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
         "--runner-id", GUIDE_RUNNER_ID, *extra_args],
        child_env(),
    ).start()  # fmt: skip
    try:
        line = proc.wait_for_line("CWSANDBOX_BASE_URL=", timeout=600)
        api_key = printed(proc, "CWSANDBOX_API_KEY")
        yield Platform(line.split("=", 1)[1], GUIDE_RUNNER_ID, proc, api_key)
    finally:
        assert proc.stop() == 0, proc.output


start_platform = _start_platform  # for modules that need their own options (--config ...)


@pytest.fixture(autouse=True)
def _platform_key(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients in this process talk to the platform a test uses, with its administrator key."""
    for name in ("platform", "quiet_platform"):
        if name in request.fixturenames:
            platform: Platform = request.getfixturevalue(name)
            monkeypatch.setenv("CWSANDBOX_BASE_URL", platform.base_url)
            monkeypatch.setenv("CWSANDBOX_API_KEY", platform.api_key)
            return


@pytest.fixture(scope="session")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_python()


def run_python(python: Path | str, script: Path | str, env: dict[str, str]) -> str:
    """Run a script file (Path) or source text (str); fail with its output; return stdout."""
    args = [str(python), str(script)] if isinstance(script, Path) else [str(python), "-c", script]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


OUR_PYTHON = sys.executable
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
