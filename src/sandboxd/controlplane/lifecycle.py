"""Driving sandboxes on runners: start, stop, delete, files, and runner events.

Why one place: every status transition of a sandbox record happens here (from a client call or
from an event its runner reports), so the rules — terminal is final, exit code set together
with COMPLETED, reservations released exactly when a sandbox ends — are kept in one module.

Tenancy lives here too: :meth:`Lifecycle.record` is the one lookup every public RPC that names
a sandbox goes through, and it answers another organization's sandbox exactly as it answers a
missing one, so no RPC, present or future, can tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from cwsandbox._proto import gateway_pb2
from sandboxd._proto import runner_pb2
from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.limits import MAX_FILE_PATH_CHARS
from sandboxd.controlplane.placement import Placement, place
from sandboxd.controlplane.quotas import Quotas
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import RunnerLink, runner_unavailable
from sandboxd.controlplane.sandboxes import (
    SandboxRecord,
    SandboxTable,
    new_sandbox_id,
    now,
)
from sandboxd.controlplane.start_backoff import blames_runner
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.errors import ApiError, invalid_argument

log = logging.getLogger(__name__)
S = gateway_pb2
MAX_UNARY_FILE_BYTES = 32 * 1024 * 1024
STOP_MARGIN_SECONDS = 15.0
MAX_ID_LENGTH = 128
MAX_PATH_LENGTH = MAX_FILE_PATH_CHARS  # limits.py says why it fits the agent's message


def sandbox_not_found(sandbox_id: str) -> ApiError:
    """No sandbox with this id (never existed, or deleted)."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"sandbox {sandbox_id!r} not found",
        reason="CWSANDBOX_SANDBOX_NOT_FOUND",
        metadata={"sandbox_id": sandbox_id},
    )


def sandbox_not_running(record: SandboxRecord) -> ApiError:
    """An operation that needs a running sandbox, on one that is not."""
    status = S.SandboxStatus.Name(record.status).removeprefix("SANDBOX_STATUS_").lower()
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"sandbox {record.sandbox_id!r} is {status}, not running",
        reason="CWSANDBOX_SANDBOX_NOT_RUNNING",
        metadata={"sandbox_id": record.sandbox_id, "status": status},
    )


def file_too_large(path: str, size: int) -> ApiError:
    """Over the unary cap: the client switches to streaming (v1beta2.md §6)."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"file {path!r} is {size} bytes, more than the {MAX_UNARY_FILE_BYTES} bytes a unary "
        "call carries; use streaming",
        reason="CWSANDBOX_FILE_TOO_LARGE",
        metadata={
            "filepath": path,
            "size_bytes": str(size),
            "max_size_bytes": str(MAX_UNARY_FILE_BYTES),
        },
    )


def build_spec(
    sandbox_id: str, request: SandboxRequest, placement: Placement
) -> runner_pb2.SandboxSpec:
    """The runner's instructions: the request resolved against the chosen profile."""
    ceilings = placement.profile.quantities  # parsed once, when the configuration loaded
    return runner_pb2.SandboxSpec(
        sandbox_id=sandbox_id,
        image=placement.image,
        command=request.command,
        environment=request.environment,
        cpu_millicores=placement.cpu_limit,
        memory_bytes=placement.memory_limit,
        gpu_count=placement.gpu_count,
        gpu_type=placement.gpu_type,
        disk_bytes=placement.disk_bytes,
        pids_max=placement.pids_max,
        network=runner_pb2.NetworkPolicy(
            egress_mode=placement.egress_mode,
            egress_type=placement.egress_type.value,
            egress_cidrs=placement.egress_cidrs,
            ingress_mode=placement.ingress_mode,
            ingress_type=placement.ingress_type,
            exposed_ports=request.exposed_ports,
        ),
        mounted_files=[runner_pb2.MountedFile(path=p, content=c) for p, c in request.mounted_files],
        max_lifetime_seconds=placement.max_lifetime_seconds,
        profile_name=placement.profile.profile_name,
        reservation=runner_pb2.Reservation(
            cpu_millicores=placement.cpu_request,
            memory_bytes=placement.memory_request,
            gpu_count=placement.gpu_count,
        ),
        limits=runner_pb2.ProfileLimits(
            max_cpu_millicores=ceilings.max_cpu_millicores or 0,
            max_memory_bytes=ceilings.max_memory_bytes or 0,
            max_gpu_count=ceilings.max_gpu_count or 0,
            max_disk_bytes=ceilings.max_disk_bytes or 0,
            max_pids=ceilings.max_pids or 0,
            egress_types=ceilings.egress_types,
        ),
    )


class Lifecycle:
    """Sandbox operations that involve a runner, and the records they change."""

    def __init__(self, registry: RunnerRegistry, table: SandboxTable, quotas: Quotas) -> None:
        self.registry = registry
        self.table = table
        self.quotas = quotas
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, sandbox_id: str) -> SandboxRecord:
        """The record with this id as the current caller may see it, else NOT_FOUND.

        Members see their own organization's sandboxes, admins every sandbox; a sandbox of
        another organization gets the very same error (code, message, reason, metadata) as an
        id that never existed.
        """
        if not sandbox_id.strip():
            raise invalid_argument("sandbox_id", "must not be empty")
        if len(sandbox_id) > MAX_ID_LENGTH:
            raise invalid_argument("sandbox_id", f"must be at most {MAX_ID_LENGTH} characters")
        caller = current_caller()
        record = self.table.get(sandbox_id)
        if record is None or not caller.can_see(record.owner_org):
            raise sandbox_not_found(sandbox_id)
        return record

    @staticmethod
    def visible(record: SandboxRecord) -> bool:
        """Whether the current caller may see ``record`` (for listings)."""
        return current_caller().can_see(record.owner_org)

    def link_for(self, record: SandboxRecord) -> RunnerLink:
        """The live connection to the runner that owns a sandbox."""
        runner = self.registry.get(record.runner_id)
        if runner is None or runner.link is None:
            raise runner_unavailable(record.runner_id, "it is not connected")
        return runner.link

    def running_link(self, record: SandboxRecord) -> RunnerLink:
        """Like :meth:`link_for`, for operations that need a RUNNING sandbox."""
        if record.status not in (S.SANDBOX_STATUS_RUNNING, S.SANDBOX_STATUS_PAUSED):
            raise sandbox_not_running(record)
        return self.link_for(record)

    async def start(self, request: SandboxRequest) -> SandboxRecord:
        """Place and record a sandbox, then start it; returns without waiting for RUNNING.

        Only when ports are exposed does Start wait for the runner's answer, because the
        response must carry the published ``service_address``.
        """
        owner = current_caller().organization
        placement = place(self.registry, request)
        # No await from this check to table.add below: concurrent Starts cannot both fit.
        self.quotas.check_start(
            owner, self.table.usage(owner), placement.cpu_limit, placement.memory_limit
        )
        sandbox_id = new_sandbox_id()
        spec = build_spec(sandbox_id, request, placement)
        record = SandboxRecord(
            sandbox_id=sandbox_id,
            status=S.SANDBOX_STATUS_CREATING,
            runner_id=placement.runner.runner_id,
            runner_group_id=placement.runner.runner_group_id,
            profile_name=placement.profile.profile_name,
            image=placement.image,
            tags=list(request.tags),
            applied_egress_mode=placement.egress_mode,
            applied_ingress_mode=placement.ingress_mode,
            exposed_ports=list(request.exposed_ports),
            reserved_cpu_millicores=placement.cpu_request,
            reserved_memory_bytes=placement.memory_request,
            reserved_gpu_count=placement.gpu_count,
            owner_org=owner,
            cpu_limit_millicores=placement.cpu_limit,
            memory_limit_bytes=placement.memory_limit,
        )
        await self.table.add(record)
        launch = self._launch(record, spec)
        if request.exposed_ports:
            await launch
        else:
            task = asyncio.create_task(launch, name=f"start-{sandbox_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return record

    async def _launch(self, record: SandboxRecord, spec: runner_pb2.SandboxSpec) -> None:
        try:
            link = self.link_for(record)
            result = await link.call(runner_pb2.Command(start=runner_pb2.StartSandbox(spec=spec)))
        except ApiError as error:
            log.warning("sandbox %s failed to start: %s", record.sandbox_id, error.message)
            if blames_runner(error):  # placement backs off runners whose starts keep failing
                self.registry.note_start(record.runner_id, ok=False, reason=error.message)
            await self.table.update(
                record, status=S.SANDBOX_STATUS_FAILED, status_reason=error.message
            )
            return
        self.registry.note_start(record.runner_id, ok=True)
        changes: dict[str, object] = {"service_address": result.started.service_address}
        if record.status == S.SANDBOX_STATUS_CREATING:
            changes.update(status=S.SANDBOX_STATUS_RUNNING, started_at=now())
        await self.table.update(record, **changes)

    async def stop(self, record: SandboxRecord, grace_seconds: int) -> None:
        """Stop a sandbox; a terminal one is already stopped (success, nothing to do)."""
        if record.terminal:
            return
        await self.table.update(record, status=S.SANDBOX_STATUS_TERMINATING, stop_requested=True)
        try:
            link = self.link_for(record)
            await link.call(
                runner_pb2.Command(
                    stop=runner_pb2.StopSandbox(
                        sandbox_id=record.sandbox_id, grace_seconds=grace_seconds
                    )
                ),
                timeout=grace_seconds + STOP_MARGIN_SECONDS,
            )
        except ApiError as error:
            if error.reason == "CWSANDBOX_SANDBOX_NOT_FOUND":
                await self.table.update(
                    record,
                    status=S.SANDBOX_STATUS_FAILED,
                    status_reason="the runner no longer had this sandbox",
                )
                return
            raise
        # The runner's COMPLETED event carries the exit code; it precedes the stop result on
        # the same stream, so the record is terminal by now unless the event was lost.
        if not record.terminal:
            await self.table.update(
                record, status=S.SANDBOX_STATUS_TERMINATED, status_reason="stopped"
            )

    async def delete(self, record: SandboxRecord) -> None:
        """Stop if running, remove what the runner keeps, forget the record."""
        runner = self.registry.get(record.runner_id)
        if runner is not None and runner.link is not None:
            with contextlib.suppress(ApiError):
                await runner.link.call(
                    runner_pb2.Command(
                        delete=runner_pb2.DeleteSandbox(sandbox_id=record.sandbox_id)
                    ),
                    timeout=STOP_MARGIN_SECONDS,
                )
        elif not record.terminal:
            raise runner_unavailable(record.runner_id, "cannot stop the sandbox to delete it")
        await self.table.remove(record)

    async def write_file(self, record: SandboxRecord, path: str, contents: bytes) -> None:
        """AddFile on the runner, after checking path and size."""
        _check_path(path)
        if len(contents) > MAX_UNARY_FILE_BYTES:
            raise file_too_large(path, len(contents))
        link = self.running_link(record)
        await link.call(
            runner_pb2.Command(
                write_file=runner_pb2.WriteFile(
                    sandbox_id=record.sandbox_id, path=path, contents=contents
                )
            )
        )

    async def read_file(self, record: SandboxRecord, path: str) -> bytes:
        """RetrieveFile from the runner; files over the unary cap answer FILE_TOO_LARGE."""
        _check_path(path)
        link = self.running_link(record)
        result = await link.call(
            runner_pb2.Command(
                read_file=runner_pb2.ReadFile(
                    sandbox_id=record.sandbox_id, path=path, max_bytes=MAX_UNARY_FILE_BYTES
                )
            )
        )
        return result.file.contents

    async def fail_runner_sandboxes(self, runner_id: str, reason: str) -> int:
        """Mark every live sandbox of a runner FAILED (its runner can no longer be trusted)."""
        live = self.table.live_on(runner_id)
        for record in live:
            await self.table.update(record, status=S.SANDBOX_STATUS_FAILED, status_reason=reason)
        return len(live)

    # -- events from runners ------------------------------------------------------------

    async def on_event(self, runner_id: str, event: runner_pb2.SandboxEvent) -> None:
        """Apply a runner's report about one of its sandboxes."""
        record = self.table.get(event.sandbox_id)
        if record is None or record.runner_id != runner_id:
            return
        if event.phase == runner_pb2.SANDBOX_PHASE_RUNNING:
            if record.status == S.SANDBOX_STATUS_CREATING:
                await self.table.update(record, status=S.SANDBOX_STATUS_RUNNING, started_at=now())
        elif event.phase == runner_pb2.SANDBOX_PHASE_COMPLETED:
            await self.table.update(
                record,
                status=S.SANDBOX_STATUS_COMPLETED,
                exit_code=event.exit_code if event.HasField("exit_code") else None,
                status_reason=event.reason or ("stopped" if record.stop_requested else "exited"),
            )
        elif event.phase == runner_pb2.SANDBOX_PHASE_FAILED:
            await self.table.update(
                record, status=S.SANDBOX_STATUS_FAILED, status_reason=event.reason or "failed"
            )

    async def on_register(self, runner_id: str, reported: list[runner_pb2.SandboxEvent]) -> None:
        """Reconcile after a (re)connect: what the runner still runs against our records."""
        known = {event.sandbox_id for event in reported}
        runner = self.registry.get(runner_id)
        for event in reported:
            record = self.table.get(event.sandbox_id)
            if record is None or record.runner_id != runner_id:
                # An orphan (deleted here while its runner was away): remove it there too.
                if runner is not None and runner.link is not None:
                    runner.link.send(
                        runner_pb2.Command(
                            delete=runner_pb2.DeleteSandbox(sandbox_id=event.sandbox_id)
                        )
                    )
                continue
            if record.terminal and event.phase == runner_pb2.SANDBOX_PHASE_RUNNING:
                # Ended here (e.g. stopped while the runner was away): end it there too.
                if runner is not None and runner.link is not None:
                    runner.link.send(
                        runner_pb2.Command(
                            stop=runner_pb2.StopSandbox(sandbox_id=record.sandbox_id)
                        )
                    )
                continue
            await self.on_event(runner_id, event)
        for record in self.table.live_on(runner_id):
            if record.sandbox_id not in known and record.status != S.SANDBOX_STATUS_CREATING:
                await self.table.update(
                    record,
                    status=S.SANDBOX_STATUS_FAILED,
                    status_reason="lost: its runner restarted without it",
                )


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise invalid_argument("filepath", f"must be an absolute path (got {path!r})")
    if "\x00" in path:
        raise invalid_argument("filepath", "must not contain NUL characters")
    if len(path) > MAX_PATH_LENGTH:
        raise invalid_argument("filepath", f"must be at most {MAX_PATH_LENGTH} characters")
