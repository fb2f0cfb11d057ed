"""v1 scratch volumes onto our scratch request, and the v1 snapshot messages (pure parts).

The e2e suite (``tests/e2e/test_v1_snapshots.py``) proves the same through a real server;
these pin the mapping itself: which volume and mount become the scratch file system, which
field a refusal names, and the v1 enum numbers of a snapshot record.
"""

from __future__ import annotations

import pytest

from sandboxd.controlplane.v1.create_request import parse_create
from sandboxd.controlplane.v1.snapshots import snapshot_message
from sandboxd.errors import ApiError
from sandboxd.snapshots.model import SnapshotRecord, SnapshotStatus, SnapshotTrigger
from sandboxd.snapshots.scratch_request import scratch_volume
from sandboxd_protocol.v1 import sandbox_pb2 as v


def create(volumes: list[v.SandboxVolume], mounts: list[v.VolumeMount]) -> v.CreateSandboxRequest:
    container = v.Container(name="main", image="python:3.11", command="sleep", volume_mounts=mounts)
    spec = v.SandboxSpec(containers=[container], volumes=volumes)
    return v.CreateSandboxRequest(sandbox=v.Sandbox(spec=spec))


def test_a_mounted_scratch_volume_becomes_the_scratch_file_system() -> None:
    volume = v.SandboxVolume(
        name="data", scratch=v.ScratchVolume(size="64Mi", restore_from_snapshot_id=" fss-1 ")
    )
    plan = parse_create(create([volume], [v.VolumeMount(volume="data", mount_path="/data/")]))
    scratch = plan.request.scratch
    assert scratch is not None
    assert (scratch.name, scratch.mount_path, scratch.size_bytes) == ("data", "/data", 64 << 20)
    assert scratch.restore_snapshot_id == "fss-1"
    assert [vol.name for vol in plan.spec.volumes] == ["data"]  # echoed for the client


def test_no_volume_no_scratch() -> None:
    assert parse_create(create([], [])).request.scratch is None


def test_the_profile_ceiling_names_the_v1_size_field() -> None:
    volume = v.SandboxVolume(name="w", scratch=v.ScratchVolume(size="1Gi"))
    plan = parse_create(create([volume], [v.VolumeMount(volume="w", mount_path="/w")]))
    assert plan.request.scratch is not None
    with pytest.raises(ApiError) as raised:
        scratch_volume(plan.request.scratch, 512 << 20)
    assert [f.field for f in raised.value.violations] == ["spec.volumes[0].scratch.size"]


@pytest.mark.parametrize("name", ["..", "a/b", "A", "-a", "a" * 64, "", "a\x00"])
def test_volume_names_are_dns_labels(name: str) -> None:
    volume = v.SandboxVolume(name=name, scratch=v.ScratchVolume())
    with pytest.raises(ApiError) as raised:
        parse_create(create([volume], [v.VolumeMount(volume=name, mount_path="/w")]))
    assert [f.field for f in raised.value.violations] == ["spec.volumes[0].name"]


def test_snapshot_messages_use_v1_numbers() -> None:
    record = SnapshotRecord(
        snapshot_id="fss-1",
        owner_org="o",
        source_sandbox_id="sb-1",
        volume_name="workspace",
        trigger=SnapshotTrigger.STOP,
        status=SnapshotStatus.READY,
        idempotency_key="r-1",
    )
    message = snapshot_message(record)
    assert message.trigger == v.SNAPSHOT_TRIGGER_ON_DELETE == 2
    assert message.state == v.SNAPSHOT_STATE_READY == 2
    assert (message.request_id, message.source_volume_name) == ("r-1", "workspace")
    assert not message.HasField("create_time")
    manual = snapshot_message(
        SnapshotRecord("fss-2", "o", "sb-1", "workspace", SnapshotTrigger.MANUAL)
    )
    assert (manual.trigger, manual.state) == (v.SNAPSHOT_TRIGGER_MANUAL, v.SNAPSHOT_STATE_CREATING)
