"""Scratch file systems and their snapshots on a real ``sandboxd up``, through raw gRPC.

Write into a sandbox's scratch file system, snapshot it (manually and on stop), start new
sandboxes restored from the snapshots, read the files back; list, get and delete; another
organization sees none of it (every answer as for a missing id); bad requests name their
field; a bucket the server cannot reach is refused. Everything is real: the control plane,
the runner, the sandboxes, the ext4 file systems and the archives in the data directory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from cwsandbox._events import iter_events
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc, streaming_pb2_grpc
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.e2e.conftest import Platform
from tests.support.processes import admin_call, keyed_channel

SLEEP = ("/bin/sh", ["-c", 'trap "exit 0" TERM; sleep infinity & wait'])


def stub(platform: Platform, key: str | None = None) -> gateway_pb2_grpc.GatewayServiceStub:
    channel = keyed_channel(platform.target, key or platform.api_key)
    return gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]


def sh(platform: Platform, sandbox_id: str, script: str, key: str | None = None) -> str:
    channel = keyed_channel(platform.target, key or platform.api_key)
    streaming = streaming_pb2_grpc.GatewayStreamingServiceStub(channel)  # type: ignore[no-untyped-call]
    init = st.ExecStreamInit(sandbox_id=sandbox_id, command=["/bin/sh", "-c", script])
    out, code = b"", None
    for reply in streaming.StreamExec(iter([st.ExecStreamRequest(init=init)]), timeout=60):
        kind = reply.WhichOneof("response")
        if kind == "output" and reply.output.stream_type == st.ExecStreamOutput.STREAM_TYPE_STDOUT:
            out += reply.output.data
        elif kind == "exit":
            code = reply.exit.exit_code
        elif kind == "error":
            raise AssertionError(reply.error)
    assert code == 0, (script, out)
    return out.decode()


def start(gw: Any, *, mount: str = "/data", size: str = "64Mi", source: str = "") -> str:
    fs = g.SandboxFileSystemMount(mount_path=mount, size=size)
    if source:
        fs.file_system_snapshot.file_system_snapshot_id = source
    request = g.StartSandboxRequest(
        command=SLEEP[0], args=SLEEP[1], container_image="python:3.11", file_system=fs
    )
    sandbox_id = str(gw.Start(request, timeout=60).sandbox_id)
    deadline = time.monotonic() + 180
    while True:
        got = gw.Get(g.GetSandboxRequest(sandbox_id=sandbox_id), timeout=30)
        if got.sandbox_status == g.SANDBOX_STATUS_RUNNING:
            return sandbox_id
        assert got.sandbox_status not in (g.SANDBOX_STATUS_FAILED, g.SANDBOX_STATUS_COMPLETED), got
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def error_of(call: Any, *args: Any) -> tuple[grpc.StatusCode, str, dict[str, str], list[str]]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=60)
    err = info.value
    status = status_pb2.Status()
    reason, metadata, fields = "", {}, []
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status.ParseFromString(value)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info_msg = error_details_pb2.ErrorInfo()
            detail.Unpack(info_msg)
            reason, metadata = info_msg.reason, dict(info_msg.metadata)
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return err.code(), reason, metadata, fields  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def data_dir(platform: Platform) -> Path:
    """The platform's data directory (``sandboxd up --data-dir``)."""
    args = platform.proc.args
    return Path(args[args.index("--data-dir") + 1])


@pytest.fixture(scope="module")
def member_keys(platform: Platform) -> Iterator[tuple[str, str]]:
    keys = []
    for org in ("fss-org-a", "fss-org-b"):
        response = admin_call(
            platform.target,
            platform.api_key,
            "CreateApiKey",
            admin_pb2.CreateApiKeyRequest(organization=org, role=admin_pb2.ROLE_MEMBER),
            admin_pb2.CreateApiKeyResponse,
        )
        keys.append(str(response.secret))
    yield keys[0], keys[1]


def test_write_snapshot_stop_restore_read_list_delete(
    platform: Platform,
    data_dir: Path,
    member_keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key_a, key_b = member_keys
    gw = stub(platform, key_a)
    first = start(gw)
    # a real file system of the requested size, owned by the sandbox's root, ENOSPC at the cap
    df = sh(platform, first, "df -k /data | tail -1; stat -c %u /data", key_a).split()
    assert int(df[1]) == 64 * 1024 and df[-1] == "0", df
    full = "{ head -c 80000000 /dev/zero > /data/big; } 2>&1; echo rc=$?; rm -f /data/big"
    assert "No space left on device" in sh(platform, first, full, key_a)
    payload = "head -c 3000000 /dev/urandom > /data/blob; mkdir -p /data/d/e; echo hi > /data/d/e/f"
    sh(platform, first, payload + "; ln -s d/e/f /data/link; chmod 640 /data/d/e/f", key_a)
    digest = sh(platform, first, "md5sum /data/blob", key_a).split()[0]

    made = gw.CreateFileSystemSnapshot(
        g.CreateFileSystemSnapshotRequest(
            sandbox_id=first, idempotency_key="k-1", wait_for_ready=True
        ),
        timeout=120,
    )
    assert made.success and made.file_system_snapshot_id
    manual = made.file_system_snapshot_id
    again = gw.CreateFileSystemSnapshot(
        g.CreateFileSystemSnapshotRequest(sandbox_id=first, idempotency_key="k-1"), timeout=60
    )
    assert again.file_system_snapshot_id == manual  # the same key, the same snapshot
    with monkeypatch.context() as env:  # the sandbox's activity trail records the snapshot
        env.setenv("CWSANDBOX_BASE_URL", platform.base_url)
        env.setenv("CWSANDBOX_API_KEY", key_a)
        snapshots = [e.data for e in iter_events(first) if e.kind == "snapshot"]
    assert [d["snapshot_id"] for d in snapshots] == [manual, manual]
    got = gw.GetFileSystemSnapshot(
        g.GetFileSystemSnapshotRequest(file_system_snapshot_id=manual), timeout=30
    )
    assert got.status == g.FILE_SYSTEM_SNAPSHOT_STATUS_READY
    assert got.trigger == g.FILE_SYSTEM_SNAPSHOT_TRIGGER_MANUAL
    assert got.source_sandbox_id == first and got.idempotency_key == "k-1"
    assert got.size_bytes > 3_000_000 and got.HasField("completed_at")
    archives = list((data_dir / "snapshots").rglob(f"{manual}.tar"))
    assert len(archives) == 1 and archives[0].stat().st_size == got.size_bytes

    # snapshot on stop: the file written after the manual snapshot is in it
    sh(platform, first, "echo later > /data/later", key_a)
    stopped = gw.Stop(
        g.StopSandboxRequest(
            sandbox_id=first, file_system_snapshot_on_stop=True, wait_for_ready=True
        ),
        timeout=120,
    )
    assert stopped.success and stopped.file_system_snapshot_id
    on_stop = stopped.file_system_snapshot_id
    record = gw.GetFileSystemSnapshot(
        g.GetFileSystemSnapshotRequest(file_system_snapshot_id=on_stop), timeout=30
    )
    assert record.trigger == g.FILE_SYSTEM_SNAPSHOT_TRIGGER_STOP
    assert record.status == g.FILE_SYSTEM_SNAPSHOT_STATUS_READY
    status = gw.Get(g.GetSandboxRequest(sandbox_id=first), timeout=30).sandbox_status
    assert status in (g.SANDBOX_STATUS_COMPLETED, g.SANDBOX_STATUS_TERMINATED)

    # restore each into a new sandbox, at another path and size
    restored = start(gw, mount="/work/restored", size="32Mi", source=on_stop)
    out = sh(platform, restored, "cd /work/restored && md5sum blob; cat d/e/f later; "
             "readlink link; stat -c '%a %u' d/e/f; df -k . | tail -1", key_a)  # fmt: skip
    lines = out.splitlines()
    assert lines[0].split()[0] == digest
    assert lines[1:4] == ["hi", "later", "d/e/f"]
    assert lines[4] == "640 0"  # mode and the sandbox's own owner survive
    assert int(lines[5].split()[1]) == 32 * 1024
    early = start(gw, source=manual)
    assert "later" not in sh(platform, early, "ls /data", key_a)

    # list (paged), per organization
    listed: list[str] = []
    token = ""
    while True:
        page = gw.ListFileSystemSnapshots(
            g.ListFileSystemSnapshotsRequest(page_size=1, page_token=token), timeout=30
        )
        listed += [s.file_system_snapshot_id for s in page.file_system_snapshots]
        token = page.next_page_token
        if not token:
            break
    assert set(listed) == {manual, on_stop}
    other = stub(platform, key_b)
    assert not other.ListFileSystemSnapshots(
        g.ListFileSystemSnapshotsRequest(), timeout=30
    ).file_system_snapshots

    # another organization: every snapshot RPC answers as for a missing id
    missing = "fss-000000000000000000000000"
    for call, request in [
        (other.GetFileSystemSnapshot, g.GetFileSystemSnapshotRequest),
        (other.DeleteFileSystemSnapshot, g.DeleteFileSystemSnapshotRequest),
    ]:
        foreign = error_of(call, request(file_system_snapshot_id=manual))
        absent = error_of(call, request(file_system_snapshot_id=missing))
        assert foreign[0] == absent[0] == grpc.StatusCode.NOT_FOUND
        assert foreign[1] == absent[1] == "CWSANDBOX_FSS_NOT_FOUND"
    foreign_start = error_of(
        other.Start,
        g.StartSandboxRequest(
            command="sleep", args=["1"],
            file_system=g.SandboxFileSystemMount(
                mount_path="/data",
                file_system_snapshot=g.FileSystemSnapshotSource(file_system_snapshot_id=manual),
            ),
        ),
    )  # fmt: skip
    assert foreign_start[:2] == (grpc.StatusCode.NOT_FOUND, "CWSANDBOX_FSS_NOT_FOUND")
    foreign_create = error_of(
        other.CreateFileSystemSnapshot, g.CreateFileSystemSnapshotRequest(sandbox_id=restored)
    )
    assert foreign_create[:2] == (grpc.StatusCode.NOT_FOUND, "CWSANDBOX_SANDBOX_NOT_FOUND")

    # delete: gone from the list, the get and the disk
    for snap in (manual, on_stop):
        assert gw.DeleteFileSystemSnapshot(
            g.DeleteFileSystemSnapshotRequest(file_system_snapshot_id=snap), timeout=60
        ).success
    assert (
        error_of(
            gw.GetFileSystemSnapshot, g.GetFileSystemSnapshotRequest(file_system_snapshot_id=manual)
        )[0]
        == grpc.StatusCode.NOT_FOUND
    )
    assert not list((data_dir / "snapshots").rglob("*.tar"))
    for sandbox_id in (restored, early):
        gw.Delete(g.DeleteSandboxRequest(sandbox_id=sandbox_id), timeout=60)
    gw.Delete(g.DeleteSandboxRequest(sandbox_id=first), timeout=60)


def test_bad_requests_name_their_field(platform: Platform) -> None:
    gw = stub(platform)
    for mount, size, field in [
        ("data", "1Gi", "file_system.mount_path"),
        ("/", "1Gi", "file_system.mount_path"),
        ("/proc/x", "1Gi", "file_system.mount_path"),
        ("/sys", "1Gi", "file_system.mount_path"),
        ("/dev/shm", "1Gi", "file_system.mount_path"),
        ("/a/../etc", "1Gi", "file_system.mount_path"),
        ("/data", "lots", "file_system.size"),
        ("/data", "100Gi", "file_system.size"),  # over the profile's disk ceiling (10Gi)
    ]:
        request = g.StartSandboxRequest(
            command="sleep", args=["1"],
            file_system=g.SandboxFileSystemMount(mount_path=mount, size=size),
        )  # fmt: skip
        code, _reason, _meta, fields = error_of(gw.Start, request)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field]), (mount, size)
    # a sandbox without a file system has nothing to snapshot
    plain = gw.Start(g.StartSandboxRequest(command=SLEEP[0], args=SLEEP[1]), timeout=60).sandbox_id
    code, reason, _m, _f = error_of(
        gw.CreateFileSystemSnapshot, g.CreateFileSystemSnapshotRequest(sandbox_id=plain)
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CWSANDBOX_FSS_NOT_SUPPORTED")
    gw.Delete(g.DeleteSandboxRequest(sandbox_id=plain), timeout=60)


def test_bucket_config_local_only(platform: Platform, data_dir: Path) -> None:
    gw = stub(platform)
    config = gw.GetFileSystemSnapshotBucketConfig(
        g.GetFileSystemSnapshotBucketConfigRequest(), timeout=30
    )
    assert config.mode == g.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_CW_MANAGED
    for name, region, field in [
        ("s3://my-bucket", "", "bucket_name"),
        ("my-bucket", "us-east-1", "region"),
    ]:
        code, _r, _m, fields = error_of(
            gw.SetFileSystemSnapshotBucketConfig,
            g.SetFileSystemSnapshotBucketConfigRequest(bucket_name=name, region=region),
        )
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    code, reason, meta, _f = error_of(
        gw.SetFileSystemSnapshotBucketConfig,
        g.SetFileSystemSnapshotBucketConfigRequest(bucket_name="not-made-yet"),
    )
    assert (code, reason, meta["field"]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "CWSANDBOX_FSS_BUCKET_UNAVAILABLE", "bucket_name"
    )  # fmt: skip
    unchanged = gw.GetFileSystemSnapshotBucketConfig(
        g.GetFileSystemSnapshotBucketConfigRequest(), timeout=30
    )
    assert unchanged.mode == g.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_CW_MANAGED  # nothing was stored
    (data_dir / "buckets" / "team-disk").mkdir(parents=True)
    try:
        config = gw.SetFileSystemSnapshotBucketConfig(
            g.SetFileSystemSnapshotBucketConfigRequest(bucket_name="team-disk"), timeout=30
        )
        assert config.mode == g.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_BRING_YOUR_OWN
        assert config.effective_bucket_name == "team-disk"
        sandbox_id = start(gw, size="16Mi")
        sh(platform, sandbox_id, "echo to-bucket > /data/x")
        made = gw.CreateFileSystemSnapshot(
            g.CreateFileSystemSnapshotRequest(sandbox_id=sandbox_id, wait_for_ready=True),
            timeout=120,
        )
        snap = gw.GetFileSystemSnapshot(
            g.GetFileSystemSnapshotRequest(file_system_snapshot_id=made.file_system_snapshot_id),
            timeout=30,
        )
        assert snap.object_bucket == "team-disk"
        (archive,) = (data_dir / "buckets" / "team-disk").rglob("*.tar")
        assert hashlib.sha256(archive.read_bytes()).hexdigest()  # stored there, whole
        gw.DeleteFileSystemSnapshot(
            g.DeleteFileSystemSnapshotRequest(file_system_snapshot_id=snap.file_system_snapshot_id),
            timeout=60,
        )
        gw.Delete(g.DeleteSandboxRequest(sandbox_id=sandbox_id), timeout=60)
    finally:
        gw.SetFileSystemSnapshotBucketConfig(
            g.SetFileSystemSnapshotBucketConfigRequest(bucket_name=""), timeout=30
        )
