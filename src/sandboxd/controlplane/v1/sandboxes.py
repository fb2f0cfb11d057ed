"""``coreweave.sandbox.v1.SandboxService``: sandboxes as v1 resources (protocol/v1.md §4–7).

A thin codec over the plumbing the v1beta2 gateway uses: creates go through
:meth:`Lifecycle.start` (placement, quotas, one record), reads through
:mod:`sandboxd.controlplane.sandbox_queries`, files through :class:`Files`, streams through
the v1beta2 relay (:mod:`.streams`). What v1 adds is kept beside the record
(:class:`V1Resources`): the spec to echo, and the create's ``request_id``, on which creates
are idempotent (§4.2.4: a retry or replay of the same request gets the same sandbox).

DeleteSandbox is v1's only way to stop (§4.5): it records the stop with the given grace
(0 means at once) and answers without waiting; the terminal record stays readable, since the
client then polls GetSandbox until it sees a terminal state. Another organization's sandbox
answers exactly like a missing one on every RPC (``Lifecycle.record``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.files import Files
from sandboxd.controlplane.lifecycle import Lifecycle, check_file_path, want_stopped
from sandboxd.controlplane.sandbox_model import SandboxRecord, now
from sandboxd.controlplane.sandbox_queries import SandboxFilter, list_page, settled_record
from sandboxd.controlplane.start_request import not_implemented
from sandboxd.controlplane.v1.create_request import CreatePlan, parse_create
from sandboxd.controlplane.v1.resource import sandbox_message
from sandboxd.controlplane.v1.resources_db import V1Resources
from sandboxd.controlplane.v1.snapshots import V1Snapshots
from sandboxd.controlplane.v1.states import status_of_state
from sandboxd.controlplane.v1.streams import V1Streams, check_container
from sandboxd.controlplane.v1.unimplemented import unimplemented
from sandboxd.errors import ApiError, abort_with, invalid_argument
from sandboxd.store.v1_resources import RequestIdTaken, V1Resource
from sandboxd.volumes.service import Volumes
from sandboxd_protocol.v1 import sandbox_pb2, sandbox_pb2_grpc

R = TypeVar("R")
V = sandbox_pb2
Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger(__name__)
MAX_GRACE_SECONDS = 3600
PRUNE_EVERY_CREATES = 100


def request_id_conflict(request_id: str) -> ApiError:
    """The request id names an earlier create of a different sandbox."""
    error = invalid_argument(
        "request_id", f"{request_id!r} was already used to create a different sandbox"
    )
    return dataclasses.replace(error, reason="CWSANDBOX_REQUEST_ID_CONFLICT")


def _mounts_any(resource: V1Resource | None, request: sandbox_pb2.ListSandboxesRequest) -> bool:
    """Whether the sandbox's spec mounts one of the request's ``volume_ids``."""
    if resource is None:
        return False
    wanted = set(request.volume_ids)
    return any(v.volume_id in wanted for v in V.SandboxSpec.FromString(resource.spec).volumes)


class _KeyedLocks:
    """One lock per key while someone holds or waits for it (creates of one request id)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class V1SandboxService(sandbox_pb2_grpc.SandboxServiceServicer):
    """Sandbox RPCs of the v1 protocol over the shared :class:`Lifecycle`."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        files: Files,
        resources: V1Resources,
        streams: V1Streams,
        snapshots: V1Snapshots,
        *,
        volumes: Volumes,
    ) -> None:
        self._lifecycle = lifecycle
        self._volumes = volumes
        self._snapshots = snapshots
        self._files = files
        self._resources = resources
        self._streams = streams
        self._creating = _KeyedLocks()
        self._creates = 0

    async def _run(self, context: Context, work: Callable[[], Awaitable[R]]) -> R:
        try:
            return await work()
        except ApiError as error:
            await abort_with(context, error)
        except Exception as exc:  # a bug of ours: log it, answer INTERNAL, keep serving
            log.exception("v1 sandbox call failed")
            await abort_with(
                context, ApiError(grpc.StatusCode.INTERNAL, f"internal error in sandboxd: {exc}")
            )

    async def _message(self, record: SandboxRecord) -> sandbox_pb2.Sandbox:
        resource = await self._resources.get(record.sandbox_id)
        return sandbox_message(record, resource, self._lifecycle.reason_of(record))

    # -- create ---------------------------------------------------------------------------

    async def CreateSandbox(
        self, request: sandbox_pb2.CreateSandboxRequest, context: Context
    ) -> sandbox_pb2.Sandbox:
        """Validate, place, record; the same ``request_id`` again gets the same sandbox."""

        async def work() -> sandbox_pb2.Sandbox:
            plan = parse_create(request)
            owner = current_caller().organization
            if not plan.request_id:
                return await self._create(plan, owner)
            async with self._creating.hold((owner, plan.request_id)):
                existing = await self._resources.by_request(owner, plan.request_id)
                if existing is None:
                    return await self._create(plan, owner)
                return await self._replay(existing, plan)

        return await self._run(context, work)

    async def _create(self, plan: CreatePlan, owner: str) -> sandbox_pb2.Sandbox:
        source = await self._snapshots.restore_source(plan.request)
        if plan.volumes:  # resolved, pinned to their runner and recorded under one lock
            async with self._volumes.mounting():
                mounts, runner_id = await self._volumes.mounts_for(
                    plan.volumes, plan.request.runner_ids
                )
                request = dataclasses.replace(plan.request, volumes=mounts, runner_ids=(runner_id,))
                record = await self._lifecycle.start(request)
        else:
            record = await self._lifecycle.start(plan.request)
        self._snapshots.started(record, source)
        resource = V1Resource(
            sandbox_id=record.sandbox_id,
            owner_org=owner,
            request_id=plan.request_id,
            spec=plan.spec.SerializeToString(),
            request_digest=plan.digest,
            display_name=plan.display_name,
            created_at=now(),
        )
        try:
            await self._resources.add(resource)
        except RequestIdTaken:  # another control plane process won the race: stop ours
            await self._lifecycle.stop(record, 0)
            existing = await self._resources.by_request(owner, plan.request_id)
            if existing is None:
                raise request_id_conflict(plan.request_id) from None
            return await self._replay(existing, plan)
        self._creates += 1
        if self._creates % PRUNE_EVERY_CREATES == 0:
            await self._resources.prune()
        return sandbox_message(record, resource, self._lifecycle.reason_of(record))

    async def _replay(self, existing: V1Resource, plan: CreatePlan) -> sandbox_pb2.Sandbox:
        if existing.request_digest != plan.digest:
            raise request_id_conflict(plan.request_id)
        record = await self._lifecycle.record(existing.sandbox_id)
        return sandbox_message(record, existing, self._lifecycle.reason_of(record))

    # -- read -----------------------------------------------------------------------------

    async def GetSandbox(
        self, request: sandbox_pb2.GetSandboxRequest, context: Context
    ) -> sandbox_pb2.Sandbox:
        """The sandbox with its echoed spec; terminal ones carry their exit code."""

        async def work() -> sandbox_pb2.Sandbox:
            record = await settled_record(self._lifecycle, request.sandbox_id)
            return await self._message(record)

        return await self._run(context, work)

    async def ListSandboxes(
        self, request: sandbox_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_pb2.ListSandboxesResponse:
        """Filter by tags (all must match), state and runners; paginate, oldest first."""

        async def work() -> sandbox_pb2.ListSandboxesResponse:
            if request.state not in V.State.values():
                raise invalid_argument("state", f"unknown State value {request.state}")
            if request.sort_direction not in V.SortDirection.values():
                raise invalid_argument(
                    "sort_direction", f"unknown SortDirection value {request.sort_direction}"
                )
            if request.sort_direction == V.SORT_DIRECTION_DESCENDING:
                raise not_implemented("sort_direction", "newest-first listing")
            status = status_of_state(request.state) if request.state else 0
            if status is None:  # PREPARING: no sandbox here is ever in it
                return V.ListSandboxesResponse()
            wanted = SandboxFilter(
                tags=tuple(request.tags),
                status=status,
                runners=tuple(request.runner_ids),
                include_stopped=request.show_terminated,
            )
            page, next_token = await list_page(
                self._lifecycle.records, wanted, request.page_size, request.page_token
            )
            resources = await self._resources.get_many([r.sandbox_id for r in page])
            if len(request.volume_ids):  # narrows each page, as the snapshot list's filter
                page = [r for r in page if _mounts_any(resources.get(r.sandbox_id), request)]
            reason = self._lifecycle.reason_of
            return V.ListSandboxesResponse(
                sandboxes=[
                    sandbox_message(r, resources.get(r.sandbox_id), reason(r)) for r in page
                ],
                next_page_token=next_token,
            )

        return await self._run(context, work)

    # -- stop -----------------------------------------------------------------------------

    async def DeleteSandbox(
        self, request: sandbox_pb2.DeleteSandboxRequest, context: Context
    ) -> sandbox_pb2.DeleteSandboxResponse:
        """Stop with the grace period (0: at once); the terminal record stays readable."""

        async def work() -> sandbox_pb2.DeleteSandboxResponse:
            grace = request.grace_period_seconds
            if not 0 <= grace <= MAX_GRACE_SECONDS:
                raise invalid_argument(
                    "grace_period_seconds", f"must be between 0 and {MAX_GRACE_SECONDS}"
                )
            try:
                record = await self._lifecycle.record(request.sandbox_id)
            except ApiError as error:
                if request.allow_missing and error.code is grpc.StatusCode.NOT_FOUND:
                    return V.DeleteSandboxResponse()  # "already gone" (§4.5)
                raise
            if len(request.snapshot_volumes):
                ids = await self._snapshots.delete_with_snapshots(request, record)
                return V.DeleteSandboxResponse(
                    sandbox=await self._message(record), file_system_snapshot_ids=ids
                )
            if not record.terminal:
                await self._lifecycle.records.update(
                    record.sandbox_id, lambda r: want_stopped(r, grace)
                )
                record = await self._lifecycle.record(record.sandbox_id)
            return V.DeleteSandboxResponse(sandbox=await self._message(record))

        return await self._run(context, work)

    # -- files ----------------------------------------------------------------------------

    async def WriteFile(
        self, request: sandbox_pb2.WriteFileRequest, context: Context
    ) -> sandbox_pb2.WriteFileResponse:
        """Write a whole file (at most 32 MiB); failures are statuses with file reasons."""

        async def work() -> sandbox_pb2.WriteFileResponse:
            check_container(request.container, "container")
            record = await self._lifecycle.record(request.sandbox_id)
            check_file_path(request.path, "path")
            await self._files.write_whole(record, request.path, request.content)
            return V.WriteFileResponse()

        return await self._run(context, work)

    async def ReadFile(
        self, request: sandbox_pb2.ReadFileRequest, context: Context
    ) -> sandbox_pb2.ReadFileResponse:
        """Read a whole file (at most 32 MiB; larger: FILE_TOO_LARGE with its size)."""

        async def work() -> sandbox_pb2.ReadFileResponse:
            check_container(request.container, "container")
            record = await self._lifecycle.record(request.sandbox_id)
            check_file_path(request.path, "path")
            return V.ReadFileResponse(content=await self._files.read_whole(record, request.path))

        return await self._run(context, work)

    # -- streams --------------------------------------------------------------------------

    async def StreamExec(
        self, request_iterator: AsyncIterator[sandbox_pb2.ExecStreamRequest], context: Context
    ) -> AsyncIterator[sandbox_pb2.ExecStreamResponse]:
        """See :meth:`V1Streams.stream_exec`."""
        frames = self._streams.stream_exec(request_iterator, context)
        async with contextlib.aclosing(frames):  # a client that leaves ends the relay at once
            async for frame in frames:
                yield frame

    async def StreamLogs(
        self, request: sandbox_pb2.StreamLogsRequest, context: Context
    ) -> AsyncIterator[sandbox_pb2.LogEntry]:
        """See :meth:`V1Streams.stream_logs`."""
        entries = self._streams.stream_logs(request, context)
        async with contextlib.aclosing(entries):
            async for entry in entries:
                yield entry

    # ConnectSandbox: no direct data plane here. UNIMPLEMENTED is the fallback code the
    # client expects (§11); it never looks the sandbox up, so it tells nobody anything.
    ConnectSandbox = unimplemented("direct_data_plane", "the direct mTLS data plane")
    Exec = unimplemented("unary_exec", "unary Exec (use StreamExec)")
    CreateSandboxFromTemplate = unimplemented("templates", "sandbox templates")
    CreateSandboxFromFile = unimplemented("compose_files", "creating sandboxes from files")
    GetSandboxBuildLogs = unimplemented("builds", "image builds")
    PurgeSandboxes = unimplemented("purge", "purging sandboxes")

    # -- file-system snapshots (snapshots.py does the work) ---------------------------------

    async def CreateFileSystemSnapshot(
        self, request: sandbox_pb2.CreateFileSystemSnapshotRequest, context: Context
    ) -> sandbox_pb2.FileSystemSnapshot:
        """Start a snapshot of the scratch volume; the CREATING record (the client polls)."""
        return await self._run(context, lambda: self._snapshots.create(request))

    async def GetFileSystemSnapshot(
        self, request: sandbox_pb2.GetFileSystemSnapshotRequest, context: Context
    ) -> sandbox_pb2.FileSystemSnapshot:
        """One snapshot of the caller's organization."""
        return await self._run(context, lambda: self._snapshots.get(request))

    async def ListFileSystemSnapshots(
        self, request: sandbox_pb2.ListFileSystemSnapshotsRequest, context: Context
    ) -> sandbox_pb2.ListFileSystemSnapshotsResponse:
        """The organization's snapshots, paged."""
        return await self._run(context, lambda: self._snapshots.list(request))

    async def DeleteFileSystemSnapshot(
        self, request: sandbox_pb2.DeleteFileSystemSnapshotRequest, context: Context
    ) -> sandbox_pb2.FileSystemSnapshot:
        """Remove a snapshot and its content."""
        return await self._run(context, lambda: self._snapshots.delete(request))
