"""The v1 face of file-system snapshots (protocol/v1.md §10), over ``sandboxd.snapshots``.

Messages to and from :mod:`sandboxd.snapshots` and nothing else: the snapshot machinery
(runner archive streams, content store, rows) is the one v1beta2 uses.

v1's semantics: ``CreateFileSystemSnapshot`` returns the CREATING record at once and the
client polls ``GetFileSystemSnapshot`` until READY or FAILED; its ``request_id`` is the
idempotency key (client retries reuse it and get the same snapshot). Snapshot on delete
(``DeleteSandboxRequest.snapshot_volumes``) takes the snapshot, answers with its id at
once, and stops the sandbox once the snapshot has ended (ready or failed), so the archive
is of the running file system. Restores come from a scratch volume's
``restore_from_snapshot_id``. Enum numbers are v1's (trigger MANUAL=1, ON_DELETE=2).
Another organization's snapshot is a missing one (``Snapshots.get``).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from sandboxd.controlplane.lifecycle import Lifecycle, want_stopped
from sandboxd.controlplane.pagination import decode_token, encode_token, page_size_of, take_page
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.snapshot_stops import remember_grace
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.controlplane.wire_time import timestamp_or_none as _stamp
from sandboxd.errors import ApiError, invalid_argument
from sandboxd.snapshots.model import (
    MANAGED_BUCKET,
    BucketConfig,
    SnapshotRecord,
    SnapshotStatus,
    SnapshotTrigger,
)
from sandboxd.snapshots.service import DEFAULT_WAIT_SECONDS, Snapshots, fss_error, scratch_of
from sandboxd_protocol.v1 import sandbox_pb2, settings_pb2

log = logging.getLogger(__name__)
V = sandbox_pb2
MAX_REQUEST_ID_CHARS = 128
_STATE = {
    SnapshotStatus.CREATING: V.SNAPSHOT_STATE_CREATING,
    SnapshotStatus.READY: V.SNAPSHOT_STATE_READY,
    SnapshotStatus.FAILED: V.SNAPSHOT_STATE_FAILED,
    SnapshotStatus.DELETING: V.SNAPSHOT_STATE_DELETING,
}
_TRIGGER = {
    SnapshotTrigger.MANUAL: V.SNAPSHOT_TRIGGER_MANUAL,
    SnapshotTrigger.STOP: V.SNAPSHOT_TRIGGER_ON_DELETE,
}
_LIST_FINGERPRINT = "v1fss"


def snapshot_message(record: SnapshotRecord) -> sandbox_pb2.FileSystemSnapshot:
    """The v1 ``FileSystemSnapshot`` of a record."""
    return V.FileSystemSnapshot(
        file_system_snapshot_id=record.snapshot_id,
        state=_STATE[record.status],
        state_reason=record.status_reason,
        size_bytes=record.size_bytes,
        source_sandbox_id=record.source_sandbox_id,
        trigger=_TRIGGER[record.trigger],
        create_time=_stamp(record.created_at),
        complete_time=_stamp(record.completed_at),
        source_volume_name=record.volume_name,
        object_bucket=record.bucket,
        updated_at=_stamp(record.updated_at),
        request_id=record.idempotency_key,
    )


def bucket_message(config: BucketConfig) -> settings_pb2.FileSystemSnapshotBucketConfig:
    """The v1 bucket configuration: managed (the data directory) or the organization's."""
    mode = (
        settings_pb2.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_BRING_YOUR_OWN
        if config.bucket_name
        else settings_pb2.FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_CW_MANAGED
    )
    return settings_pb2.FileSystemSnapshotBucketConfig(
        bucket_name=config.bucket_name,
        region=config.region,
        mode=mode,
        effective_bucket_name=config.effective_bucket or MANAGED_BUCKET,
    )


def _request_id(request_id: str, field: str = "request_id") -> str:
    if len(request_id) > MAX_REQUEST_ID_CHARS or "\x00" in request_id:
        raise invalid_argument(field, f"must be at most {MAX_REQUEST_ID_CHARS} characters")
    return request_id


def _scratch_name(sandbox: SandboxRecord) -> str:
    scratch = scratch_of(sandbox)
    if scratch is None:
        raise fss_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_SUPPORTED",
            f"sandbox {sandbox.sandbox_id!r} has no scratch volume to snapshot: create it "
            "with a scratch volume (file_system_snapshot=...)",
            sandbox_id=sandbox.sandbox_id,
        )
    return scratch.name or "workspace"


class V1Snapshots:
    """The four snapshot RPCs and the snapshot parts of Create and Delete."""

    def __init__(self, snapshots: Snapshots, lifecycle: Lifecycle) -> None:
        self.snapshots = snapshots
        self._lifecycle = lifecycle
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(
        self, request: sandbox_pb2.CreateFileSystemSnapshotRequest
    ) -> sandbox_pb2.FileSystemSnapshot:
        """Start a snapshot of the sandbox's scratch volume; its CREATING record."""
        request_id = _request_id(request.request_id)
        sandbox = await self._lifecycle.record(request.sandbox_id)
        name = _scratch_name(sandbox)
        if request.scratch_volume_name and request.scratch_volume_name != name:
            raise invalid_argument(
                "scratch_volume_name",
                f"the sandbox has no scratch volume {request.scratch_volume_name[:80]!r} "
                f"(its scratch volume is {name!r})",
            )
        record = await self.snapshots.create(sandbox, SnapshotTrigger.MANUAL, request_id)
        return snapshot_message(record)

    async def get(
        self, request: sandbox_pb2.GetFileSystemSnapshotRequest
    ) -> sandbox_pb2.FileSystemSnapshot:
        """One snapshot of the caller's organization."""
        return snapshot_message(await self.snapshots.get(request.file_system_snapshot_id))

    async def list(
        self, request: sandbox_pb2.ListFileSystemSnapshotsRequest
    ) -> sandbox_pb2.ListFileSystemSnapshotsResponse:
        """The organization's snapshots by id; ``source_sandbox_id`` narrows each page."""
        if request.page_size < 0:
            raise invalid_argument("page_size", "must not be negative")
        size = page_size_of(request.page_size)
        after = decode_token(request.page_token, _LIST_FINGERPRINT)
        records = await self.snapshots.page(after, size + 1)
        page, last = take_page(iter(records), size, key=lambda r: r.snapshot_id)
        source = request.source_sandbox_id
        return V.ListFileSystemSnapshotsResponse(
            file_system_snapshots=[
                snapshot_message(r) for r in page if not source or r.source_sandbox_id == source
            ],
            next_page_token=encode_token(last, _LIST_FINGERPRINT) if last else "",
        )

    async def delete(
        self, request: sandbox_pb2.DeleteFileSystemSnapshotRequest
    ) -> sandbox_pb2.FileSystemSnapshot:
        """Remove a snapshot and its content; the record as it was while being deleted."""
        try:
            record = await self.snapshots.get(request.file_system_snapshot_id)
        except ApiError as error:
            if request.allow_missing and error.code is grpc.StatusCode.NOT_FOUND:
                return V.FileSystemSnapshot()
            raise
        await self.snapshots.delete(record.snapshot_id)
        gone = snapshot_message(record)
        gone.state = V.SNAPSHOT_STATE_DELETING
        return gone

    # -- create and delete of sandboxes -----------------------------------------------------
    async def restore_source(self, request: SandboxRequest) -> SnapshotRecord | None:
        """Before a create places anything: the snapshot it restores, checked (None: none)."""
        if request.scratch is None or not request.scratch.restore_snapshot_id:
            return None
        return await self.snapshots.restore_source(request.scratch.restore_snapshot_id)

    def started(self, sandbox: SandboxRecord, source: SnapshotRecord | None) -> None:
        """After a create recorded the sandbox: send the snapshot to its runner."""
        if source is not None:
            self.snapshots.push_restore(sandbox, source)

    async def delete_with_snapshots(
        self, request: sandbox_pb2.DeleteSandboxRequest, sandbox: SandboxRecord
    ) -> tuple[str, ...]:
        """Snapshot the named scratch volumes, then stop (in the background); their ids."""
        request_id = _request_id(request.request_id)
        name = _scratch_name(sandbox)
        for index, wanted in enumerate(request.snapshot_volumes):
            if wanted != name:
                raise invalid_argument(
                    f"snapshot_volumes[{index}]",
                    f"the sandbox has no scratch volume {wanted[:80]!r} (its scratch volume "
                    f"is {name!r})",
                )
        grace = request.grace_period_seconds
        await remember_grace(self._lifecycle.records, sandbox.sandbox_id, grace)
        record = await self.snapshots.create(sandbox, SnapshotTrigger.STOP, request_id)
        task = asyncio.ensure_future(
            self._snapshot_then_stop(sandbox, record, request.grace_period_seconds)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return (record.snapshot_id,)

    async def _snapshot_then_stop(
        self, sandbox: SandboxRecord, record: SnapshotRecord, grace: int
    ) -> None:
        try:
            await self.snapshots.wait(record, DEFAULT_WAIT_SECONDS)
        except Exception as exc:  # the snapshot says why in its record; the stop goes on
            log.info("snapshot on delete of %s: %s", sandbox.sandbox_id, exc)
        try:
            await self._lifecycle.records.update(
                sandbox.sandbox_id, lambda r: want_stopped(r, grace)
            )
        except Exception:
            log.exception("stop of %s after its snapshot failed", sandbox.sandbox_id)

    # -- settings ---------------------------------------------------------------------------
    async def get_bucket(self) -> settings_pb2.FileSystemSnapshotBucketConfig:
        """The organization's destination."""
        return bucket_message(await self.snapshots.bucket_config())

    async def update_bucket(
        self, request: settings_pb2.UpdateFileSystemSnapshotBucketConfigRequest
    ) -> settings_pb2.FileSystemSnapshotBucketConfig:
        """Set the organization's destination; one this server cannot reach is refused."""
        if not request.HasField("file_system_snapshot_bucket_config"):
            raise invalid_argument(
                "file_system_snapshot_bucket_config", "is required (the bucket to use)"
            )
        wanted = request.file_system_snapshot_bucket_config
        paths = set(request.update_mask.paths)
        allowed = {"bucket_name", "region"}
        for path in sorted(paths - allowed):
            raise invalid_argument("update_mask", f"{path!r} cannot be updated (only {allowed})")
        current = await self.snapshots.bucket_config()
        bucket = wanted.bucket_name if not paths or "bucket_name" in paths else current.bucket_name
        region = wanted.region if not paths or "region" in paths else current.region
        try:
            config = await self.snapshots.set_bucket_config(bucket, region)
        except ApiError as error:
            raise _renamed(error) from None
        return bucket_message(config)


def _renamed(error: ApiError) -> ApiError:
    """v1 names the bucket's fields inside ``file_system_snapshot_bucket_config``."""
    for violation in error.violations:
        if violation.field in ("bucket_name", "region"):
            field = f"file_system_snapshot_bucket_config.{violation.field}"
            return invalid_argument(field, violation.description)
    return error
