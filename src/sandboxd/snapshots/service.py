"""Snapshot operations, for any public protocol: create, get, list, delete, restore, buckets.

How a snapshot is taken: the control plane binds an ``OpenScratchArchive`` operation to the
runner that owns the sandbox; the runner streams the scratch file system as a tar archive
(``runner/scratch_transfers.py``, taken consistently by the backend), and the bytes go
straight to the destination file here, hashed as they pass (``content.py``). Neither side
holds more than a chunk. The row (``store/snapshot_store.py``) is written CREATING first,
then READY with size and SHA-256, or FAILED with the reason, so a snapshot is never READY
without its complete content.

How one is restored: Start puts the snapshot's id in the runner's spec, and
:meth:`Snapshots.push_restore` sends the archive to whichever runner got the sandbox, with
its size and digest, which that runner checks before it fills the new file system.

Organizations: every lookup goes through :meth:`Snapshots.get`, which answers another
organization's snapshot exactly as a missing one (``CWSANDBOX_FSS_NOT_FOUND``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.operations import Operation, Operations
from sandboxd.controlplane.raw_frames import DOWN_DATA, encode, payload
from sandboxd.controlplane.runner_link import failure_error, runner_unavailable
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.errors import ApiError, invalid_argument
from sandboxd.snapshots.content import ArchiveTooLarge, ContentStore, check_bucket
from sandboxd.snapshots.model import (
    BucketConfig,
    SnapshotRecord,
    SnapshotStatus,
    SnapshotTrigger,
    new_snapshot_id,
)
from sandboxd.store.snapshot_store import SnapshotStore
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["DEFAULT_WAIT_SECONDS", "Snapshots", "fss_error", "max_archive_bytes"]

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_WAIT_SECONDS = 600.0
MAX_ID_CHARS = 64
_END = runner_pb2.OperationDown(end=runner_pb2.DataEnd())
_RESTORE_TRIES = 3


def fss_error(code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> ApiError:
    """An error of the snapshot contract (``CWSANDBOX_FSS_*``)."""
    return ApiError(code, message, reason=f"CWSANDBOX_FSS_{reason}", metadata=metadata)


def snapshot_not_found(snapshot_id: str) -> ApiError:
    """No snapshot with this id that the caller may see (missing and foreign look alike)."""
    return fss_error(
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        f"file-system snapshot {snapshot_id!r} not found",
        file_system_snapshot_id=snapshot_id,
    )


def max_archive_bytes(scratch_bytes: int) -> int:
    """The largest archive of a scratch file system of this size that is stored.

    Its data fits in the file system; tar adds a 512-byte header per entry (two more for a
    long name), and the file system has one inode per 16 KiB: at most about 10 % on top.
    """
    return 2 * scratch_bytes + (16 << 20)


def scratch_of(sandbox: SandboxRecord) -> runner_pb2.ScratchVolume | None:
    """The sandbox's scratch volume as its runner was told (None without one)."""
    if not sandbox.spec:
        return None
    spec = runner_pb2.SandboxSpec.FromString(sandbox.spec)
    return spec.scratch if spec.HasField("scratch") else None


class Snapshots:
    """The snapshot operations over the store, the content and the runners' operations."""

    def __init__(
        self,
        store: SnapshotStore,
        content: ContentStore,
        lifecycle: Lifecycle,
        operations: Operations,
    ) -> None:
        self._store = store
        self._content = content
        self._lifecycle = lifecycle
        self._operations = operations
        self._creating: dict[str, asyncio.Task[SnapshotRecord]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _db(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kw)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def fail_unfinished(self) -> list[SnapshotRecord]:
        """At start-up: snapshots left CREATING by a previous control plane are FAILED."""
        return await self._db(
            self._store.fail_unfinished, "the control plane restarted while it was created"
        )

    async def close(self) -> None:
        """Cancel what is in flight (shutdown); unfinished snapshots are failed at next start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- reading ----------------------------------------------------------------------------
    async def get(self, snapshot_id: str) -> SnapshotRecord:
        """The snapshot as the caller may see it, else ``CWSANDBOX_FSS_NOT_FOUND``."""
        if not snapshot_id.strip():
            raise invalid_argument("file_system_snapshot_id", "must not be empty")
        if len(snapshot_id) > MAX_ID_CHARS:
            raise invalid_argument(
                "file_system_snapshot_id", f"must be at most {MAX_ID_CHARS} characters"
            )
        record = await self._db(self._store.get, snapshot_id)
        if record is None or not current_caller().can_see(record.owner_org):
            raise snapshot_not_found(snapshot_id)
        return record

    async def page(self, after: str, limit: int) -> list[SnapshotRecord]:
        """The caller's snapshots (an administrator's: all) after id ``after``, by id."""
        caller = current_caller()
        owner = "" if caller.is_admin else caller.organization
        return await self._db(self._store.page, owner, after, limit)

    # -- creating -----------------------------------------------------------------------------
    async def create(
        self,
        sandbox: SandboxRecord,
        trigger: SnapshotTrigger,
        idempotency_key: str = "",
    ) -> SnapshotRecord:
        """Start a snapshot of the sandbox's scratch file system; its CREATING record.

        With an idempotency key used before, the snapshot made then. :meth:`wait` waits.
        """
        if len(idempotency_key) > 256:
            raise invalid_argument("idempotency_key", "must be at most 256 characters")
        scratch = scratch_of(sandbox)
        if scratch is None:
            raise fss_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                "NOT_SUPPORTED",
                f"sandbox {sandbox.sandbox_id!r} has no file system to snapshot: start it with "
                "file_system (a mount path and a size)",
                sandbox_id=sandbox.sandbox_id,
            )
        self._lifecycle.running_link(sandbox)  # a running sandbox on a connected runner
        bucket = (await self._db(self._store.bucket_config, sandbox.owner_org)).effective_bucket
        wanted = SnapshotRecord(
            snapshot_id=new_snapshot_id(),
            owner_org=sandbox.owner_org,
            source_sandbox_id=sandbox.sandbox_id,
            volume_name=scratch.name or "workspace",
            trigger=trigger,
            idempotency_key=idempotency_key,
            bucket=bucket,
        )
        record = await self._db(self._store.add, wanted)
        if record.snapshot_id == wanted.snapshot_id:
            limit = max_archive_bytes(scratch.size_bytes)
            task = asyncio.ensure_future(self._take(sandbox, record, limit))
            self._creating[record.snapshot_id] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _t: self._creating.pop(record.snapshot_id, None))
        return record

    async def wait(self, record: SnapshotRecord, timeout: float) -> SnapshotRecord:
        """Wait until the snapshot is READY (its record) or FAILED (an ``FSS_*`` error)."""
        task = self._creating.get(record.snapshot_id)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                raise fss_error(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "WAIT_TIMEOUT",
                    f"snapshot {record.snapshot_id!r} was not ready within {timeout:g}s; "
                    "it is still being created",
                    file_system_snapshot_id=record.snapshot_id,
                ) from None
        done = await self._db(self._store.get, record.snapshot_id)
        if done is None:
            raise snapshot_not_found(record.snapshot_id)
        if done.status is SnapshotStatus.READY:
            return done
        reason = "SIZE_EXCEEDED" if "larger than" in done.status_reason else "CREATE_FAILED"
        raise fss_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            reason,
            f"snapshot {done.snapshot_id!r} failed: {done.status_reason or done.status.value}",
            file_system_snapshot_id=done.snapshot_id,
        )

    async def _take(
        self, sandbox: SandboxRecord, record: SnapshotRecord, max_bytes: int
    ) -> SnapshotRecord:
        target = self._content.path(record.bucket, record.owner_org, record.snapshot_id)
        try:
            link = self._lifecycle.link_for(sandbox)
            open_frame = runner_pb2.OperationDown(
                scratch_archive=runner_pb2.OpenScratchArchive(
                    sandbox_id=sandbox.sandbox_id, name=record.volume_name, max_bytes=max_bytes
                )
            )
            operation = await self._operations.open(
                sandbox.runner_id, link, open_frame, raw_data=True
            )
            try:
                size, digest = await self._content.write(
                    target, _archive_chunks(operation), max_bytes
                )
            finally:
                operation.close()
        except (ApiError, ArchiveTooLarge, OSError) as exc:
            why = exc.message if isinstance(exc, ApiError) else str(exc)
            sid = record.snapshot_id
            log.info("snapshot %s of %s failed: %s", sid, sandbox.sandbox_id, why)
            await self._db(self._store.finish, sid, SnapshotStatus.FAILED, reason=why)
            return record
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                self._content.delete(target)
            raise
        await self._db(
            self._store.finish,
            record.snapshot_id,
            SnapshotStatus.READY,
            size_bytes=size,
            sha256=digest,
        )
        return record

    # -- deleting -----------------------------------------------------------------------------
    async def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot and its content (one being created: once it has ended)."""
        record = await self.get(snapshot_id)
        task = self._creating.get(record.snapshot_id)
        if task is not None:
            await asyncio.shield(task)
        await self._db(self._store.set_status, record.snapshot_id, SnapshotStatus.DELETING)
        target = self._content.path(record.bucket, record.owner_org, record.snapshot_id)
        await self._db(self._content.delete, target)
        await self._db(self._store.remove, record.snapshot_id)

    # -- restoring ----------------------------------------------------------------------------
    async def restore_source(self, snapshot_id: str) -> SnapshotRecord:
        """The snapshot a Start restores from: the caller's, and READY."""
        record = await self.get(snapshot_id)
        if record.status is not SnapshotStatus.READY:
            raise fss_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                "NOT_READY",
                f"snapshot {snapshot_id!r} is {record.status.value}, not ready",
                file_system_snapshot_id=snapshot_id,
            )
        return record

    def push_restore(self, sandbox: SandboxRecord, snapshot: SnapshotRecord) -> None:
        """Send the snapshot's archive to the sandbox's runner, in the background.

        The runner waits for it before it starts the sandbox; if it never arrives, the
        start fails there with ``CWSANDBOX_FSS_RESTORE_FAILED``.
        """
        self._spawn(self._push(sandbox, snapshot))

    async def _push(self, sandbox: SandboxRecord, snapshot: SnapshotRecord) -> None:
        target = self._content.path(snapshot.bucket, snapshot.owner_org, snapshot.snapshot_id)
        for attempt in range(1, _RESTORE_TRIES + 1):
            try:
                link = self._lifecycle.link_for(sandbox)
                open_frame = _restore_frame(sandbox, snapshot)  # a fresh one: binding marks it
                operation = await self._operations.open(
                    sandbox.runner_id, link, open_frame, raw_data=True
                )
                try:
                    async for chunk in self._content.read(target):
                        if not await operation.send(encode(DOWN_DATA, chunk)):
                            raise runner_unavailable(sandbox.runner_id, "the restore was closed")
                    await operation.send(_END)
                    _done(await operation.receive(), sandbox.runner_id)
                finally:
                    operation.close()
                return
            except ApiError as error:
                retry = error.reason == "CWSANDBOX_RUNNER_UNAVAILABLE" and attempt < _RESTORE_TRIES
                what = (snapshot.snapshot_id, sandbox.sandbox_id, error)
                log.info("restore of %s into %s: %s", *what)
                if not retry:
                    return
                await asyncio.sleep(attempt)
            except OSError as exc:
                what2 = (snapshot.snapshot_id, exc)
                log.warning("restore of %s: its archive cannot be read: %s", *what2)
                return

    # -- buckets ------------------------------------------------------------------------------
    async def bucket_config(self) -> BucketConfig:
        """The caller's organization's snapshot destination."""
        return await self._db(self._store.bucket_config, current_caller().organization)

    async def set_bucket_config(self, bucket_name: str, region: str) -> BucketConfig:
        """Check and store the caller's organization's destination (see ``content.py``)."""
        config = check_bucket(self._content.data_dir, bucket_name, region)
        await self._db(self._store.set_bucket_config, current_caller().organization, config)
        return config


def _restore_frame(sandbox: SandboxRecord, snapshot: SnapshotRecord) -> runner_pb2.OperationDown:
    return runner_pb2.OperationDown(
        scratch_restore=runner_pb2.OpenScratchRestore(
            sandbox_id=sandbox.sandbox_id,
            snapshot_id=snapshot.snapshot_id,
            size_bytes=snapshot.size_bytes,
            sha256=snapshot.sha256,
        )
    )


def _done(frame: Any, runner_id: str) -> runner_pb2.FileDone:
    if frame is None or isinstance(frame, bytes) or frame.WhichOneof("frame") != "done":
        raise runner_unavailable(runner_id, "its snapshot stream ended without an answer")
    if frame.done.HasField("failure"):
        raise failure_error(frame.done.failure)
    done: runner_pb2.FileDone = frame.done
    return done


async def _archive_chunks(operation: Operation) -> AsyncIterator[bytes]:
    """The archive's bytes from the runner's frames; its failure raised as ApiError."""
    while True:
        frame = await operation.receive()
        if isinstance(frame, bytes):
            yield bytes(payload(frame))
            continue
        if frame is None:
            raise runner_unavailable(operation.runner_id, "its snapshot stream ended early")
        kind = frame.WhichOneof("frame")
        if kind == "done":
            _done(frame, operation.runner_id)
            return
        if kind == "data":
            yield frame.data
