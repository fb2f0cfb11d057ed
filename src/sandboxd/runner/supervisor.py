"""Commands from the control plane, run against a backend: start, stop, delete, files, exec, logs.

Why it is shaped this way:

* **Every command is its own task.** The agent's reader loop only calls :meth:`handle`, so a
  slow start or a long stop never delays the next command, a heartbeat or an exec
  (rule 2 of DESIGN.md). Per sandbox, lifecycle commands (start, stop, delete) and the
  lifetime expiry take one lock, so they apply in order; file operations and execs do not
  wait for them.
* **The runner owns policy, the backend owns processes** (rule 4): the profile re-check,
  the capacity ledger, the maximum lifetime and the status reporting live here and in
  ``sandbox_table.py``, on top of the narrow ``Backend`` interface.
* **Results go back where the command came from.** Request ids are unique only per
  connection, so each result is sent on the connection that carried its command (``reply``);
  a connection that is gone by then simply loses it, as the control plane has already
  failed that call.
* **Logs need no lock and no running sandbox.** A log stream reads what the backend keeps
  (also after the main process ended, until the sandbox is destroyed), so it goes straight
  to ``log_relay`` in its own task, like an exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc

from sandboxd._proto import runner_pb2
from sandboxd.backends.base import Backend, SandboxSpec
from sandboxd.backends.errors import BackendError, SandboxNotFound
from sandboxd.controlplane.limits import (
    MAX_FILE_PATH_CHARS,
    LimitExceeded,
    check_runner_exec,
    check_runner_spec,
)
from sandboxd.runner import failures
from sandboxd.runner.egress import ControlPlaneAddresses
from sandboxd.runner.exec_limits import (
    DEFAULT_MAX_EXECS_PER_SANDBOX,
    ExecSlots,
    raise_nofile_limit,
    runner_exec_budget,
)
from sandboxd.runner.exec_relay import ExecDialer, refuse_exec, relay_exec
from sandboxd.runner.failures import CommandFailed, failure, from_backend_error
from sandboxd.runner.log_relay import LogsDialer, relay_logs
from sandboxd.runner.recent_ids import RecentIds
from sandboxd.runner.records import RunnerRecord
from sandboxd.runner.resources import InsufficientCapacityError, ReservationLedger
from sandboxd.runner.sandbox_state import TERMINAL, Sandbox, event_of
from sandboxd.runner.sandbox_table import DEFAULT_RETAIN_EXITED_SECONDS, SandboxTable, Send
from sandboxd.runner.spec_mapping import (
    apply_limits,
    reservation_of,
    service_address,
    to_backend_spec,
)
from sandboxd.runner.warm_pool import WarmPools

__all__ = ["SandboxSupervisor", "Send"]

_log = logging.getLogger(__name__)

DELETE_STOP_GRACE_SECONDS = 5.0
OPENED_STREAMS_REMEMBERED = 4096
"""Exec and log stream ids remembered, so a resent open runs nothing twice."""


class SandboxSupervisor(SandboxTable):
    """Runs the control plane's commands against one backend; see the module docstring.

    ``send`` delivers events (and results when no ``reply`` is given) on the current
    connection; ``exec_dialer`` opens ``RunnerService.Exec`` for a stream id, hello sent, and
    ``logs_dialer`` likewise ``RunnerService.Logs`` (None: log requests go unanswered, and the
    control plane reports the runner unavailable for them).
    ``records_dir`` keeps the runner's per-sandbox policy across restarts (None: memory).
    ``public_host`` names this host in ``service_address`` for ports published on every
    interface (default: the hostname). Sandboxes that ended are destroyed after
    ``retain_exited_seconds`` (None: only on delete), so a runner whose clients never delete
    does not fill its disk; until then their logs and final state stay readable.
    ``control_plane`` (the runner's URL) is resolved and made unreachable from sandboxes,
    as are the ``egress_blocked`` CIDRs.
    At most ``max_execs_per_sandbox`` execs run at once in one sandbox, and no more on the
    whole runner than its open-files limit (raised to the hard limit here) has room for.
    """

    def __init__(
        self,
        backend: Backend,
        ledger: ReservationLedger,
        send: Send,
        exec_dialer: ExecDialer,
        *,
        records_dir: Path | None = None,
        public_host: str | None = None,
        retain_exited_seconds: float | None = DEFAULT_RETAIN_EXITED_SECONDS,
        logs_dialer: LogsDialer | None = None,
        control_plane: str | None = None,
        max_execs_per_sandbox: int = DEFAULT_MAX_EXECS_PER_SANDBOX,
        egress_blocked: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            backend,
            ledger,
            send,
            records_dir=records_dir,
            retain_exited_seconds=retain_exited_seconds,
        )
        self._dial = exec_dialer
        self._dial_logs = logs_dialer
        self._public_host = public_host or socket.gethostname()
        self._tasks: set[asyncio.Task[None]] = set()
        self._control_plane = ControlPlaneAddresses(control_plane) if control_plane else None
        self._egress_blocked = egress_blocked
        raise_nofile_limit()
        self._exec_slots = ExecSlots(max_execs_per_sandbox, runner_exec_budget())
        self._opened = RecentIds(OPENED_STREAMS_REMEMBERED)
        self._warm = WarmPools(backend, self._backend_spec)

    async def recover(self) -> list[str]:
        """Destroy the warm sandboxes a previous runner left, then re-adopt its sandboxes."""
        await self._warm.discard_leftovers()
        return await super().recover()

    async def close(self) -> None:
        """Stop supervising (runner shutdown); the sandboxes keep running for a later recover.

        Warm sandboxes are nobody's: they are destroyed.
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._warm.close()
        await super().close()

    def configure_warm_pools(self, pools: Sequence[runner_pb2.WarmPool]) -> None:
        """Keep the warm pools the control plane asked for (``Registered.warm_pools``)."""
        self._warm.configure(pools)

    def warm_pool_states(self) -> list[runner_pb2.WarmPoolState]:
        """Each warm pool's size and readiness, for heartbeats."""
        return self._warm.states()

    def handle(self, command: runner_pb2.Command, reply: Send | None = None) -> None:
        """Run ``command`` in its own task; its result goes to ``reply`` (default: ``send``).

        An exec or log stream id seen before is ignored: the control plane sends an open
        again on the runner's next connection when the one it first used died before the
        stream attached, and the first may have arrived after all. Running a command twice
        is never right.
        """
        kind = command.WhichOneof("action")
        if kind in ("exec", "logs") and self._opened.seen(getattr(command, kind).stream_id):
            return
        if kind == "exec":
            self._spawn(self._exec(command.exec), f"exec-{command.exec.stream_id}")
        elif kind == "logs":
            if self._dial_logs is not None:
                task = relay_logs(self._backend, command.logs, self._dial_logs)
                self._spawn(task, f"logs-{command.logs.stream_id}")
        else:
            self._spawn(self._answer(command, reply or self._send), f"command-{kind}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("runner task %s failed", task.get_name(), exc_info=task.exception())

    async def _answer(self, command: runner_pb2.Command, reply: Send) -> None:
        result = runner_pb2.CommandResult(request_id=command.request_id)
        kind = command.WhichOneof("action")
        sandbox_id = getattr(getattr(command, kind), "sandbox_id", "") if kind else ""
        try:
            if kind == "start":
                sandbox_id = command.start.spec.sandbox_id
                await self._start(command.start.spec, result, command.start.generation)
            elif kind == "stop":
                stop = command.stop
                grace = max(stop.grace_seconds, 0)
                result.state.CopyFrom(await self._stop(stop.sandbox_id, grace, stop.generation))
            elif kind == "delete":
                await self._delete(command.delete.sandbox_id, command.delete.generation)
                result.done.SetInParent()
            elif kind == "snapshot":
                result.snapshot.sandboxes.extend(self.snapshot())
            elif kind == "write_file":
                await self._write_file(command.write_file)
                result.done.SetInParent()
            elif kind == "read_file":
                result.file.contents = await self._read_file(command.read_file)
            else:
                raise CommandFailed(
                    failure(grpc.StatusCode.UNIMPLEMENTED, "", f"unknown command {kind!r}")
                )
        except CommandFailed as exc:
            result.failure.CopyFrom(exc.failure)
        except BackendError as exc:
            result.failure.CopyFrom(from_backend_error(exc, sandbox_id))
        except Exception as exc:
            _log.exception("%s of sandbox %s failed unexpectedly", kind, sandbox_id)
            message = f"{kind} failed on the runner: {type(exc).__name__}: {exc}"
            result.failure.CopyFrom(failure(grpc.StatusCode.INTERNAL, "", message))
        await self._deliver(reply, runner_pb2.RunnerMessage(result=result))

    async def _start(
        self, spec: runner_pb2.SandboxSpec, result: runner_pb2.CommandResult, generation: int
    ) -> None:
        sid = spec.sandbox_id
        if not sid:
            raise failures.invalid_argument("sandbox_id", "must not be empty")
        existing = self._sandboxes.get(sid)
        if existing is not None:  # a retried start (e.g. its result was lost) is answered again
            existing.applied(generation)
            async with existing.ops:
                if existing.phase != runner_pb2.SANDBOX_PHASE_RUNNING:
                    raise CommandFailed(
                        failure(
                            grpc.StatusCode.ALREADY_EXISTS,
                            "",
                            f"sandbox {sid!r} already exists on this runner",
                            sandbox_id=sid,
                        )
                    )
                result.started.CopyFrom(existing.started())
                return
        sb = Sandbox(sid, RunnerRecord(sid))
        sb.applied(generation)
        self._sandboxes[sid] = sb
        # Taken before any await, so a stop or delete that arrives meanwhile waits for us.
        async with sb.ops:
            try:
                await self._create(sb, spec)
            except BaseException:
                self._sandboxes.pop(sid, None)
                raise
            # RUNNING first; the watcher starts after it, so COMPLETED always comes later.
            await self._emit(sb)
            self._watch(sb)
        result.started.CopyFrom(sb.started())

    async def _create(self, sb: Sandbox, spec: runner_pb2.SandboxSpec) -> None:
        try:
            check_runner_spec(spec)  # the control plane checked these sizes too (limits.py)
        except LimitExceeded as exc:
            raise failures.invalid_argument(exc.field, exc.problem) from None
        reservation = reservation_of(spec)
        backend_spec = await self._backend_spec(spec)
        try:
            self._ledger.reserve(sb.sandbox_id, reservation)
        except InsufficientCapacityError as exc:
            raise CommandFailed(
                failure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED",
                    f"this runner has no room for the sandbox ({exc})",
                    resource=exc.resource,
                    requested=exc.requested,
                    available=exc.available,
                )
            ) from None
        created = False
        try:
            if await self._warm.claim(spec.profile_name, backend_spec):
                created = True  # and started, from the profile's warm pool
            else:
                await self._backend.create(backend_spec)
                created = True
                await self._backend.start(sb.sandbox_id)
            state = await self._backend.state(sb.sandbox_id)
        except BaseException:
            self._ledger.release(sb.sandbox_id)
            if created:
                with contextlib.suppress(BackendError):
                    await self._backend.destroy(sb.sandbox_id)
            raise
        sb.record = RunnerRecord(
            sb.sandbox_id,
            reservation=reservation,
            max_lifetime_seconds=spec.max_lifetime_seconds,
            started_at=state.started_at or time.time(),
            service_address=service_address(state.ports, self._public_host),
            published_ports={p.container_port: p.host_port for p in state.ports},
            generation=sb.generation,
        )
        self._records.save(sb.record)
        sb.set_phase(runner_pb2.SANDBOX_PHASE_RUNNING)

    async def _backend_spec(self, spec: runner_pb2.SandboxSpec) -> SandboxSpec:
        """The backend's spec: the profile's limits re-checked, the image, blocked CIDRs."""
        limits = apply_limits(spec)
        blocked = await self._control_plane.cidrs() if self._control_plane else ()
        blocked = (*blocked, *self._egress_blocked)
        return to_backend_spec(spec, limits, blocked=blocked)

    async def _stop(
        self, sandbox_id: str, grace: float, generation: int
    ) -> runner_pb2.SandboxEvent:
        """Stop the main process; the sandbox's state afterwards (its end, exit code)."""
        sb = await self._locked(sandbox_id)
        try:
            sb.applied(generation)
            if sb.phase in TERMINAL:
                await self._emit(sb)  # again: the first report may have been lost
                return event_of(sb)
            sb.stop_reason = "stopped"
            try:
                code = await self._backend.stop(sandbox_id, grace)
            except SandboxNotFound:
                await self._finish(sb, None, "the backend no longer had the sandbox", failed=True)
                self._forget(sb)
                raise
            await self._finish(sb, code, "stopped")
            return event_of(sb)
        finally:
            sb.ops.release()

    async def _delete(self, sandbox_id: str, generation: int) -> None:
        """Stop and destroy; nothing of the sandbox left (already) counts as success."""
        sb = self._sandboxes.get(sandbox_id)
        if sb is None:  # not supervised, but the backend may still hold its remains
            with contextlib.suppress(SandboxNotFound):
                await self._backend.destroy(sandbox_id)
            self._records.remove(sandbox_id)
            return
        sb.applied(generation)
        try:
            sb = await self._locked(sandbox_id)
        except CommandFailed:  # deleted (or its start failed) while we waited: gone
            return
        try:
            if sb.phase not in TERMINAL:
                sb.stop_reason = "stopped"
                with contextlib.suppress(SandboxNotFound):
                    code = await self._backend.stop(sandbox_id, DELETE_STOP_GRACE_SECONDS)
                    await self._finish(sb, code, "stopped")
            with contextlib.suppress(SandboxNotFound):
                await self._backend.destroy(sandbox_id)
            self._forget(sb)
        finally:
            sb.ops.release()

    async def _write_file(self, command: runner_pb2.WriteFile) -> None:
        self._require(command.sandbox_id, running=True)
        _check_path(command.path)
        try:
            await self._backend.write_file(
                command.sandbox_id, command.path, command.contents, make_parents=True
            )
        except BackendError as exc:
            raise CommandFailed(
                from_backend_error(exc, command.sandbox_id, path=command.path)
            ) from None

    async def _read_file(self, command: runner_pb2.ReadFile) -> bytes:
        self._require(command.sandbox_id, running=True)
        _check_path(command.path)
        if command.max_bytes < 0:
            raise failures.invalid_argument("max_bytes", "must not be negative")
        try:
            return await self._backend.read_file(
                command.sandbox_id, command.path, max_bytes=command.max_bytes or None
            )
        except BackendError as exc:
            raise CommandFailed(
                from_backend_error(exc, command.sandbox_id, path=command.path)
            ) from None

    async def _exec(self, command: runner_pb2.OpenExec) -> None:
        try:
            self._require(command.sandbox_id, running=True)
        except CommandFailed as exc:
            code = exc.failure.reason.removeprefix("CWSANDBOX_")
            await refuse_exec(self._dial, command.stream_id, code, exc.failure.message)
            return
        if not command.command:
            await refuse_exec(
                self._dial, command.stream_id, "INVALID_ARGUMENT", "command must not be empty"
            )
            return
        try:
            check_runner_exec(command)  # so a control plane bug cannot overrun the agent
        except LimitExceeded as exc:
            await refuse_exec(self._dial, command.stream_id, "INVALID_ARGUMENT", str(exc))
            return
        refusal = self._exec_slots.acquire(command.sandbox_id)
        if refusal is not None:
            await refuse_exec(self._dial, command.stream_id, *refusal)
            return
        try:
            await relay_exec(self._backend, command, self._dial)
        finally:
            self._exec_slots.release(command.sandbox_id)


def _check_path(path: str) -> None:
    if not path.startswith("/") or "\x00" in path:
        raise failures.invalid_argument("path", f"must be an absolute path (got {path[:80]!r})")
    if len(path) > MAX_FILE_PATH_CHARS:  # as the control plane checks (limits.py)
        raise failures.invalid_argument("path", f"must be at most {MAX_FILE_PATH_CHARS} characters")
