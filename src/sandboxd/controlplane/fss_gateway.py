"""The v1beta2 face of file-system snapshots (v1beta2.md §10), over ``sandboxd.snapshots``.

Messages to and from :mod:`sandboxd.snapshots`, and nothing else.

Semantics kept from the protocol: ``CreateFileSystemSnapshot`` answers at once with the
CREATING snapshot's id, or, with ``wait_for_ready``, once it is READY (within
``max_timeout_seconds``, default 600); the same ``idempotency_key`` gives the same snapshot.
Stop with ``file_system_snapshot_on_stop`` snapshots first and stops after, waiting for
both with ``wait_for_ready``, else answering at once with the snapshot's id. List takes no
filters (the client filters) and pages by id. Numbers of the enums are v1beta2's own
(trigger STOP=1, MANUAL=2).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.pagination import decode_token, encode_token, page_size_of, take_page
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.snapshot_stops import remember_grace
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.controlplane.wire_time import timestamp_or_none as _stamp
from sandboxd.errors import invalid_argument
from sandboxd.snapshots.model import (
    MANAGED_BUCKET,
    BucketConfig,
    SnapshotRecord,
    SnapshotStatus,
    SnapshotTrigger,
)
from sandboxd.snapshots.service import DEFAULT_WAIT_SECONDS, Snapshots
from sandboxd_protocol.v1beta2 import gateway_pb2

log = logging.getLogger(__name__)
G = gateway_pb2
_STATUS = {
    SnapshotStatus.CREATING: G.FILE_SYSTEM_SNAPSHOT_STATUS_CREATING,
    SnapshotStatus.READY: G.FILE_SYSTEM_SNAPSHOT_STATUS_READY,
    SnapshotStatus.FAILED: G.FILE_SYSTEM_SNAPSHOT_STATUS_FAILED,
    SnapshotStatus.DELETING: G.FILE_SYSTEM_SNAPSHOT_STATUS_DELETING,
}
_TRIGGER = {
    SnapshotTrigger.STOP: G.FILE_SYSTEM_SNAPSHOT_TRIGGER_STOP,
    SnapshotTrigger.MANUAL: G.FILE_SYSTEM_SNAPSHOT_TRIGGER_MANUAL,
}
_LIST_FINGERPRINT = "fss"


def snapshot_message(record: SnapshotRecord) -> gateway_pb2.FileSystemSnapshot:
    """The public ``FileSystemSnapshot`` of a record."""
    return G.FileSystemSnapshot(
        file_system_snapshot_id=record.snapshot_id,
        status=_STATUS[record.status],
        status_reason=record.status_reason,
        size_bytes=record.size_bytes,
        created_at=_stamp(record.created_at),
        updated_at=_stamp(record.updated_at),
        completed_at=_stamp(record.completed_at),
        source_sandbox_id=record.source_sandbox_id,
        trigger=_TRIGGER[record.trigger],
        idempotency_key=record.idempotency_key,
        object_bucket=record.bucket,
    )


def bucket_message(config: BucketConfig) -> gateway_pb2.FileSystemSnapshotBucketConfig:
    """The public bucket configuration: managed (the data directory) or the organization's."""
    mode = (
        G.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_BRING_YOUR_OWN
        if config.bucket_name
        else G.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_CW_MANAGED
    )
    return G.FileSystemSnapshotBucketConfig(
        bucket_name=config.bucket_name,
        region=config.region,
        mode=mode,
        effective_bucket_name=config.effective_bucket or MANAGED_BUCKET,
    )


def _wait_seconds(request: Any) -> float:
    if request.HasField("max_timeout_seconds"):
        if request.max_timeout_seconds < 0:
            raise invalid_argument("max_timeout_seconds", "must not be negative")
        return float(request.max_timeout_seconds or DEFAULT_WAIT_SECONDS)
    return DEFAULT_WAIT_SECONDS


class FssGateway:
    """The six snapshot RPCs and the snapshot parts of Start and Stop, over :class:`Snapshots`."""

    def __init__(self, snapshots: Snapshots, lifecycle: Lifecycle) -> None:
        self.snapshots = snapshots
        self._lifecycle = lifecycle
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(
        self, request: gateway_pb2.CreateFileSystemSnapshotRequest
    ) -> gateway_pb2.CreateFileSystemSnapshotResponse:
        """Snapshot a running sandbox's file system (waiting with ``wait_for_ready``)."""
        timeout = _wait_seconds(request)
        sandbox = await self._lifecycle.record(request.sandbox_id)
        record = await self.snapshots.create(
            sandbox, SnapshotTrigger.MANUAL, request.idempotency_key
        )
        if request.wait_for_ready:
            record = await self.snapshots.wait(record, timeout)
        return G.CreateFileSystemSnapshotResponse(
            success=True, file_system_snapshot_id=record.snapshot_id
        )

    async def get(
        self, request: gateway_pb2.GetFileSystemSnapshotRequest
    ) -> gateway_pb2.FileSystemSnapshot:
        """One snapshot of the caller's organization."""
        return snapshot_message(await self.snapshots.get(request.file_system_snapshot_id))

    async def list(
        self, request: gateway_pb2.ListFileSystemSnapshotsRequest
    ) -> gateway_pb2.ListFileSystemSnapshotsResponse:
        """The organization's snapshots by id, a page at a time."""
        size = page_size_of(request.page_size)
        after = decode_token(request.page_token, _LIST_FINGERPRINT)
        records = await self.snapshots.page(after, size + 1)
        page, last = take_page(iter(records), size, key=lambda r: r.snapshot_id)
        return G.ListFileSystemSnapshotsResponse(
            file_system_snapshots=[snapshot_message(r) for r in page],
            next_page_token=encode_token(last, _LIST_FINGERPRINT) if last else "",
        )

    async def delete(
        self, request: gateway_pb2.DeleteFileSystemSnapshotRequest
    ) -> gateway_pb2.DeleteFileSystemSnapshotResponse:
        """Remove a snapshot and its content."""
        await self.snapshots.delete(request.file_system_snapshot_id)
        return G.DeleteFileSystemSnapshotResponse(success=True)

    async def get_bucket(self) -> gateway_pb2.FileSystemSnapshotBucketConfig:
        """The organization's destination."""
        return bucket_message(await self.snapshots.bucket_config())

    async def set_bucket(
        self, request: gateway_pb2.SetFileSystemSnapshotBucketConfigRequest
    ) -> gateway_pb2.FileSystemSnapshotBucketConfig:
        """Set the organization's destination; one this server cannot reach is refused."""
        config = await self.snapshots.set_bucket_config(request.bucket_name, request.region)
        return bucket_message(config)

    async def restore_source(self, request: SandboxRequest) -> SnapshotRecord | None:
        """Before a Start places anything: the snapshot it restores, checked (None: none)."""
        if request.scratch is None or not request.scratch.restore_snapshot_id:
            return None
        return await self.snapshots.restore_source(request.scratch.restore_snapshot_id)

    def started(self, sandbox: SandboxRecord, source: SnapshotRecord | None) -> None:
        """After a Start recorded the sandbox: send the snapshot to its runner."""
        if source is not None:
            self.snapshots.push_restore(sandbox, source)

    async def stop_with_snapshot(
        self, request: gateway_pb2.StopSandboxRequest, grace_seconds: int
    ) -> gateway_pb2.StopSandboxResponse:
        """Snapshot, then stop; with ``wait_for_ready`` both before answering."""
        sandbox = await self._lifecycle.record(request.sandbox_id)
        await remember_grace(self._lifecycle.records, sandbox.sandbox_id, grace_seconds)
        record = await self.snapshots.create(sandbox, SnapshotTrigger.STOP, request.idempotency_key)
        timeout = float(request.max_timeout_seconds or DEFAULT_WAIT_SECONDS)
        if request.HasField("wait_for_ready") and not request.wait_for_ready:
            task = asyncio.ensure_future(
                self._snapshot_then_stop(sandbox, record, timeout, grace_seconds)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            try:
                await self.snapshots.wait(record, timeout)
            finally:
                await self._lifecycle.stop(sandbox, grace_seconds)
        return G.StopSandboxResponse(success=True, file_system_snapshot_id=record.snapshot_id)

    async def _snapshot_then_stop(
        self, sandbox: SandboxRecord, record: SnapshotRecord, timeout: float, grace: int
    ) -> None:
        try:
            await self.snapshots.wait(record, timeout)
        except Exception as exc:  # the snapshot says why in its record; the stop goes on
            log.info("snapshot on stop of %s: %s", sandbox.sandbox_id, exc)
        try:
            await self._lifecycle.stop(sandbox, grace)
        except Exception:
            log.exception("stop of %s after its snapshot failed", sandbox.sandbox_id)
