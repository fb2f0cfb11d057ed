"""``coreweave.sandbox.v1beta2.GatewayService``: sandbox lifecycle and unary files.

The polling contract (v1beta2.md §4) shapes this module: Start returns as soon as the sandbox
is placed and recorded (never waiting for it to run, except to learn published ports); Get
never reports status 0 for a live sandbox; Stop answers ``success`` once the runner stopped the
process (after the grace period, then a kill), and the terminal record stays readable with its
exit code. Work that talks to runners lives in :mod:`sandboxd.controlplane.lifecycle`.

Every RPC that names a sandbox finds it through ``Lifecycle.record``, which hides other
organizations' sandboxes; List keeps only what the caller may see.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sandboxd.controlplane.call_headers import START_FEATURES
from sandboxd.controlplane.files import Files
from sandboxd.controlplane.fss_gateway import FssGateway
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.pausing import Pausing, wait_seconds
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.sandbox_queries import SandboxFilter, list_page, settled_record
from sandboxd.controlplane.start_request import not_implemented, parse_start_request
from sandboxd.controlplane.unary_exec import UnaryExec, parse_exec_request
from sandboxd.controlplane.wire_time import timestamp_or_none as _timestamp
from sandboxd.errors import ApiError, abort_with, invalid_argument
from sandboxd_protocol.v1beta2 import gateway_pb2, gateway_pb2_grpc

R = TypeVar("R")
log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
S = gateway_pb2


def _ports(record: SandboxRecord) -> list[gateway_pb2.Port]:
    return [gateway_pb2.Port(container_port=p, protocol="TCP") for p in record.exposed_ports]


def _common(record: SandboxRecord, message: type[Any]) -> dict[str, Any]:
    """The record's fields that ``message`` (Start/Get response, SandboxInfo) carries."""
    fields = {
        "sandbox_id": record.sandbox_id,
        "started_at_time": _timestamp(record.started_at or record.created_at),
        "sandbox_status": record.status,
        "runner_id": record.runner_id,
        "runner_group_id": record.runner_group_id,
        "profile_id": record.profile_name,
        "service_address": record.service_address,
        "exposed_ports": _ports(record),
        "applied_ingress_mode": record.applied_ingress_mode,
        "applied_egress_mode": record.applied_egress_mode,
    }
    known = message.DESCRIPTOR.fields_by_name
    return {key: value for key, value in fields.items() if key in known}


def get_response(record: SandboxRecord, status_reason: str) -> gateway_pb2.GetSandboxResponse:
    """What Get answers for ``record`` (also sent ahead of an exec that waited for it)."""
    response = gateway_pb2.GetSandboxResponse(
        **_common(record, gateway_pb2.GetSandboxResponse), status_reason=status_reason
    )
    if record.exit_code is not None:
        response.exit_code = record.exit_code
    return response


def _unimplemented(feature: str, hint: str = "") -> Callable[..., Awaitable[Any]]:
    """A handler for an RPC whose feature this server does not offer."""

    async def handler(self: object, request: object, context: Context) -> Any:
        await abort_with(context, not_implemented(feature, feature.replace("_", " ")))

    handler.__doc__ = f"Not offered: answers UNIMPLEMENTED ({feature}). {hint}".strip()
    return handler


class GatewayService(gateway_pb2_grpc.GatewayServiceServicer):
    """Sandbox RPCs over the :class:`Lifecycle` that drives runners."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        files: Files,
        operations: Operations,
        fss: FssGateway | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._records = lifecycle.records
        self._files = files
        self._fss = fss  # file-system snapshots (fss_gateway.py); None: UNIMPLEMENTED
        self._pausing = Pausing(lifecycle)
        self._exec = UnaryExec(lifecycle, operations)

    async def _run(self, context: Context, work: Callable[[], Awaitable[R]]) -> R:
        try:
            return await work()
        except ApiError as error:
            await abort_with(context, error)
        except Exception as exc:  # a bug of ours: log it, answer INTERNAL, keep serving
            log.exception("gateway call failed")
            await abort_with(
                context,
                ApiError(grpc.StatusCode.INTERNAL, f"internal error in sandboxd: {exc}"),
            )

    async def _record(self, sandbox_id: str) -> SandboxRecord:
        return await self._lifecycle.record(sandbox_id)

    async def Start(
        self, request: gateway_pb2.StartSandboxRequest, context: Context
    ) -> gateway_pb2.StartSandboxResponse:
        """Validate, place, record and start the sandbox on its runner."""

        async def work() -> gateway_pb2.StartSandboxResponse:
            parsed = parse_start_request(request)
            if parsed.scratch is not None and self._fss is None:
                raise not_implemented("file_system", "file-system snapshots")
            source = await self._fss.restore_source(parsed) if self._fss else None
            record = await self._lifecycle.start(parsed)
            if self._fss is not None:
                self._fss.started(record, source)
            response = gateway_pb2.StartSandboxResponse(
                **_common(record, gateway_pb2.StartSandboxResponse)
            )
            response.requested_resource_limits.CopyFrom(request.resource_limits)
            response.requested_resource_requests.CopyFrom(request.resource_requests)
            context.set_trailing_metadata(START_FEATURES)
            return response

        return await self._run(context, work)

    async def Get(
        self, request: gateway_pb2.GetSandboxRequest, context: Context
    ) -> gateway_pb2.GetSandboxResponse:
        """The current record; terminal ones carry the exit code."""

        async def work() -> gateway_pb2.GetSandboxResponse:
            record = await settled_record(self._lifecycle, request.sandbox_id)
            return get_response(record, self._lifecycle.reason_of(record))

        return await self._run(context, work)

    async def List(
        self, request: gateway_pb2.ListSandboxesRequest, context: Context
    ) -> gateway_pb2.ListSandboxesResponse:
        """Filter by tags (all must match), status, profiles, runners; paginate."""

        async def work() -> gateway_pb2.ListSandboxesResponse:
            if request.status not in gateway_pb2.SandboxStatus.values():
                raise invalid_argument("status", f"unknown SandboxStatus value {request.status}")
            if len(request.volume_ids):
                raise not_implemented("volume_ids", "volumes")
            wanted = SandboxFilter(
                tags=tuple(request.tags),
                status=request.status,
                profiles=tuple({*request.profile_ids, *request.profile_names}),
                runners=tuple(request.runner_ids),
                include_stopped=request.include_stopped,
            )
            page, next_token = await list_page(
                self._records, wanted, request.page_size, request.page_token
            )
            return gateway_pb2.ListSandboxesResponse(
                sandboxes=[
                    gateway_pb2.SandboxInfo(**_common(r, gateway_pb2.SandboxInfo)) for r in page
                ],
                next_page_token=next_token,
            )

        return await self._run(context, work)

    async def Stop(
        self, request: gateway_pb2.StopSandboxRequest, context: Context
    ) -> gateway_pb2.StopSandboxResponse:
        """Stop the main process (grace period, then kill); success once it is stopped."""

        async def work() -> gateway_pb2.StopSandboxResponse:
            if request.graceful_shutdown_seconds < 0:
                raise invalid_argument("graceful_shutdown_seconds", "must not be negative")
            if request.file_system_snapshot_on_stop:
                if self._fss is None:
                    raise not_implemented("file_system_snapshot_on_stop", "file-system snapshots")
                grace = request.graceful_shutdown_seconds or 10
                return await self._fss.stop_with_snapshot(request, grace)
            record = await self._record(request.sandbox_id)
            await self._lifecycle.stop(record, request.graceful_shutdown_seconds or 10)
            return gateway_pb2.StopSandboxResponse(success=True)

        return await self._run(context, work)

    async def Delete(
        self, request: gateway_pb2.DeleteSandboxRequest, context: Context
    ) -> gateway_pb2.DeleteSandboxResponse:
        """Stop if needed, clean up on the runner and forget the record."""

        async def work() -> gateway_pb2.DeleteSandboxResponse:
            await self._lifecycle.delete(await self._record(request.sandbox_id))
            return gateway_pb2.DeleteSandboxResponse(success=True)

        return await self._run(context, work)

    async def AddFile(
        self, request: gateway_pb2.AddFileSandboxRequest, context: Context
    ) -> gateway_pb2.AddFileSandboxResponse:
        """Write a file into the sandbox's filesystem."""

        async def work() -> gateway_pb2.AddFileSandboxResponse:
            record = await self._record(request.sandbox_id)
            await self._files.write_whole(record, request.filepath, request.file_contents)
            return gateway_pb2.AddFileSandboxResponse(success=True)

        return await self._run(context, work)

    async def RetrieveFile(
        self, request: gateway_pb2.RetrieveFileSandboxRequest, context: Context
    ) -> gateway_pb2.RetrieveFileSandboxResponse:
        """Read a file from the sandbox's filesystem."""

        async def work() -> gateway_pb2.RetrieveFileSandboxResponse:
            record = await self._record(request.sandbox_id)
            contents = await self._files.read_whole(record, request.filepath)
            return gateway_pb2.RetrieveFileSandboxResponse(file_contents=contents, success=True)

        return await self._run(context, work)

    async def Exec(
        self, request: gateway_pb2.ExecSandboxRequest, context: Context
    ) -> gateway_pb2.ExecSandboxResponse:
        """Run a command to its end; its output (capped), exit code (``unary_exec.py``)."""

        async def work() -> gateway_pb2.ExecSandboxResponse:
            return await self._exec.run(parse_exec_request(request))

        return await self._run(context, work)

    async def Pause(
        self, request: gateway_pb2.PauseSandboxRequest, context: Context
    ) -> gateway_pb2.PauseSandboxResponse:
        """Freeze every process of the sandbox; success once its runner did (``pausing.py``)."""

        async def work() -> gateway_pb2.PauseSandboxResponse:
            wait = wait_seconds(request.max_timeout_seconds)
            await self._pausing.pause(await self._record(request.sandbox_id), wait)
            return gateway_pb2.PauseSandboxResponse(success=True)

        return await self._run(context, work)

    async def Resume(
        self, request: gateway_pb2.ResumeSandboxRequest, context: Context
    ) -> gateway_pb2.ResumeSandboxResponse:
        """Thaw a paused sandbox; success once its runner did (``pausing.py``)."""

        async def work() -> gateway_pb2.ResumeSandboxResponse:
            wait = wait_seconds(request.max_timeout_seconds)
            await self._pausing.resume(await self._record(request.sandbox_id), wait)
            return gateway_pb2.ResumeSandboxResponse(success=True)

        return await self._run(context, work)

    # File-system snapshots: fss_gateway.py does the work.
    def _snapshots(self) -> FssGateway:
        if self._fss is None:
            raise not_implemented("file_system_snapshots", "file-system snapshots")
        return self._fss

    async def CreateFileSystemSnapshot(
        self, request: gateway_pb2.CreateFileSystemSnapshotRequest, context: Context
    ) -> gateway_pb2.CreateFileSystemSnapshotResponse:
        """Snapshot a sandbox's scratch file system."""
        return await self._run(context, lambda: self._snapshots().create(request))

    async def GetFileSystemSnapshot(
        self, request: gateway_pb2.GetFileSystemSnapshotRequest, context: Context
    ) -> gateway_pb2.FileSystemSnapshot:
        """One snapshot."""
        return await self._run(context, lambda: self._snapshots().get(request))

    async def ListFileSystemSnapshots(
        self, request: gateway_pb2.ListFileSystemSnapshotsRequest, context: Context
    ) -> gateway_pb2.ListFileSystemSnapshotsResponse:
        """The organization's snapshots, paged."""
        return await self._run(context, lambda: self._snapshots().list(request))

    async def DeleteFileSystemSnapshot(
        self, request: gateway_pb2.DeleteFileSystemSnapshotRequest, context: Context
    ) -> gateway_pb2.DeleteFileSystemSnapshotResponse:
        """Remove a snapshot."""
        return await self._run(context, lambda: self._snapshots().delete(request))

    async def GetFileSystemSnapshotBucketConfig(
        self, request: gateway_pb2.GetFileSystemSnapshotBucketConfigRequest, context: Context
    ) -> gateway_pb2.FileSystemSnapshotBucketConfig:
        """Where the organization's snapshots go."""
        return await self._run(context, lambda: self._snapshots().get_bucket())

    async def SetFileSystemSnapshotBucketConfig(
        self, request: gateway_pb2.SetFileSystemSnapshotBucketConfigRequest, context: Context
    ) -> gateway_pb2.FileSystemSnapshotBucketConfig:
        """Set where the organization's snapshots go (local buckets only)."""
        return await self._run(context, lambda: self._snapshots().set_bucket(request))

    # Features this server does not offer: a clear UNIMPLEMENTED with a reason.
    Raw = _unimplemented("raw_actions")
    GetObjectStorageWIFConfig = _unimplemented("object_storage")
    SetObjectStorageWIFConfig = _unimplemented("object_storage")
    DeleteObjectStorageWIFConfig = _unimplemented("object_storage")
