"""File-system snapshots (protocol §10): ``sb.snapshot()`` and the class-level calls.

The same public API as the official 0.26.2 client: ``snapshot(wait_for_ready,
idempotency_key)`` on a handle, and ``Sandbox.get_snapshot``, ``list_snapshots`` (the server
takes no filters: source and status are filtered here), ``delete_snapshot`` and
``get/set_snapshot_bucket_config``. Class-level calls open a short-lived transport each, like
``Sandbox.list``; snapshot errors map to the ``Snapshot*`` exceptions (§9.2).
"""

from __future__ import annotations

import builtins
import enum
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from cwsandbox import _loop
from cwsandbox._catalog import endpoint_for
from cwsandbox._config import Endpoint
from cwsandbox._operation import OperationRef
from cwsandbox._pagination import Deadline, collect_pages_async
from cwsandbox._transport import Transport
from cwsandbox.exceptions import SandboxSnapshotError, SandboxTimeoutError, SnapshotNotFoundError
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = [
    "FileSystemSnapshot",
    "FileSystemSnapshotBucketConfig",
    "FileSystemSnapshotStatus",
    "FileSystemSnapshotTrigger",
    "SandboxSnapshotMixin",
]

T = TypeVar("T")
DEFAULT_TIMEOUT = 300.0
WAIT_SECONDS = 600


class FileSystemSnapshotStatus(enum.StrEnum):
    """Where a snapshot is in its life."""

    UNSPECIFIED = "unspecified"
    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"

    @classmethod
    def parse(cls, value: FileSystemSnapshotStatus | str) -> FileSystemSnapshotStatus:
        """A status from itself or its name (any case); ``ValueError`` otherwise."""
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"unknown snapshot status {value!r}") from None


class FileSystemSnapshotTrigger(enum.StrEnum):
    """Why a snapshot was taken."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    MANUAL = "manual"


@dataclass(frozen=True)
class FileSystemSnapshot:
    """A snapshot of a sandbox's file system, as the server reports it."""

    file_system_snapshot_id: str
    status: FileSystemSnapshotStatus
    status_reason: str = ""
    size_bytes: int = 0
    source_sandbox_id: str = ""
    trigger: FileSystemSnapshotTrigger = FileSystemSnapshotTrigger.UNSPECIFIED
    idempotency_key: str = ""
    object_bucket: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True)
class FileSystemSnapshotBucketConfig:
    """Where an organization's snapshots go (``mode``: "cw_managed" or "bring_your_own")."""

    bucket_name: str
    region: str
    mode: str
    effective_bucket_name: str


def _when(msg: gw.FileSystemSnapshot, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(msg, name)
    return stamp.ToDatetime(tzinfo=UTC)


def snapshot_of(msg: gw.FileSystemSnapshot) -> FileSystemSnapshot:
    """The public value of a ``FileSystemSnapshot`` message."""
    status = gw.FileSystemSnapshotStatus.Name(msg.status)
    trigger = gw.FileSystemSnapshotTrigger.Name(msg.trigger)
    return FileSystemSnapshot(
        file_system_snapshot_id=msg.file_system_snapshot_id,
        status=FileSystemSnapshotStatus(
            status.removeprefix("FILE_SYSTEM_SNAPSHOT_STATUS_").lower()
        ),
        status_reason=msg.status_reason,
        size_bytes=msg.size_bytes,
        source_sandbox_id=msg.source_sandbox_id,
        trigger=FileSystemSnapshotTrigger(
            trigger.removeprefix("FILE_SYSTEM_SNAPSHOT_TRIGGER_").lower()
        ),
        idempotency_key=msg.idempotency_key,
        object_bucket=msg.object_bucket,
        created_at=_when(msg, "created_at"),
        updated_at=_when(msg, "updated_at"),
        completed_at=_when(msg, "completed_at"),
    )


def _bucket_of(msg: gw.FileSystemSnapshotBucketConfig) -> FileSystemSnapshotBucketConfig:
    mode = gw.FileSystemSnapshotBucketMode.Name(msg.mode)
    return FileSystemSnapshotBucketConfig(
        bucket_name=msg.bucket_name,
        region=msg.region,
        mode=mode.removeprefix("FILE_SYSTEM_SNAPSHOT_BUCKET_MODE_").lower(),
        effective_bucket_name=msg.effective_bucket_name,
    )


def _snapshot_id(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"file_system_snapshot_id must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError("file_system_snapshot_id must not be blank")
    return value


def _timeout(value: float | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"timeout_seconds must be a positive number, got {value!r}")
    return float(value)


async def _once(endpoint: Endpoint, call: Callable[[Transport], Awaitable[T]]) -> T:
    transport = Transport(endpoint)
    try:
        return await call(transport)
    finally:
        await transport.close()


async def create_snapshot(
    transport: Transport, sandbox_id: str, wait_for_ready: bool, idempotency_key: str | None
) -> str:
    """CreateFileSystemSnapshot; the new (or, for a key used before, the existing) id."""
    request = gw.CreateFileSystemSnapshotRequest(
        sandbox_id=sandbox_id,
        idempotency_key=idempotency_key or uuid.uuid4().hex,
        wait_for_ready=wait_for_ready,
    )
    timeout = DEFAULT_TIMEOUT
    if wait_for_ready:
        request.max_timeout_seconds = WAIT_SECONDS
        timeout = WAIT_SECONDS + 5.0
    resp = await transport.unary(
        "CreateFileSystemSnapshot",
        request,
        gw.CreateFileSystemSnapshotResponse,
        timeout=timeout,
        operation="snapshot",
        sandbox_id=sandbox_id,
        snapshot_call=True,
    )
    if not resp.success:
        raise SandboxSnapshotError(f"Failed to snapshot sandbox {sandbox_id}: {resp.error_message}")
    return str(resp.file_system_snapshot_id)


class SandboxSnapshotMixin:
    """``snapshot()`` on a handle and the class-level snapshot calls of ``Sandbox``."""

    def _snapshot_call(
        self, wait_for_ready: bool, idempotency_key: str | None
    ) -> OperationRef[str]:
        raise NotImplementedError  # pragma: no cover - provided by Sandbox

    def snapshot(
        self, *, wait_for_ready: bool = True, idempotency_key: str | None = None
    ) -> OperationRef[str]:
        """Snapshot the sandbox's file system (``file_system_snapshot`` on ``run``); its id.

        With ``wait_for_ready`` (the default) the id comes once the snapshot is READY.
        """
        return self._snapshot_call(wait_for_ready, idempotency_key)

    @classmethod
    def get_snapshot(
        cls,
        file_system_snapshot_id: str,
        *,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
    ) -> OperationRef[FileSystemSnapshot]:
        """One snapshot (``SnapshotNotFoundError`` if unknown, or another organization's)."""
        sid = _snapshot_id(file_system_snapshot_id)
        endpoint, timeout = endpoint_for(base_url), _timeout(timeout_seconds)

        async def call(t: Transport) -> FileSystemSnapshot:
            resp = await t.unary(
                "GetFileSystemSnapshot",
                gw.GetFileSystemSnapshotRequest(file_system_snapshot_id=sid),
                gw.FileSystemSnapshot,
                timeout=timeout,
                operation="get snapshot",
                snapshot_call=True,
                file_system_snapshot_id=sid,
            )
            return snapshot_of(resp)

        return OperationRef(_loop.submit(_once(endpoint, call)))

    @classmethod
    def list_snapshots(
        cls,
        *,
        source_sandbox_id: str | None = None,
        status: FileSystemSnapshotStatus | str | None = None,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
    ) -> OperationRef[builtins.list[FileSystemSnapshot]]:
        """The organization's snapshots, optionally of one sandbox and in one status."""
        wanted = FileSystemSnapshotStatus.parse(status) if status is not None else None
        endpoint, timeout = endpoint_for(base_url), _timeout(timeout_seconds)

        async def call(t: Transport) -> builtins.list[FileSystemSnapshot]:
            deadline = Deadline(timeout)

            async def fetch(token: str) -> tuple[builtins.list[Any], str]:
                left = deadline.remaining()
                if left <= 0:
                    raise SandboxTimeoutError(f"listing snapshots timed out after {timeout:g}s")
                resp = await t.unary(
                    "ListFileSystemSnapshots",
                    gw.ListFileSystemSnapshotsRequest(page_token=token),
                    gw.ListFileSystemSnapshotsResponse,
                    timeout=left,
                    operation="list snapshots",
                    snapshot_call=True,
                )
                return list(resp.file_system_snapshots), resp.next_page_token

            pages = await collect_pages_async(fetch, operation="list snapshots")
            found = [snapshot_of(m) for m in pages]
            return [
                s
                for s in found
                if (source_sandbox_id is None or s.source_sandbox_id == source_sandbox_id)
                and (wanted is None or s.status is wanted)
            ]

        return OperationRef(_loop.submit(_once(endpoint, call)))

    @classmethod
    def delete_snapshot(
        cls,
        file_system_snapshot_id: str,
        *,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
        missing_ok: bool = False,
    ) -> OperationRef[None]:
        """Delete a snapshot and its content; ``missing_ok`` ignores an unknown id."""
        sid = _snapshot_id(file_system_snapshot_id)
        endpoint, timeout = endpoint_for(base_url), _timeout(timeout_seconds)

        async def call(t: Transport) -> None:
            try:
                resp = await t.unary(
                    "DeleteFileSystemSnapshot",
                    gw.DeleteFileSystemSnapshotRequest(file_system_snapshot_id=sid),
                    gw.DeleteFileSystemSnapshotResponse,
                    timeout=timeout,
                    operation="delete snapshot",
                    snapshot_call=True,
                    file_system_snapshot_id=sid,
                )
            except SnapshotNotFoundError:
                if missing_ok:
                    return
                raise
            if not resp.success:
                raise SandboxSnapshotError(f"Failed to delete snapshot {sid}: {resp.error_message}")

        return OperationRef(_loop.submit(_once(endpoint, call)))

    @classmethod
    def get_snapshot_bucket_config(
        cls, *, base_url: str | None = None, timeout_seconds: float | None = None
    ) -> OperationRef[FileSystemSnapshotBucketConfig]:
        """Where the organization's snapshots go."""
        endpoint, timeout = endpoint_for(base_url), _timeout(timeout_seconds)

        async def call(t: Transport) -> FileSystemSnapshotBucketConfig:
            resp = await t.unary(
                "GetFileSystemSnapshotBucketConfig",
                gw.GetFileSystemSnapshotBucketConfigRequest(),
                gw.FileSystemSnapshotBucketConfig,
                timeout=timeout,
                operation="get snapshot bucket config",
                snapshot_call=True,
            )
            return _bucket_of(resp)

        return OperationRef(_loop.submit(_once(endpoint, call)))

    @classmethod
    def set_snapshot_bucket_config(
        cls,
        *,
        bucket_name: str,
        region: str = "",
        base_url: str | None = None,
        timeout_seconds: float | None = None,
    ) -> OperationRef[FileSystemSnapshotBucketConfig]:
        """Set where the organization's snapshots go ("" for the server's own place)."""
        endpoint, timeout = endpoint_for(base_url), _timeout(timeout_seconds)

        async def call(t: Transport) -> FileSystemSnapshotBucketConfig:
            resp = await t.unary(
                "SetFileSystemSnapshotBucketConfig",
                gw.SetFileSystemSnapshotBucketConfigRequest(bucket_name=bucket_name, region=region),
                gw.FileSystemSnapshotBucketConfig,
                timeout=timeout,
                operation="set snapshot bucket config",
                snapshot_call=True,
            )
            return _bucket_of(resp)

        return OperationRef(_loop.submit(_once(endpoint, call)))
