"""Snapshot content is capped and checked before it is kept, on both sides.

The control plane stores an archive only whole and within its cap (``ContentStore``); the
runner stages a restore only when its size and SHA-256 match what the control plane
recorded (``ScratchTransfers.stage``). Real files in a temporary directory; the frames
are plain async generators (what an operation stream yields), not mocks of anything.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from sandboxd.backends.base import BackendConfig
from sandboxd.backends.local import LocalBackend
from sandboxd.errors import ApiError
from sandboxd.runner.failures import CommandFailed
from sandboxd.runner.scratch_transfers import ScratchTransfers
from sandboxd.snapshots.content import ArchiveTooLarge, ContentStore, check_bucket
from sandboxd.snapshots.model import MANAGED_BUCKET
from sandboxd_protocol.sandboxd_v1 import runner_pb2


async def frames(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_an_archive_over_its_cap_is_not_stored(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    target = store.path(MANAGED_BUCKET, "org", "fss-00ab")
    with pytest.raises(ArchiveTooLarge):
        asyncio.run(store.write(target, frames(b"x" * 600, b"y" * 600), max_bytes=1000))
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no archive, no partial file
    size, digest = asyncio.run(store.write(target, frames(b"a" * 500, b"b" * 500), 1000))
    assert size == 1000 and digest == hashlib.sha256(b"a" * 500 + b"b" * 500).hexdigest()
    assert target.read_bytes() == b"a" * 500 + b"b" * 500
    assert target.is_relative_to(tmp_path / "snapshots")


def test_paths_come_only_from_our_ids_and_checked_bucket_names(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    for bucket, snapshot_id in [
        (MANAGED_BUCKET, "../../etc/passwd"),
        (MANAGED_BUCKET, "fss-12/../../x"),
        ("../../etc", "fss-12"),
        ("a/b", "fss-12"),
    ]:
        with pytest.raises(ValueError):
            store.path(bucket, "org", snapshot_id)
    a, b = (
        store.path(MANAGED_BUCKET, "org-a", "fss-1"),
        store.path(MANAGED_BUCKET, "org-b", "fss-1"),
    )
    assert a.parent != b.parent  # organizations never share a directory


@pytest.mark.parametrize(
    ("name", "region", "field", "code"),
    [
        ("s3://bucket", "", "bucket_name", grpc.StatusCode.INVALID_ARGUMENT),
        ("gs://bucket", "", "bucket_name", grpc.StatusCode.INVALID_ARGUMENT),
        ("../../etc", "", "bucket_name", grpc.StatusCode.INVALID_ARGUMENT),
        ("a..b", "", "bucket_name", grpc.StatusCode.INVALID_ARGUMENT),
        ("bucket", "us-east-1", "region", grpc.StatusCode.INVALID_ARGUMENT),
        ("", "us-east-1", "region", grpc.StatusCode.INVALID_ARGUMENT),
        ("missing-bucket", "", "bucket_name", grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_unreachable_buckets_are_refused_naming_the_field(
    tmp_path: Path, name: str, region: str, field: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(ApiError) as info:
        check_bucket(tmp_path, name, region)
    assert info.value.code == code
    named = [v.field for v in info.value.violations] or [info.value.metadata.get("field")]
    assert named == [field]


def test_a_local_bucket_that_exists_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "buckets" / "team").mkdir(parents=True)
    config = check_bucket(tmp_path, "team", "local")
    assert config.effective_bucket == "team"
    assert check_bucket(tmp_path, "", "").effective_bucket == MANAGED_BUCKET


def _restore(size: int, digest: str) -> runner_pb2.OpenScratchRestore:
    return runner_pb2.OpenScratchRestore(
        sandbox_id="sb-1", snapshot_id="fss-1", size_bytes=size, sha256=digest
    )


def test_the_runner_stages_a_restore_only_when_size_and_digest_match(tmp_path: Path) -> None:
    backend = LocalBackend.from_config(BackendConfig(tmp_path / "backend"))  # never started
    transfers = ScratchTransfers(backend, tmp_path / "staging")
    good = b"archive bytes" * 100
    digest = hashlib.sha256(good).hexdigest()

    async def scenario() -> None:
        bigger = await transfers.stage(_restore(len(good), digest), frames(good, b"more"))
        assert bigger.failure.reason == "CWSANDBOX_FSS_RESTORE_FAILED"
        other = await transfers.stage(_restore(len(good), digest), frames(b"X" * len(good)))
        assert other.failure.reason == "CWSANDBOX_FSS_RESTORE_FAILED"
        assert not list((tmp_path / "staging").iterdir())  # nothing kept of either
        done = await transfers.stage(_restore(len(good), digest), frames(good[:7], good[7:]))
        assert not done.HasField("failure") and done.size == len(good)
        spec = runner_pb2.SandboxSpec(sandbox_id="sb-1")
        spec.scratch.mount_path, spec.scratch.size_bytes = "/data", 1 << 24
        spec.scratch.restore_snapshot_id = "fss-1"
        scratch = await transfers.scratch_spec(spec)
        assert scratch is not None and scratch.restore_archive is not None
        assert scratch.restore_archive.read_bytes() == good
        transfers.discard("sb-1")
        assert not list((tmp_path / "staging").iterdir())

    asyncio.run(scenario())


def test_a_create_waiting_for_its_archive_gets_the_one_sent_again(tmp_path: Path) -> None:
    """The control plane sends a restore again after a cut stream; the waiting create takes it."""
    backend = LocalBackend.from_config(BackendConfig(tmp_path / "backend"))
    transfers = ScratchTransfers(backend, tmp_path / "staging")
    good = b"x" * 5000
    digest = hashlib.sha256(good).hexdigest()
    spec = runner_pb2.SandboxSpec(sandbox_id="sb-1")
    spec.scratch.mount_path, spec.scratch.size_bytes = "/data", 1 << 24
    spec.scratch.restore_snapshot_id = "fss-1"

    async def scenario() -> None:
        waiting = asyncio.ensure_future(transfers.scratch_spec(spec))
        await asyncio.sleep(0)
        cut = await transfers.stage(_restore(len(good), digest), frames(good[:100]))
        assert cut.failure.reason == "CWSANDBOX_FSS_RESTORE_FAILED"
        assert not waiting.done()
        await transfers.stage(_restore(len(good), digest), frames(good))
        scratch = await asyncio.wait_for(waiting, 10)
        assert scratch is not None and scratch.restore_archive is not None
        assert scratch.restore_archive.read_bytes() == good

    asyncio.run(scenario())


def test_the_runner_rechecks_the_profile_disk_ceiling(tmp_path: Path) -> None:
    backend = LocalBackend.from_config(BackendConfig(tmp_path / "backend"))
    transfers = ScratchTransfers(backend, tmp_path / "staging")
    spec = runner_pb2.SandboxSpec(sandbox_id="sb-2")
    spec.scratch.mount_path, spec.scratch.size_bytes = "/data", 2 << 30
    spec.limits.max_disk_bytes = 1 << 30
    with pytest.raises(CommandFailed) as info:
        asyncio.run(transfers.scratch_spec(spec))
    assert info.value.failure.metadata["field"] == "file_system.size"
