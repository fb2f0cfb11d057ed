"""File-system snapshots through the official ``cwsandbox==0.26.2`` client, end to end.

The client's own calls (v1beta2.md §10): ``Sandbox.run(file_system_snapshot=...)``,
``snapshot()``, ``stop(snapshot_on_stop=True)``, ``get_snapshot``, ``list_snapshots``,
``delete_snapshot`` and the bucket configuration, against a real ``sandboxd up``: write,
snapshot, stop, start a new sandbox from the snapshot, read the file back, delete, list.
Our own client has the same API and runs the same script.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import OUR_PYTHON, Platform, run_python

OFFICIAL_SCRIPT = r"""
import json, uuid, cwsandbox
from cwsandbox import Sandbox, FileSystemSnapshotOptions

out = {}
Opts = FileSystemSnapshotOptions
sb = Sandbox.run(file_system_snapshot=Opts(mount_path="/workspace", size="64Mi"))
write = "echo kept > /workspace/note && mkdir /workspace/d && echo deep > /workspace/d/x"
sb.exec(["sh", "-c", write]).result()
manual = sb.snapshot().result()
out["manual"] = manual
sb.exec(["sh", "-c", "echo after > /workspace/after"]).result()
sb.stop(snapshot_on_stop=True).result()
on_stop = sb.file_system_snapshot_id
out["on_stop"] = on_stop
snap = Sandbox.get_snapshot(on_stop).result()
same = snap.source_sandbox_id == sb.sandbox_id
out["get"] = [str(snap.status), str(snap.trigger), same, snap.size_bytes > 0]
restored = Sandbox.run(file_system_snapshot=FileSystemSnapshotOptions(
    mount_path="/restored", size="64Mi", file_system_snapshot_id=on_stop))
read = "cat /restored/note /restored/d/x /restored/after"
out["read"] = restored.exec(["sh", "-c", read]).result().stdout
out["read_file"] = restored.read_file("/restored/note").result().decode()
restored.stop().result()
listed = Sandbox.list_snapshots(source_sandbox_id=sb.sandbox_id).result()
out["listed"] = sorted(s.file_system_snapshot_id for s in listed) == sorted([manual, on_stop])
cfg = Sandbox.get_snapshot_bucket_config().result()
out["bucket"] = [str(cfg.mode), cfg.effective_bucket_name]
try:
    Sandbox.set_snapshot_bucket_config(bucket_name="s3://elsewhere").result()
except cwsandbox.SandboxError as e:
    out["bad_bucket"] = type(e).__name__
for snap_id in (manual, on_stop):
    Sandbox.delete_snapshot(snap_id).result()
Sandbox.delete_snapshot(manual, missing_ok=True).result()
try:
    Sandbox.get_snapshot(manual).result()
except cwsandbox.SnapshotNotFoundError:
    out["deleted"] = "SnapshotNotFoundError"
print(json.dumps(out))
"""


def test_official_client_snapshots(platform: Platform, official: Path) -> None:
    result = json.loads(run_python(official, OFFICIAL_SCRIPT, platform.env()))
    assert result["manual"].startswith("fss-") and result["on_stop"].startswith("fss-")
    status, trigger, same_source, sized = result["get"]
    assert status.lower().endswith("ready") and trigger.lower().endswith("stop")
    assert same_source and sized
    assert result["read"] == "kept\ndeep\nafter\n"
    assert result["read_file"] == "kept\n"
    assert result["listed"] is True
    assert result["bucket"][0].lower().endswith("managed")
    assert result["bucket"][1] == "sandboxd-managed"
    assert result["bad_bucket"] == "SandboxError"  # INVALID_ARGUMENT: nothing stored
    assert result["deleted"] == "SnapshotNotFoundError"


def test_our_client_runs_the_same_script(platform: Platform) -> None:
    """Our client has the same snapshot API (client-features.md) and gets the same answers."""
    result = json.loads(run_python(OUR_PYTHON, OFFICIAL_SCRIPT, platform.env()))
    assert result["read"] == "kept\ndeep\nafter\n"
    assert result["get"][2:] == [True, True]
    assert result["listed"] is True
    assert result["bucket"] == ["cw_managed", "sandboxd-managed"]
    assert result["bad_bucket"] == "SandboxError"
    assert result["deleted"] == "SnapshotNotFoundError"


OUR_SCRIPT = r"""
import json, grpc
from cwsandbox import Sandbox, FileSystemSnapshotOptions
from sandboxd_protocol.v1beta2 import gateway_pb2, gateway_pb2_grpc
import os

out = {}
Opts = FileSystemSnapshotOptions
sb = Sandbox.run(file_system_snapshot=Opts(mount_path="/workspace", size="32Mi"))
sb.exec(["sh", "-c", "echo ours > /workspace/f"]).result()
sb.stop(snapshot_on_stop=True).result()
snap = sb.file_system_snapshot_id
out["snap"] = snap
again = Sandbox.run(file_system_snapshot=FileSystemSnapshotOptions(
    mount_path="/w", file_system_snapshot_id=snap))
out["read"] = again.exec(["cat", "/w/f"]).result().stdout
again.stop().result()
channel = grpc.insecure_channel(os.environ["CWSANDBOX_BASE_URL"].split("://")[1])
stub = gateway_pb2_grpc.GatewayServiceStub(channel)
md = [("authorization", "Bearer " + os.environ["CWSANDBOX_API_KEY"])]
stub.DeleteFileSystemSnapshot(gateway_pb2.DeleteFileSystemSnapshotRequest(
    file_system_snapshot_id=snap), metadata=md, timeout=60)
print(json.dumps(out))
"""


def test_our_client_restores_a_snapshot_on_stop(platform: Platform) -> None:
    result = json.loads(run_python(OUR_PYTHON, OUR_SCRIPT, platform.env()))
    assert result["snap"].startswith("fss-")
    assert result["read"] == "ours\n"
