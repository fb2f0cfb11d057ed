"""v1 scratch volumes and file-system snapshots, end to end (protocol/v1.md §10).

The official 1.22.0 client, in its own virtualenv, against a real ``sandboxd up``: a sandbox
with a scratch volume writes files, snapshots it (CreateFileSystemSnapshot, then polling),
stops with ``snapshot_on_stop`` (DeleteSandbox.snapshot_volumes), and a new sandbox restored
from that snapshot reads the files back; snapshots are got, listed by source, deleted; the
bucket configuration goes through SettingsService. Raw gRPC then sends what no client
would: every malformed scratch volume and snapshot request is INVALID_ARGUMENT naming its
field, path-traversal mount paths and volume names are refused, and another organization's
snapshots look exactly like missing ones on every snapshot RPC, and stay untouched.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1 import sandbox_pb2 as v
from tests.e2e.conftest import Platform, run_python
from tests.support.official import OFFICIAL_V1_VERSION, OFFICIAL_V1_VERSIONS, official_python
from tests.support.processes import admin_call, keyed_channel
from tests.support.v1_calls import (
    SANDBOXES,
    SLEEP,
    answer,
    attempt,
    details,
    rpc,
    wait_state,
)

pytestmark = pytest.mark.official

OFFICIAL = r"""
import json, cwsandbox
from cwsandbox import Sandbox, FileSystemSnapshotOptions as Opts
out = {}
def error_of(call):
    try:
        call()
    except Exception as e:
        return [type(e).__name__, getattr(e, "reason", None)]
    return None
sb = Sandbox.run(file_system_snapshot=Opts(mount_path="/workspace", size="64Mi"))
sb.wait()
write = "echo kept > /workspace/note && mkdir /workspace/d && echo deep > /workspace/d/x"
out["wrote"] = sb.exec(["sh", "-c", write]).result().returncode
out["mounted"] = sb.exec(["sh", "-c", "df -k /workspace | tail -1"]).result().stdout.split()[1]
manual = sb.snapshot().result()
out["manual"] = manual
sb.exec(["sh", "-c", "echo after > /workspace/after"]).result()
sb.stop(snapshot_on_stop=True).result()
on_stop = sb.file_system_snapshot_id
out["on_stop"] = on_stop
out["stopped"] = str(sb.status)
snap = Sandbox.get_snapshot(on_stop).result()
out["get"] = [str(snap.status), str(snap.trigger), snap.source_sandbox_id == sb.sandbox_id,
              snap.size_bytes > 0, snap.source_volume_name]
first = Sandbox.get_snapshot(manual).result()
out["manual_get"] = [str(first.status), str(first.trigger)]
restored = Sandbox.run(file_system_snapshot=Opts(
    mount_path="/restored", size="64Mi", file_system_snapshot_id=on_stop))
restored.wait()
out["read"] = restored.exec(["sh", "-c", "cat /restored/note /restored/d/x /restored/after"]
                            ).result().stdout
out["read_file"] = restored.read_file("/restored/note").result().decode()
old = Sandbox.run(file_system_snapshot=Opts(
    mount_path="/old", size="64Mi", file_system_snapshot_id=manual))
old.wait()
out["old"] = old.exec(["sh", "-c", "ls /old"]).result().stdout.split()
restored.stop().result()
old.stop().result()
listed = Sandbox.list_snapshots(source_sandbox_id=sb.sandbox_id).result()
out["listed"] = sorted(s.file_system_snapshot_id for s in listed) == sorted([manual, on_stop])
cfg = Sandbox.get_snapshot_bucket_config().result()
out["bucket"] = [str(cfg.mode), cfg.effective_bucket_name]
out["bad_bucket"] = error_of(
    lambda: Sandbox.set_snapshot_bucket_config(bucket_name="s3://elsewhere").result())
plain = Sandbox.run()
plain.wait()
out["no_scratch"] = error_of(lambda: plain.snapshot().result())
plain.stop().result()
for snap_id in (manual, on_stop):
    Sandbox.delete_snapshot(snap_id).result()
out["delete_again"] = error_of(lambda: Sandbox.delete_snapshot(manual, missing_ok=True).result())
out["deleted"] = error_of(lambda: Sandbox.get_snapshot(manual).result())
out["restore_deleted"] = error_of(lambda: Sandbox.run(file_system_snapshot=Opts(
    mount_path="/w", file_system_snapshot_id=manual)).wait())
print(json.dumps(out, default=str))
"""


@pytest.mark.parametrize("version", OFFICIAL_V1_VERSIONS)
def test_official_v1_client_scratch_snapshot_restore(platform: Platform, version: str) -> None:
    python = official_python(version)
    result = json.loads(run_python(python, OFFICIAL, platform.env()).strip().splitlines()[-1])
    assert result["wrote"] == 0
    assert 50_000 < int(result["mounted"]) <= 65_536  # a 64 MiB file system of its own
    assert result["manual"].startswith("fss-") and result["on_stop"].startswith("fss-")
    assert result["stopped"] in ("completed", "terminated")
    status, trigger, same_source, sized, volume = result["get"]
    assert status.lower().endswith("ready") and trigger.lower().endswith("on_delete")
    assert same_source and sized and volume == "workspace"
    assert result["manual_get"][1].lower().endswith("manual")
    assert result["read"] == "kept\ndeep\nafter\n"
    assert result["read_file"] == "kept\n"
    assert result["old"] == ["d", "note"]  # the manual snapshot is from before "after"
    assert result["listed"] is True
    assert result["bucket"][0].lower().endswith("managed")
    assert result["bucket"][1] == "sandboxd-managed"
    # 0.27.0 maps INVALID_ARGUMENT to its base class; later releases to the validation error.
    expected = "SandboxError" if version == "0.27.0" else "SandboxValidationError"
    assert result["bad_bucket"][0] == expected, result["bad_bucket"]
    assert result["no_scratch"][1] == "CWSANDBOX_FSS_NOT_SUPPORTED"
    assert result["delete_again"] is None
    assert result["deleted"] == ["SnapshotNotFoundError", "CWSANDBOX_FSS_NOT_FOUND"]
    assert result["restore_deleted"] == ["SnapshotNotFoundError", "CWSANDBOX_FSS_NOT_FOUND"]


# -- raw gRPC: bad input -------------------------------------------------------------------


def scratch_create(
    volumes: list[v.SandboxVolume], mounts: list[v.VolumeMount]
) -> v.CreateSandboxRequest:
    container = v.Container(
        name="main", image="python:3.11", command=SLEEP[0], args=SLEEP[1:], volume_mounts=mounts
    )
    spec = v.SandboxSpec(containers=[container], volumes=volumes)
    return v.CreateSandboxRequest(sandbox=v.Sandbox(spec=spec))


def scratch(name: str = "workspace", size: str = "32Mi", restore: str = "") -> v.SandboxVolume:
    return v.SandboxVolume(
        name=name, scratch=v.ScratchVolume(size=size, restore_from_snapshot_id=restore)
    )


def mount(volume: str = "workspace", path: str = "/workspace", **more: Any) -> v.VolumeMount:
    return v.VolumeMount(volume=volume, mount_path=path, **more)


M = "spec.containers[0].volume_mounts"
BAD_CREATES = {
    "second scratch volume": (
        scratch_create([scratch("a"), scratch("b")], [mount("a"), mount("b", "/b")]),
        "spec.volumes[1]",
    ),
    "name climbs": (scratch_create([scratch("../etc")], [mount("../etc")]), "spec.volumes[0].name"),
    "name with slash": (scratch_create([scratch("a/b")], [mount("a/b")]), "spec.volumes[0].name"),
    "empty name": (scratch_create([scratch("")], [mount("")]), "spec.volumes[0].name"),
    "name twice": (
        scratch_create([scratch(), scratch()], [mount()]),
        "spec.volumes[1].name",
    ),
    "no source": (scratch_create([v.SandboxVolume(name="x")], []), "spec.volumes[0]"),
    "not mounted": (scratch_create([scratch()], []), "spec.volumes[0]"),
    "mount of nothing": (scratch_create([scratch()], [mount("other")]), f"{M}[0].volume"),
    "mounted twice": (
        scratch_create([scratch()], [mount(), mount(path="/again")]),
        f"{M}[1].volume",
    ),
    "relative path": (scratch_create([scratch()], [mount(path="work")]), f"{M}[0].mount_path"),
    "path climbs": (
        scratch_create([scratch()], [mount(path="/tmp/../etc")]),
        f"{M}[0].mount_path",
    ),
    "path is root": (scratch_create([scratch()], [mount(path="/")]), f"{M}[0].mount_path"),
    "path over proc": (
        scratch_create([scratch()], [mount(path="/proc/self")]),
        f"{M}[0].mount_path",
    ),
    "path with NUL": (scratch_create([scratch()], [mount(path="/w\x00x")]), f"{M}[0].mount_path"),
    "size garbage": (
        scratch_create([scratch(size="lots")], [mount()]),
        "spec.volumes[0].scratch.size",
    ),
    "size tiny": (scratch_create([scratch(size="1Ki")], [mount()]), "spec.volumes[0].scratch.size"),
    "size over ceiling": (
        scratch_create([scratch(size="100Ti")], [mount()]),
        "spec.volumes[0].scratch.size",
    ),
    "unknown medium": (
        scratch_create(
            [v.SandboxVolume(name="w", scratch=v.ScratchVolume(medium=7))], [mount("w")]
        ),
        "spec.volumes[0].scratch.medium",
    ),
}


@pytest.fixture(scope="module")
def admin(quiet_platform: Platform) -> Iterator[grpc.Channel]:
    with keyed_channel(quiet_platform.target, quiet_platform.api_key) as channel:
        yield channel


def sandboxes_of(channel: grpc.Channel) -> list[str]:
    listed = rpc(channel, "ListSandboxes", v.ListSandboxesRequest(show_terminated=True))
    return sorted(s.sandbox_id for s in listed.sandboxes)


@pytest.mark.parametrize("case", sorted(BAD_CREATES))
def test_malformed_scratch_volumes_name_their_field(case: str, admin: grpc.Channel) -> None:
    request, field = BAD_CREATES[case]
    before = sandboxes_of(admin)
    error = attempt(admin, SANDBOXES.methods_by_name["CreateSandbox"], request)
    code, _message, reason, _metadata, fields = answer(error, "")
    assert (code, reason, fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CWSANDBOX_INVALID_ARGUMENT",
        [field],
    ), case
    assert sandboxes_of(admin) == before  # nothing placed, nothing stored


def test_what_scratch_volumes_do_not_offer_is_named(admin: grpc.Channel) -> None:
    cases = {
        "spec.volumes[0].scratch.medium": scratch_create(
            [v.SandboxVolume(name="w", scratch=v.ScratchVolume(medium=v.STORAGE_MEDIUM_MEMORY))],
            [mount("w")],
        ),
        f"{M}[0].read_only": scratch_create([scratch()], [mount(read_only=True)]),
        f"{M}[0].sub_path": scratch_create([scratch()], [mount(sub_path="x")]),
    }
    for field, request in cases.items():
        error = attempt(admin, SANDBOXES.methods_by_name["CreateSandbox"], request)
        assert error.code() is grpc.StatusCode.UNIMPLEMENTED, field
        reason, metadata, _fields = details(error)
        assert reason == "CWSANDBOX_NOT_IMPLEMENTED" and metadata["field"] == field, field


@pytest.fixture(scope="module")
def with_scratch(admin: grpc.Channel) -> Iterator[str]:
    created = rpc(admin, "CreateSandbox", scratch_create([scratch()], [mount()]))
    wait_state(admin, created.sandbox_id, [v.STATE_RUNNING])
    yield str(created.sandbox_id)
    rpc(admin, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=created.sandbox_id))


def test_malformed_snapshot_requests_name_their_field(
    admin: grpc.Channel, with_scratch: str
) -> None:
    cases = {
        "scratch_volume_name": v.CreateFileSystemSnapshotRequest(
            sandbox_id=with_scratch, scratch_volume_name="../workspace"
        ),
        "request_id": v.CreateFileSystemSnapshotRequest(
            sandbox_id=with_scratch, request_id="r" * 200
        ),
    }
    for field, request in cases.items():
        error = attempt(admin, SANDBOXES.methods_by_name["CreateFileSystemSnapshot"], request)
        assert answer(error, "")[0] is grpc.StatusCode.INVALID_ARGUMENT, field
        assert details(error)[2] == [field]
    bad_ids = {"": "file_system_snapshot_id", "x" * 100: "file_system_snapshot_id"}
    for name in ("GetFileSystemSnapshot", "DeleteFileSystemSnapshot"):
        for snapshot_id, field in bad_ids.items():
            request = getattr(v, f"{name}Request")(file_system_snapshot_id=snapshot_id)
            error = attempt(admin, SANDBOXES.methods_by_name[name], request)
            assert details(error)[2] == [field], name
    listing = v.ListFileSystemSnapshotsRequest(page_token="not-a-token")
    error = attempt(admin, SANDBOXES.methods_by_name["ListFileSystemSnapshots"], listing)
    assert details(error)[2] == ["page_token"]
    delete = v.DeleteSandboxRequest(sandbox_id=with_scratch, snapshot_volumes=["other"])
    error = attempt(admin, SANDBOXES.methods_by_name["DeleteSandbox"], delete)
    assert details(error)[2] == ["snapshot_volumes[0]"]
    # Refused deletes stopped nothing.
    assert wait_state(admin, with_scratch, [v.STATE_RUNNING]) == v.STATE_RUNNING


def test_snapshot_request_id_is_idempotent(admin: grpc.Channel, with_scratch: str) -> None:
    request = v.CreateFileSystemSnapshotRequest(sandbox_id=with_scratch, request_id="same-one")
    first = rpc(admin, "CreateFileSystemSnapshot", request)
    again = rpc(admin, "CreateFileSystemSnapshot", request)
    assert first.file_system_snapshot_id == again.file_system_snapshot_id
    assert first.request_id == "same-one" and first.source_volume_name == "workspace"
    snapshot_id = first.file_system_snapshot_id
    get = v.GetFileSystemSnapshotRequest(file_system_snapshot_id=snapshot_id)
    deadline = time.monotonic() + 60
    while rpc(admin, "GetFileSystemSnapshot", get).state == v.SNAPSHOT_STATE_CREATING:
        assert time.monotonic() < deadline, "the snapshot stayed CREATING"
        time.sleep(0.1)
    assert rpc(admin, "GetFileSystemSnapshot", get).state == v.SNAPSHOT_STATE_READY
    delete = v.DeleteFileSystemSnapshotRequest(file_system_snapshot_id=snapshot_id)
    assert rpc(admin, "DeleteFileSystemSnapshot", delete).state == v.SNAPSHOT_STATE_DELETING
    missing = attempt(admin, SANDBOXES.methods_by_name["DeleteFileSystemSnapshot"], delete)
    assert answer(missing, snapshot_id)[2] == "CWSANDBOX_FSS_NOT_FOUND"
    allowed = v.DeleteFileSystemSnapshotRequest(
        file_system_snapshot_id=snapshot_id, allow_missing=True
    )
    assert rpc(admin, "DeleteFileSystemSnapshot", allowed) == v.FileSystemSnapshot()


# -- raw gRPC: another organization --------------------------------------------------------


def create_key(platform: Platform, organization: str) -> str:
    response = admin_call(
        platform.target,
        platform.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization=organization, role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    )
    return str(response.secret)


def wait_ready(channel: grpc.Channel, snapshot_id: str) -> None:
    get = v.GetFileSystemSnapshotRequest(file_system_snapshot_id=snapshot_id)
    deadline = time.monotonic() + 60
    while rpc(channel, "GetFileSystemSnapshot", get).state != v.SNAPSHOT_STATE_READY:
        assert time.monotonic() < deadline, "the snapshot never became READY"
        time.sleep(0.1)


def test_another_orgs_snapshots_look_missing(quiet_platform: Platform) -> None:
    key_a = create_key(quiet_platform, "fss-a")
    key_b = create_key(quiet_platform, "fss-b")
    never = "fss-000000000000000000000000"
    with (
        keyed_channel(quiet_platform.target, key_a) as a,
        keyed_channel(quiet_platform.target, key_b) as b,
    ):
        sandbox_a = rpc(a, "CreateSandbox", scratch_create([scratch()], [mount()])).sandbox_id
        wait_state(a, sandbox_a, [v.STATE_RUNNING])
        write = v.WriteFileRequest(sandbox_id=sandbox_a, path="/workspace/secret", content=b"a")
        rpc(a, "WriteFile", write)
        snap = rpc(a, "CreateFileSystemSnapshot", v.CreateFileSystemSnapshotRequest(
            sandbox_id=sandbox_a)).file_system_snapshot_id  # fmt: skip
        wait_ready(a, snap)
        theirs_and_missing: dict[str, tuple[Any, Any]] = {
            "GetFileSystemSnapshot": (
                v.GetFileSystemSnapshotRequest(file_system_snapshot_id=snap),
                v.GetFileSystemSnapshotRequest(file_system_snapshot_id=never),
            ),
            "DeleteFileSystemSnapshot": (
                v.DeleteFileSystemSnapshotRequest(file_system_snapshot_id=snap),
                v.DeleteFileSystemSnapshotRequest(file_system_snapshot_id=never),
            ),
            "CreateFileSystemSnapshot": (
                v.CreateFileSystemSnapshotRequest(sandbox_id=sandbox_a),
                v.CreateFileSystemSnapshotRequest(sandbox_id="sb-0123456789a00000000"),
            ),
        }
        for name, (theirs, missing) in theirs_and_missing.items():
            method = SANDBOXES.methods_by_name[name]
            by_sandbox = name == "CreateFileSystemSnapshot"
            got_theirs = answer(attempt(b, method, theirs), sandbox_a if by_sandbox else snap)
            got_missing = answer(
                attempt(b, method, missing), "sb-0123456789a00000000" if by_sandbox else never
            )
            assert got_theirs == got_missing, name
            assert got_theirs[0] is grpc.StatusCode.NOT_FOUND, name
        # Restoring another organization's snapshot: the same answer as a missing one.
        restore_theirs = scratch_create([scratch(restore=snap)], [mount()])
        restore_missing = scratch_create([scratch(restore=never)], [mount()])
        create = SANDBOXES.methods_by_name["CreateSandbox"]
        assert answer(attempt(b, create, restore_theirs), snap) == answer(
            attempt(b, create, restore_missing), never
        )
        # Snapshot on delete of their sandbox: missing, and the sandbox keeps running.
        delete = v.DeleteSandboxRequest(sandbox_id=sandbox_a, snapshot_volumes=["workspace"])
        error = attempt(b, SANDBOXES.methods_by_name["DeleteSandbox"], delete)
        assert answer(error, sandbox_a)[2] == "CWSANDBOX_SANDBOX_NOT_FOUND"
        listed = rpc(b, "ListFileSystemSnapshots", v.ListFileSystemSnapshotsRequest())
        assert list(listed.file_system_snapshots) == []
        # The owner still has it all.
        assert wait_state(a, sandbox_a, [v.STATE_RUNNING]) == v.STATE_RUNNING
        mine = rpc(a, "ListFileSystemSnapshots", v.ListFileSystemSnapshotsRequest())
        assert [s.file_system_snapshot_id for s in mine.file_system_snapshots] == [snap]
        rpc(a, "DeleteFileSystemSnapshot", v.DeleteFileSystemSnapshotRequest(
            file_system_snapshot_id=snap))  # fmt: skip
        rpc(a, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=sandbox_a))


def test_snapshot_on_delete_over_raw_grpc(admin: grpc.Channel) -> None:
    """DeleteSandbox with snapshot_volumes answers the id at once; the stop follows it."""
    created = rpc(admin, "CreateSandbox", scratch_create([scratch()], [mount()]))
    sandbox_id = created.sandbox_id
    wait_state(admin, sandbox_id, [v.STATE_RUNNING])
    write = v.WriteFileRequest(sandbox_id=sandbox_id, path="/workspace/f", content=b"on delete")
    rpc(admin, "WriteFile", write)
    request = v.DeleteSandboxRequest(
        sandbox_id=sandbox_id, snapshot_volumes=["workspace"], request_id="del-1"
    )
    response = rpc(admin, "DeleteSandbox", request)
    [snapshot_id] = response.file_system_snapshot_ids
    wait_ready(admin, snapshot_id)
    ended = wait_state(admin, sandbox_id, [v.STATE_COMPLETED, v.STATE_TERMINATED, v.STATE_FAILED])
    assert ended in (v.STATE_COMPLETED, v.STATE_TERMINATED)
    got = rpc(admin, "GetFileSystemSnapshot", v.GetFileSystemSnapshotRequest(
        file_system_snapshot_id=snapshot_id))  # fmt: skip
    assert got.trigger == v.SNAPSHOT_TRIGGER_ON_DELETE and got.request_id == "del-1"
    restored = rpc(admin, "CreateSandbox", scratch_create(
        [scratch(restore=snapshot_id)], [mount(path="/back")]))  # fmt: skip
    wait_state(admin, restored.sandbox_id, [v.STATE_RUNNING])
    read = v.ReadFileRequest(sandbox_id=restored.sandbox_id, path="/back/f")
    assert rpc(admin, "ReadFile", read).content == b"on delete"
    rpc(admin, "DeleteSandbox", v.DeleteSandboxRequest(sandbox_id=restored.sandbox_id))
    rpc(admin, "DeleteFileSystemSnapshot", v.DeleteFileSystemSnapshotRequest(
        file_system_snapshot_id=snapshot_id))  # fmt: skip


def test_bucket_settings_over_raw_grpc(quiet_platform: Platform) -> None:
    from sandboxd_protocol.v1 import settings_pb2 as s

    settings = s.DESCRIPTOR.services_by_name["SettingsService"]
    key = create_key(quiet_platform, "fss-settings")
    with keyed_channel(quiet_platform.target, key) as channel:
        get = channel.unary_unary(
            "/coreweave.sandbox.v1.SettingsService/GetFileSystemSnapshotBucketConfig",
            request_serializer=s.GetFileSystemSnapshotBucketConfigRequest.SerializeToString,
            response_deserializer=s.FileSystemSnapshotBucketConfig.FromString,
        )
        update = channel.unary_unary(
            "/coreweave.sandbox.v1.SettingsService/UpdateFileSystemSnapshotBucketConfig",
            request_serializer=s.UpdateFileSystemSnapshotBucketConfigRequest.SerializeToString,
            response_deserializer=s.FileSystemSnapshotBucketConfig.FromString,
        )
        before = get(s.GetFileSystemSnapshotBucketConfigRequest(), timeout=30)
        assert before.mode == s.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_CW_MANAGED
        assert before.effective_bucket_name == "sandboxd-managed"
        bad = {
            "file_system_snapshot_bucket_config": s.UpdateFileSystemSnapshotBucketConfigRequest(),
            "file_system_snapshot_bucket_config.bucket_name": (
                s.UpdateFileSystemSnapshotBucketConfigRequest(
                    file_system_snapshot_bucket_config=s.FileSystemSnapshotBucketConfig(
                        bucket_name="../../etc"
                    )
                )
            ),
        }
        for field, request in bad.items():
            try:
                update(request, timeout=30)
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
                assert details(error)[2] == [field]
            else:
                raise AssertionError(f"{field}: accepted")
        assert get(s.GetFileSystemSnapshotBucketConfigRequest(), timeout=30) == before
        assert settings.methods_by_name["GetFileSystemSnapshotBucketConfig"] is not None


def test_official_client_scratch_volume_options(platform: Platform) -> None:
    """ScratchVolumeOptions (the general form) with a name of the client's choosing."""
    script = textwrap.dedent(
        r"""
        import json, cwsandbox
        from cwsandbox import Sandbox, ScratchVolumeOptions
        sb = Sandbox.run(volumes=[ScratchVolumeOptions(name="data", mount_path="/data",
                                                       size="32Mi")])
        sb.wait()
        sb.write_file("/data/x", b"named").result()
        snap = sb.snapshot().result()
        got = Sandbox.get_snapshot(snap).result()
        sb.stop().result()
        Sandbox.delete_snapshot(snap).result()
        print(json.dumps([got.source_volume_name, str(got.status)]))
        """
    )
    python: Path = official_python(OFFICIAL_V1_VERSION)
    got = json.loads(run_python(python, script, platform.env()).strip().splitlines()[-1])
    assert got[0] == "data" and got[1].lower().endswith("ready")
