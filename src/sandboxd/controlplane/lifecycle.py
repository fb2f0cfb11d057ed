"""What client calls do to sandboxes: record desired state.

Why no call drives a runner's lifecycle itself: Start, Stop and Delete only write what the
sandbox should be (``sandbox_model``), in one database write each, and the sandbox's runner
reconciler (``reconciler.py``) makes it so, now or when the runner comes back. So a client
call never leaves half-done work behind when the runner, the network or the control plane
fails in the middle; it only decides how long to wait for the outcome before answering.
Execs, logs and files go to the runner directly on operation streams (``operations.py``):
they change nothing the control plane keeps.

Tenancy lives here too: :meth:`Lifecycle.record` is the one lookup every public RPC that names
a sandbox goes through, and it answers another organization's sandbox exactly as it answers a
missing one, so no RPC, present or future, can tell them apart.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import grpc

from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.held_requests import encode_request
from sandboxd.controlplane.limits import MAX_FILE_PATH_CHARS
from sandboxd.controlplane.placement import place
from sandboxd.controlplane.quotas import Quotas
from sandboxd.controlplane.reconciler import Reconcilers
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import RunnerLink, runner_unavailable
from sandboxd.controlplane.sandbox_model import (
    Desired,
    Observed,
    SandboxRecord,
    give_up,
    new_sandbox_id,
    now,
    start_deadline,
)
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.sandbox_spec import build_spec, placed_fields
from sandboxd.controlplane.secrets import Secrets
from sandboxd.controlplane.start_moves import StartMoves
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.errors import ApiError, invalid_argument
from sandboxd_protocol.v1beta2 import gateway_pb2

log = logging.getLogger(__name__)
S = gateway_pb2
STOP_MARGIN_SECONDS = 15.0
START_WAIT_SECONDS = 60.0
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


def sandbox_paused(record: SandboxRecord) -> ApiError:
    """Exec, files or logs on a paused sandbox: refused at once (they would only wait)."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"sandbox {record.sandbox_id!r} is paused: resume it first",
        reason="CWSANDBOX_SANDBOX_PAUSED",
        metadata={"sandbox_id": record.sandbox_id, "status": "paused"},
    )


def file_too_large(path: str, size: int, cap: int) -> ApiError:
    """Over the unary cap: the client switches to streaming (v1beta2.md §6)."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"file {path!r} is {size} bytes, more than the {cap} bytes a unary call carries; "
        "use streaming",
        reason="CWSANDBOX_FILE_TOO_LARGE",
        metadata={"filepath": path, "size_bytes": str(size), "max_size_bytes": str(cap)},
    )


class Lifecycle:
    """Sandbox operations: each writes desired state, and waits only where the API must."""

    def __init__(
        self,
        registry: RunnerRegistry,
        records: SandboxRecords,
        quotas: Quotas,
        reconcilers: Reconcilers,
        secrets: Secrets | None = None,
        *,
        moves: StartMoves | None = None,
    ) -> None:
        self.registry = registry
        self.secrets = secrets
        self.records = records
        self.quotas = quotas
        self.reconcilers = reconcilers
        # The requests of starting sandboxes, for moving a start its runner failed (None:
        # starts are not moved). Its ``observe_record`` must see every record change.
        self.moves = moves

    async def record(self, sandbox_id: str) -> SandboxRecord:
        """The record with this id as the current caller may see it, else NOT_FOUND.

        Members see their own organization's sandboxes, admins every sandbox; a sandbox of
        another organization, or one being deleted, gets the very same error (code,
        message, reason, metadata) as an id that never existed.
        """
        if not sandbox_id.strip():
            raise invalid_argument("sandbox_id", "must not be empty")
        if len(sandbox_id) > MAX_ID_LENGTH:
            raise invalid_argument("sandbox_id", f"must be at most {MAX_ID_LENGTH} characters")
        caller = current_caller()
        record = await self.records.get(sandbox_id)
        if (
            record is None
            or record.desired is Desired.DELETED
            or not caller.can_see(record.owner_org)
        ):
            raise sandbox_not_found(sandbox_id)
        return record

    def reason_of(self, record: SandboxRecord) -> str:
        """The status reason a client reads, saying so when the sandbox's runner is away."""
        reason = record.status_reason
        if record.terminal:
            return reason
        runner = self.registry.get(record.runner_id)
        if runner is not None and self.registry.is_healthy(runner):
            return reason
        heard = runner.last_heartbeat_at if runner is not None else None
        when = (
            f"last heard from {heard.strftime('%Y-%m-%dT%H:%M:%SZ')}"
            if heard
            else "never heard from"
        )
        away = f"its runner {record.runner_id} is unreachable ({when})"
        return f"{away}; {reason}" if reason else away

    def link_for(self, record: SandboxRecord) -> RunnerLink:
        """The live connection to the runner that owns a sandbox."""
        runner = self.registry.get(record.runner_id)
        if runner is None or runner.link is None:
            raise runner_unavailable(record.runner_id, "it is not connected")
        return runner.link

    def running_link(self, record: SandboxRecord) -> RunnerLink:
        """Like :meth:`link_for`, for operations that need a RUNNING sandbox."""
        if record.paused:
            raise sandbox_paused(record)
        if record.status != S.SANDBOX_STATUS_RUNNING:
            raise sandbox_not_running(record)
        return self.link_for(record)

    async def start(self, request: SandboxRequest) -> SandboxRecord:
        """Place and record a sandbox (one database write); its reconciler starts it.

        Returns without waiting for RUNNING, except when ports are exposed: the response must
        carry the published ``service_address``, so Start then waits for the runner's answer.
        """
        owner = current_caller().organization
        if request.secrets:  # missing ones are refused before anything is reserved
            if self.secrets is None:
                raise invalid_argument("secret_stores", "this control plane has no secret stores")
            await self.secrets.check(owner, request.secrets)
        placement = place(self.registry, request)
        # No await from this check to records.add below: concurrent Starts cannot both fit.
        self.quotas.check_start(
            owner,
            self.records.usage(owner),
            placement.cpu_limit,
            placement.memory_limit,
            request.written,
        )
        sandbox_id = new_sandbox_id()
        spec = build_spec(sandbox_id, request, placement)
        created = now()
        record = SandboxRecord(
            sandbox_id=sandbox_id,
            owner_org=owner,
            tags=list(request.tags),
            exposed_ports=list(request.exposed_ports),
            created_at=created,
            start_deadline=start_deadline(created),
            start_request=encode_request(request),  # a move after a restart places it again
            **placed_fields(placement, spec),
        )
        # Held until the sandbox runs or ends: another runner may have to take it over.
        if self.moves is not None:
            self.moves.hold(sandbox_id, request)
        try:
            await self.records.add(record)  # the reconciler is kicked by the change
        except BaseException:
            if self.moves is not None:
                self.moves.release(sandbox_id)
            raise
        if not request.exposed_ports:
            return record
        done = await self.records.wait_for(
            sandbox_id, lambda r: r is None or r.observed is not Observed.NONE or r.terminal,
            START_WAIT_SECONDS,
        )  # fmt: skip
        return done or record

    async def stop(self, record: SandboxRecord, grace_seconds: int) -> None:
        """Stop a sandbox; returns once it ended (a terminal one is already stopped).

        The wish is recorded first, so it takes effect even if the runner is away now;
        then this waits for the end, and says UNAVAILABLE if it did not come in time.
        """
        if record.terminal:
            return
        await self.records.update(record.sandbox_id, lambda r: want_stopped(r, grace_seconds))
        ended = await self.records.wait_for(
            record.sandbox_id,
            lambda r: r is None or r.terminal,
            grace_seconds + STOP_MARGIN_SECONDS,
        )
        if ended is not None and not ended.terminal:
            raise runner_unavailable(
                record.runner_id,
                "the stop is recorded and takes effect when the runner answers",
            )

    async def delete(self, record: SandboxRecord) -> None:
        """Forget a sandbox for clients at once; its runner destroys it (now, or when back)."""
        await self.records.update(record.sandbox_id, want_deleted)
        runner = self.registry.get(record.runner_id)
        if runner is not None and runner.link is not None:  # answer once it is really gone
            await self.records.wait_for(
                record.sandbox_id, lambda r: r is None, record.stop_grace_seconds + 10
            )

    async def fail_runner_sandboxes(self, runner_id: str, reason: str) -> int:
        """Give up every live sandbox of a runner (it can no longer be trusted): FAILED."""
        live = [r for r in self.records.live_on(runner_id) if not r.terminal]
        for record in live:
            await self.records.update(
                record.sandbox_id, lambda r: give_up(r, reason) if not r.terminal else None
            )
        return len(live)


def want_stopped(record: SandboxRecord, grace_seconds: int) -> SandboxRecord | None:
    """Desired state: stopped (a new generation), unless already stopping or gone.

    A paused sandbox stops too: its runner thaws it first, so it gets its SIGTERM.
    """
    if record.stop_requested or record.terminal:
        return None
    return replace(
        record,
        desired=Desired.STOPPED,
        generation=record.generation + 1,
        stop_grace_seconds=max(0, grace_seconds),
    )


def want_deleted(record: SandboxRecord) -> SandboxRecord | None:
    """Desired state: deleted (a new generation)."""
    if record.desired is Desired.DELETED:
        return None
    return replace(record, desired=Desired.DELETED, generation=record.generation + 1)


def check_file_path(path: str, field: str = "filepath") -> None:
    """A path of the file API: absolute, without NUL, at most PATH_MAX characters.

    ``field`` is the request field that carries it (v1beta2 ``filepath``, v1 ``path``).
    """
    if not path.startswith("/"):
        raise invalid_argument(field, f"must be an absolute path (got {path!r})")
    if "\x00" in path:
        raise invalid_argument(field, "must not contain NUL characters")
    if len(path) > MAX_PATH_LENGTH:
        raise invalid_argument(field, f"must be at most {MAX_PATH_LENGTH} characters")
