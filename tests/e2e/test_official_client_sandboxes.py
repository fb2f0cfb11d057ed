"""The official ``cwsandbox==0.26.2`` client creates, execs in and stops real sandboxes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import OUR_PYTHON, Platform, run_python

SCRIPT = r"""
import json, uuid, cwsandbox
from cwsandbox import Sandbox

out = {}
tag = uuid.uuid4().hex
sb = Sandbox.run(profile_names=["locked-down"], tags=[tag])
sb.wait()
out["status"] = str(sb.status)
r = sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"]).result()
out["exec"] = [r.stdout, r.stderr, r.returncode]
p = sb.exec(["cat"], stdin=True)
p.stdin.write(b"hello from stdin\n").result()
p.stdin.close().result()
out["stdin"] = p.result().stdout
out["env"] = sb.exec(["sh", "-c", "echo $HOME; id -u; hostname"]).result().stdout
listed = Sandbox.list(tags=[tag]).result()
out["listed"] = [s.sandbox_id == sb.sandbox_id for s in listed]
again = Sandbox.from_id(sb.sandbox_id).result()
out["again"] = again.exec(["echo", "adopted"]).result().stdout
sb.stop().result()
out["stopped"] = str(sb.status)
out["returncode"] = sb.returncode
try:
    sb.exec(["true"]).result()
except cwsandbox.SandboxNotRunningError:
    out["after_stop"] = "SandboxNotRunningError"
try:
    Sandbox.run(profile_names=["locked-down"], network={"egress_mode": "internet"}).wait()
except cwsandbox.SandboxError as e:
    out["mismatch"] = [type(e).__name__, e.reason]
print(json.dumps(out))
"""


def test_official_client_sandbox_lifecycle(platform: Platform, official: Path) -> None:
    result = json.loads(run_python(official, SCRIPT, platform.env()))
    assert result["status"].lower().endswith("running")
    assert result["exec"] == ["out\n", "err\n", 3]
    assert result["stdin"] == "hello from stdin\n"
    assert result["listed"] == [True]
    assert result["again"] == "adopted\n"
    assert result["stopped"].lower().endswith(("completed", "terminated"))
    assert result["returncode"] in (0, None)
    assert result["after_stop"] == "SandboxNotRunningError"
    assert result["mismatch"] == ["SandboxError", "CWSANDBOX_PROFILE_MISMATCH"]


def test_our_client_runs_the_same_script(platform: Platform) -> None:
    result = json.loads(run_python(OUR_PYTHON, SCRIPT, platform.env()))
    assert result["exec"] == ["out\n", "err\n", 3]
    assert result["stdin"] == "hello from stdin\n"
    assert result["again"] == "adopted\n"
    assert result["mismatch"][1] == "CWSANDBOX_PROFILE_MISMATCH"
