"""Both clients, ours and the official ``cwsandbox==0.26.2``, against an authenticating server.

A call without a key, with a malformed or unknown key, or with a key revoked a moment ago is
refused with ``CWSandboxAuthenticationError`` — for discovery and for sandbox calls alike —
and the same calls with a valid key of either role go through. The control plane has no
runner here: authentication is checked before anything else, so nothing needs one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.e2e.conftest import OUR_PYTHON, run_python
from tests.support.processes import ControlPlaneProcess, child_env

SCRIPT = r"""
import json, cwsandbox
from cwsandbox import Sandbox

def outcome(call):
    try:
        call()
    except cwsandbox.CWSandboxAuthenticationError:
        return "auth-error"
    except cwsandbox.CWSandboxError as e:
        return type(e).__name__
    return "ok"

print(json.dumps({
    "list_profiles": outcome(lambda: cwsandbox.list_profiles()),
    "get_runner": outcome(lambda: cwsandbox.get_runner("nobody")),
    "list_sandboxes": outcome(lambda: Sandbox.list().result()),
    "from_id": outcome(lambda: Sandbox.from_id("sb-00000000000deadbeef").result()),
    "delete": outcome(lambda: Sandbox.delete("sb-00000000000deadbeef").result()),
}))
"""

REFUSED = {
    "list_profiles": "auth-error",
    "get_runner": "auth-error",
    "list_sandboxes": "auth-error",
    "from_id": "auth-error",
    "delete": "auth-error",
}


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(data_dir=tmp_path_factory.mktemp("auth-cp")).start()
    yield cp
    cp.stop()


def outcomes(python: Path | str, cp: ControlPlaneProcess, key: str | None) -> dict[str, str]:
    env = child_env(CWSANDBOX_BASE_URL=cp.url)
    if key is not None:
        env["CWSANDBOX_API_KEY"] = key
    return dict(json.loads(run_python(python, SCRIPT, env)))


@pytest.mark.parametrize("client", ["official", "ours"])
def test_no_bad_or_revoked_key_is_an_authentication_error(
    control_plane: ControlPlaneProcess, official: Path, client: str
) -> None:
    python = official if client == "official" else OUR_PYTHON
    member = control_plane.create_key("team-auth")
    revoked = control_plane.create_key("team-auth", name="to be revoked")
    # Valid keys of both roles get past authentication (to the answers the calls deserve).
    for key in (control_plane.admin_key, member, revoked):
        got = outcomes(python, control_plane, key)
        assert got["list_profiles"] == "ok"
        assert got["list_sandboxes"] == "ok"
        assert got["get_runner"] == "RunnerNotFoundError"
        assert got["from_id"] == "SandboxNotFoundError"
    key_id = revoked.split("_")[1]
    control_plane.admin(
        "RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id=key_id), admin_pb2.RevokeApiKeyResponse
    )
    # Refused at once after the revocation (no cache delay), and so are missing or bad keys.
    for key in (revoked, None, "", "not-a-key", member[:-4] + "AAAA"):
        assert outcomes(python, control_plane, key) == REFUSED, key
