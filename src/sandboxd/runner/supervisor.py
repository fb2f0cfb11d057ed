"""The control plane's work, run against a backend: lifecycle commands and operations.

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
* **Operations (exec, logs, files) arrive on streams of their own** (``operations.py``),
  bound by the control plane with their first frame, never on the control stream; each runs
  in its stream's task and takes no lifecycle lock. A log stream reads what the backend
  keeps (also after the main process ended, until the sandbox is destroyed), so it needs no
  running sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from sandboxd.backends.base import Backend, SandboxSpec
from sandboxd.backends.errors import BackendError, InvalidSpec, SandboxNotFound
from sandboxd.controlplane.limits import (
    MAX_FILE_PATH_CHARS,
    LimitExceeded,
    check_runner_exec,
    check_runner_spec,
)
from sandboxd.runner import failures
from sandboxd.runner.create_slots import default_concurrent_creates
from sandboxd.runner.egress import ControlPlaneAddresses
from sandboxd.runner.exec_limits import (
    DEFAULT_MAX_EXECS_PER_SANDBOX,
    ExecSlots,
    raise_nofile_limit,
    runner_exec_budget,
)
from sandboxd.runner.exec_relay import CALL_ERRORS, OperateCall, end_call, refuse_exec, relay_exec
from sandboxd.runner.failures import CommandFailed, failure, from_backend_error
from sandboxd.runner.file_frames import WriteCut, data_frames, send_data
from sandboxd.runner.log_relay import refuse_logs, relay_logs
from sandboxd.runner.recent_ids import RecentIds
from sandboxd.runner.records import RunnerRecord
from sandboxd.runner.resources import InsufficientCapacityError, ReservationLedger
from sandboxd.runner.sandbox_state import LIVE, TERMINAL, Sandbox, event_of
from sandboxd.runner.sandbox_table import DEFAULT_RETAIN_EXITED_SECONDS, SandboxTable, Send
from sandboxd.runner.scratch_transfers import ScratchTransfers
from sandboxd.runner.spec_mapping import (
    apply_limits,
    reservation_of,
    to_backend_spec,
    volume_source,
)
from sandboxd.runner.start_arrivals import StartArrivals
from sandboxd.runner.warm_pool import WarmPools
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["SandboxSupervisor", "Send"]

_log = logging.getLogger(__name__)

DELETE_STOP_GRACE_SECONDS = 5.0
OPENED_STREAMS_REMEMBERED = 4096
"""Operation stream ids remembered, so an open bound again runs nothing twice."""
_RUN_ONCE = "it was bound again after its first stream was lost, and may have run already"
_NO_VOLUMES = failure(
    grpc.StatusCode.FAILED_PRECONDITION,
    "CWSANDBOX_VOLUME_RUNNER_INELIGIBLE",
    "this runner's backend has no persistent volumes",
)


class SandboxSupervisor(SandboxTable):
    """Runs the control plane's commands against one backend; see the module docstring.

    ``send`` delivers events (and results when no ``reply`` is given) on the current
    connection; :meth:`operate` runs an operation bound to one of the runner's ``Operate``
    calls (the agent's pool hands them over).
    ``records_dir`` keeps the runner's per-sandbox policy across restarts (None: memory).
    ``public_host`` names this host in ``service_address`` for ports published on every
    interface (default: the hostname). Sandboxes that ended are destroyed after
    ``retain_exited_seconds`` (None: only on delete), so a runner whose clients never delete
    does not fill its disk; until then their logs and final state stay readable.
    ``control_plane`` (the runner's URL) is resolved and made unreachable from sandboxes,
    as are the ``egress_blocked`` CIDRs.
    At most ``max_execs_per_sandbox`` execs run at once in one sandbox, and no more on the
    whole runner than its open-files limit (raised to the hard limit here) has room for.
    The backend builds at most ``max_concurrent_creates`` cold creates at once (default
    :func:`~sandboxd.runner.create_slots.default_concurrent_creates`); the rest wait their
    turn in arrival order.
    """

    def __init__(
        self,
        backend: Backend,
        ledger: ReservationLedger,
        send: Send,
        *,
        records_dir: Path | None = None,
        public_host: str | None = None,
        retain_exited_seconds: float | None = DEFAULT_RETAIN_EXITED_SECONDS,
        control_plane: str | None = None,
        max_execs_per_sandbox: int = DEFAULT_MAX_EXECS_PER_SANDBOX,
        max_concurrent_creates: int | None = None,
        egress_blocked: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            backend,
            ledger,
            send,
            records_dir=records_dir,
            retain_exited_seconds=retain_exited_seconds,
            public_host=public_host or socket.gethostname(),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._control_plane = ControlPlaneAddresses(control_plane) if control_plane else None
        self._egress_blocked = egress_blocked
        raise_nofile_limit()
        self._exec_slots = ExecSlots(max_execs_per_sandbox, runner_exec_budget())
        creates = max_concurrent_creates or default_concurrent_creates()
        self._create_slots = asyncio.Semaphore(creates)
        self._opened = RecentIds(OPENED_STREAMS_REMEMBERED)
        self._arrivals = StartArrivals(self._sandboxes.get)
        self._warm = WarmPools(backend, self._backend_spec)
        restores = records_dir.parent / "scratch-restores" if records_dir else None
        self._scratch = ScratchTransfers(backend, restores)

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
        """Run ``command`` in its own task; its result goes to ``reply`` (default: ``send``)."""
        kind = command.WhichOneof("action")
        self._spawn(self._answer(command, reply or self._send), f"command-{kind}")

    async def operate(self, first: runner_pb2.OperationDown, call: OperateCall) -> None:
        """Run the operation bound to ``call`` by its ``first`` frame, until it is over.

        A stream id seen before is refused: the control plane binds an operation again on
        the runner's next connection when the stream it first used died before the runner
        answered, and the first may have arrived after all. Running it twice is never right.
        It runs in the caller's task (``operations.OperationPool``'s, one per bound call), which
        the supervisor holds meanwhile, so :meth:`close` ends it (and kills an exec). Why not a
        task of its own, as commands get: the caller only waits for it, and a task more cost
        each exec three more turns of the event loop.
        """
        task = asyncio.current_task()  # an Operate call's
        if task is not None:
            self._tasks.add(task)
        try:
            await self._operate(first, call)  # its failure is the caller's to log
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _operate(self, first: runner_pb2.OperationDown, call: OperateCall) -> None:
        kind = first.WhichOneof("frame")
        if kind == "exec":
            if self._opened.seen(first.exec.stream_id):
                await refuse_exec(call, "RUNNER_UNAVAILABLE", f"exec not run: {_RUN_ONCE}")
            else:
                await self._exec(first.exec, call)
        elif kind == "logs":
            if self._opened.seen(first.logs.stream_id):
                await refuse_logs(call, "RUNNER_UNAVAILABLE", f"logs not served: {_RUN_ONCE}")
            else:
                await relay_logs(self._backend, first.logs, call)
        elif kind == "scratch_archive":
            await self._scratch.send_archive(first.scratch_archive, call)
        elif kind == "scratch_restore":
            try:
                done = await self._scratch.stage(first.scratch_restore, data_frames(call))
            except (WriteCut, *CALL_ERRORS) as exc:
                _log.info("restore archive for %s cut (%s)", first.scratch_restore.sandbox_id, exc)
                self._scratch.discard_files(first.scratch_restore.sandbox_id)
                return
            await self._file_done(call, done)
        elif kind in ("write_file", "read_file"):
            op = getattr(first, kind)
            if self._opened.seen(op.stream_id):
                message = f"file operation not run: {_RUN_ONCE}"
                fail = failure(grpc.StatusCode.UNAVAILABLE, "CWSANDBOX_RUNNER_UNAVAILABLE", message)
                await self._file_done(call, runner_pb2.FileDone(failure=fail))
            elif kind == "write_file":
                await self._write_file(first.write_file, call)
            else:
                await self._read_file(first.read_file, call)
        else:
            _log.warning("operation stream bound with %r first; ended", kind)
            call.cancel()

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
            elif kind in ("pause", "resume"):
                op = command.pause if kind == "pause" else command.resume
                event = await self._set_paused(op.sandbox_id, kind == "pause", op.generation)
                result.state.CopyFrom(event)
            elif kind == "snapshot":
                result.snapshot.sandboxes.extend(self.snapshot())
            elif kind == "usage":
                result.usage.CopyFrom(await self._usage(command.usage.sandbox_id))
            elif kind == "prepare_volume":
                await self._prepare_volume(command.prepare_volume)
                result.done.SetInParent()
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

    async def _usage(self, sandbox_id: str) -> runner_pb2.SandboxUsage:
        """A live sandbox's cgroup numbers; NOT_FOUND for one this runner does not run."""
        sb = self._sandboxes.get(sandbox_id)
        if sb is None or sb.phase not in LIVE:
            why = f"sandbox {sandbox_id!r} is not running here"
            raise CommandFailed(failure(grpc.StatusCode.NOT_FOUND, "", why))
        stats = await self._backend.stats(sandbox_id)
        return runner_pb2.SandboxUsage(
            cpu_seconds=stats.cpu_seconds,
            memory_bytes=stats.memory_bytes,
            memory_peak_bytes=stats.memory_peak_bytes,
            pids=stats.pids,
            oom_kills=stats.oom_kills,
            disk_bytes=stats.disk_bytes,
        )

    async def _start(
        self, spec: runner_pb2.SandboxSpec, result: runner_pb2.CommandResult, generation: int
    ) -> None:
        sid = spec.sandbox_id
        if not sid:
            raise failures.invalid_argument("sandbox_id", "must not be empty")
        while (existing := self._sandboxes.get(sid)) is not None:
            # A retried start (its result was lost, e.g. with the control plane) is answered
            # again once the first is done. If the first failed, its sandbox is gone and this
            # one is a new try (loop): answering "already exists" made the control plane ask
            # for a snapshot and try again 2 s later.
            existing.applied(generation)
            async with existing.ops:
                if self._sandboxes.get(sid) is not existing:
                    continue
                if existing.phase not in LIVE:
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
        # Taken before any await, so a stop or delete that arrives meanwhile waits for us,
        # and so does an exec that came first (its waiter runs only after this task yields).
        async with sb.ops:
            self._arrivals.arrived(sid)
            try:
                await self._create(sb, spec)
            except BaseException:
                self._sandboxes.pop(sid, None)
                sb.settled.set()  # its waiting execs find it gone
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
        if backend_spec.volumes and not self._backend.supports_volumes:
            raise CommandFailed(_NO_VOLUMES)
        if spec.HasField("scratch"):
            try:
                scratch = await self._scratch.scratch_spec(spec)
            except BaseException:
                self._scratch.discard(sb.sandbox_id)
                raise
            backend_spec = dataclasses.replace(backend_spec, scratch=scratch)
            if backend_spec.scratch is not None and not self._backend.supports_scratch:
                raise CommandFailed(
                    failure(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "CWSANDBOX_FSS_NOT_SUPPORTED",
                        "this runner's backend has no scratch file systems",
                    )
                )
        try:
            self._ledger.reserve(sb.sandbox_id, reservation)
        except InsufficientCapacityError as exc:
            raise CommandFailed(
                failure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    failures.RUNNER_CAPACITY_EXHAUSTED,
                    f"this runner has no room for the sandbox ({exc})",
                    resource=exc.resource,
                    requested=exc.requested,
                    available=exc.available,
                )
            ) from None
        # Saved before the backend makes anything: a runner killed between the backend's
        # answer and the record below still knows the sandbox's reservation, lifetime and
        # generation when it adopts the sandbox after its restart (``recover``).
        sb.record = RunnerRecord(
            sb.sandbox_id,
            reservation=reservation,
            max_lifetime_seconds=spec.max_lifetime_seconds,
            generation=sb.generation,
        )  # started_at 0: not started yet
        created = False
        try:
            self._records.save(sb.record)
            if await self._warm.claim(spec.profile_name, backend_spec):
                created = True  # and started, from the profile's warm pool
            else:  # a failed create_and_start leaves nothing behind
                async with self._create_slots:  # a burst's builds take turns (create_slots.py)
                    await self._backend.create_and_start(backend_spec)
                created = True
            sb.backend_started()  # waiting execs go now; what follows is bookkeeping
            await asyncio.sleep(0)  # let them send their command before we go on
            state = await self._backend.state(sb.sandbox_id)
        except BaseException:
            self._scratch.discard(sb.sandbox_id)
            self._ledger.release(sb.sandbox_id)
            self._records.remove(sb.sandbox_id)
            if created:
                with contextlib.suppress(BackendError):
                    await self._backend.destroy(sb.sandbox_id)
            raise
        self._scratch.discard(sb.sandbox_id)  # the staged restore archive, if any, is used
        sb.record = self._record_of_started(sb.record, state)
        self._records.save(sb.record)
        sb.set_phase(runner_pb2.SANDBOX_PHASE_RUNNING)

    async def _prepare_volume(self, prepare: runner_pb2.PrepareVolume) -> None:
        """Make or find a persistent volume's directory (``Backend.prepare_volume``)."""
        if not self._backend.supports_volumes:
            raise CommandFailed(_NO_VOLUMES)
        try:
            source = volume_source(prepare.source)
        except InvalidSpec as exc:
            raise failures.invalid_argument(
                exc.field, str(exc).removeprefix(f"{exc.field}: ")
            ) from None
        await self._backend.prepare_volume(source, create=prepare.create)

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

    async def _set_paused(
        self, sandbox_id: str, paused: bool, generation: int
    ) -> runner_pb2.SandboxEvent:
        """Freeze or thaw the sandbox (idempotent); its state afterwards.

        The generation is applied together with the new phase, after the backend did it, so
        no report ever pairs this command's generation with the phase before it; a command
        older than what the sandbox already applied (a late pause after a resume) is stale
        and changes nothing. The generation is saved, so a restarted runner reports it.
        """
        sb = await self._locked(sandbox_id)
        try:
            if sb.phase in TERMINAL or generation < sb.generation:
                return event_of(sb)
            if paused:
                await self._backend.pause(sandbox_id)
            else:
                await self._backend.resume(sandbox_id)
            sb.applied(generation)
            sb.set_phase(
                runner_pb2.SANDBOX_PHASE_PAUSED if paused else runner_pb2.SANDBOX_PHASE_RUNNING
            )
            sb.record = replace(sb.record, generation=sb.generation)
            self._records.save(sb.record)
            await self._emit(sb)
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

    @staticmethod
    async def _file_done(call: OperateCall, done: runner_pb2.FileDone) -> None:
        with contextlib.suppress(*CALL_ERRORS):
            await call.write(runner_pb2.OperationUp(done=done))
        await end_call(call)

    async def _write_file(self, command: runner_pb2.OpenFileWrite, call: OperateCall) -> None:
        """Write the ``data`` frames into the file in constant memory; answer one ``done``."""
        sid, path = command.sandbox_id, command.path
        try:
            self._require(sid, running=True)
            _check_path(path)
            size = await self._backend.write_file_stream(
                sid, path, data_frames(call), make_parents=True
            )
            done = runner_pb2.FileDone(size=size)
        except CommandFailed as exc:
            done = runner_pb2.FileDone(failure=exc.failure)
        except BackendError as exc:
            done = runner_pb2.FileDone(failure=from_backend_error(exc, sid, path=path))
        except (WriteCut, *CALL_ERRORS) as exc:
            _log.info("write of %s in %s: the stream ended early (%s)", path, sid, exc)
            return
        await self._file_done(call, done)

    async def _read_file(self, command: runner_pb2.OpenFileRead, call: OperateCall) -> None:
        """``opened``, the file's bytes as ``data`` frames, then ``done`` (or its failure)."""
        sid, path = command.sandbox_id, command.path
        sent = 0
        try:
            self._require(sid, running=True)
            _check_path(path)
            if command.max_bytes < 0:
                raise failures.invalid_argument("max_bytes", "must not be negative")
            reader = await self._backend.open_file(sid, path, max_bytes=command.max_bytes or None)
            async with contextlib.aclosing(reader):
                opened = runner_pb2.FileOpened(size=reader.size)
                await call.write(runner_pb2.OperationUp(opened=opened))
                async for chunk in reader:
                    await send_data(call, chunk)
                    sent += len(chunk)
            done = runner_pb2.FileDone(size=sent)
        except CommandFailed as exc:
            done = runner_pb2.FileDone(size=sent, failure=exc.failure)
        except BackendError as exc:
            done = runner_pb2.FileDone(size=sent, failure=from_backend_error(exc, sid, path=path))
        except CALL_ERRORS as exc:
            _log.info("read of %s in %s: the stream ended early (%s)", path, sid, exc)
            return
        await self._file_done(call, done)

    async def _exec(self, command: runner_pb2.OpenExec, call: OperateCall) -> None:
        if command.wait_start:
            await self._arrivals.settled(command.sandbox_id)
        try:
            self._require(command.sandbox_id, running=True)
        except CommandFailed as exc:
            code = exc.failure.reason.removeprefix("CWSANDBOX_")
            await refuse_exec(call, code, exc.failure.message)
            return
        if not command.command:
            await refuse_exec(call, "INVALID_ARGUMENT", "command must not be empty")
            return
        try:
            check_runner_exec(command)  # so a control plane bug cannot overrun the agent
        except LimitExceeded as exc:
            await refuse_exec(call, "INVALID_ARGUMENT", str(exc))
            return
        refusal = self._exec_slots.acquire(command.sandbox_id)
        if refusal is not None:
            await refuse_exec(call, *refusal)
            return
        try:
            await relay_exec(self._backend, command, call)
        finally:
            self._exec_slots.release(command.sandbox_id)


def _check_path(path: str) -> None:
    if not path.startswith("/") or "\x00" in path:
        raise failures.invalid_argument("path", f"must be an absolute path (got {path[:80]!r})")
    if len(path) > MAX_FILE_PATH_CHARS:  # as the control plane checks (limits.py)
        raise failures.invalid_argument("path", f"must be at most {MAX_FILE_PATH_CHARS} characters")
