"""The runner's table of sandboxes: their state, their watchers, and how their end is reported.

Why this is separate from command handling (``supervisor.py``): everything here happens
without a command — a main process exits, a maximum lifetime runs out, an ended sandbox's
retention expires, a restarted runner re-adopts what the backend kept running — and it is
what keeps the rules that commands rely on:

* **Terminal is reported once, before anything that depends on it.** A sandbox's end is
  reported by whichever sees it first (its watcher on ``backend.wait``, a stop, the lifetime)
  under a per-sandbox lock, and later reporters wait until that event was sent. So a stop
  can answer only after its ``COMPLETED`` event, which the control plane relies on.
* **Events may be lost; state may not.** Events go to whatever connection is current and a
  failed send is only logged: each (re)connect's ``Register`` carries :meth:`snapshot`, the
  state of every sandbox still here, ended ones with their exit code.
* **Reservations follow life.** A sandbox holds its ledger reservation from admission to its
  end (release is idempotent), and a recovered one reserves again, even over capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sandboxd.backends.base import Backend, SandboxState
from sandboxd.backends.errors import BackendError, SandboxNotFound
from sandboxd.runner import failures
from sandboxd.runner.records import RecordStore, RunnerRecord
from sandboxd.runner.resources import ReservationLedger
from sandboxd.runner.sandbox_state import STARTING, TERMINAL, Sandbox, describe_exit, event_of
from sandboxd.runner.spec_mapping import service_address
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["DEFAULT_RETAIN_EXITED_SECONDS", "LIFETIME_STOP_GRACE_SECONDS", "SandboxTable", "Send"]

_log = logging.getLogger(__name__)

Send = Callable[[runner_pb2.RunnerMessage], Awaitable[None]]
LOST_REASON = (
    "its processes died with their host (or were killed outside sandboxd): no exit status "
    "was recorded"
)
LIFETIME_STOP_GRACE_SECONDS = 10.0
DEFAULT_RETAIN_EXITED_SECONDS = 3600.0


class SandboxTable:
    """Sandboxes of one backend, watched until they end and forgotten after retention."""

    def __init__(
        self,
        backend: Backend,
        ledger: ReservationLedger,
        send: Send,
        *,
        records_dir: Path | None,
        retain_exited_seconds: float | None,
        public_host: str,
    ) -> None:
        self._backend = backend
        self._public_host = public_host  # names this host in service addresses
        self._ledger = ledger
        self._send = send
        self._records = RecordStore(records_dir)
        self._retain = retain_exited_seconds
        self._sandboxes: dict[str, Sandbox] = {}

    @property
    def backend(self) -> Backend:
        """The backend every command runs against."""
        return self._backend

    def get(self, sandbox_id: str) -> Sandbox | None:
        """What the supervisor knows about ``sandbox_id`` (for diagnostics and tests)."""
        return self._sandboxes.get(sandbox_id)

    def snapshot(self) -> list[runner_pb2.SandboxEvent]:
        """The state of every sandbox still here, for ``Register.sandboxes``."""
        return [event_of(sb) for sb in self._sandboxes.values() if sb.phase != STARTING]

    async def recover(self) -> list[str]:
        """At start-up: re-adopt what the backend still runs (and what ended meanwhile)."""
        records = {r.sandbox_id: r for r in self._records.load_all()}
        try:
            alive = await self._backend.recover()
        except BackendError as exc:
            _log.warning("backend %s cannot recover sandboxes: %s", self._backend.name, exc)
            return []
        except Exception:  # the runner must still join; the control plane marks them lost
            _log.exception("backend %s failed to recover sandboxes", self._backend.name)
            return []
        for sid in alive:
            # No record: created by a runner that kept none. A record not yet started: that
            # runner was killed between the backend's answer and its record (``_create``).
            record = records.pop(sid, None) or RunnerRecord(sid)
            if not record.started_at:
                record = self._record_of_started(record, await self._backend.state(sid))
                self._records.save(record)
            self._ledger.release(sid)
            self._ledger.reserve(sid, record.reservation, force=True)
            sb = Sandbox(sid, record, phase=await self._live_phase(sid))
            sb.changed_at = record.started_at
            sb.applied(record.generation)
            self._sandboxes[sid] = sb
            self._watch(sb)
        for sid, record in records.items():
            await self._recover_ended(sid, record)
        _log.info("recovered %d running sandbox(es)", len(alive))
        return alive

    def _record_of_started(self, record: RunnerRecord, state: SandboxState) -> RunnerRecord:
        """``record`` completed with when the sandbox started and where its ports are."""
        return dataclasses.replace(
            record,
            started_at=state.started_at or time.time(),
            service_address=service_address(state.ports, self._public_host),
            published_ports={p.container_port: p.host_port for p in state.ports},
        )

    async def _live_phase(self, sandbox_id: str) -> runner_pb2.SandboxPhase:
        """RUNNING, or PAUSED for a sandbox that was paused when the last runner stopped."""
        with contextlib.suppress(BackendError):
            if (await self._backend.state(sandbox_id)).paused:
                return runner_pb2.SANDBOX_PHASE_PAUSED
        return runner_pb2.SANDBOX_PHASE_RUNNING

    async def close(self) -> None:
        """Stop watching (runner shutdown); the sandboxes keep running for a later recover."""
        tasks = [t for sb in self._sandboxes.values() for t in sb.tasks()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, send: Send, message: runner_pb2.RunnerMessage) -> None:
        try:
            await send(message)
        except Exception as exc:  # not connected: Register carries the state later
            _log.info("could not send %s (%s)", message.WhichOneof("message"), exc)

    async def _emit(self, sb: Sandbox) -> None:
        await self._deliver(self._send, runner_pb2.RunnerMessage(event=event_of(sb)))

    def _require(self, sandbox_id: str, *, running: bool = False) -> Sandbox:
        sb = self._sandboxes.get(sandbox_id)
        # A sandbox still starting counts as running once its backend runs it.
        starting = sb is not None and sb.phase == STARTING
        if sb is None or (running and starting and not sb.backend_running):
            raise failures.sandbox_not_found(sandbox_id)
        if running and sb.phase == runner_pb2.SANDBOX_PHASE_PAUSED:
            raise failures.sandbox_paused(sandbox_id)
        if running and sb.phase != runner_pb2.SANDBOX_PHASE_RUNNING and not starting:
            raise failures.sandbox_not_running(sandbox_id)
        return sb

    async def _locked(self, sandbox_id: str) -> Sandbox:
        """The sandbox, once its lock is held (waits for a start in progress to finish)."""
        sb = self._require(sandbox_id)
        await sb.ops.acquire()
        if self._sandboxes.get(sandbox_id) is not sb:  # its start failed, or it was deleted
            sb.ops.release()
            raise failures.sandbox_not_found(sandbox_id)
        return sb

    def _watch(self, sb: Sandbox) -> None:
        sb.watcher = asyncio.create_task(self._wait_main(sb), name=f"watch-{sb.sandbox_id}")
        lifetime = sb.record.max_lifetime_seconds
        if lifetime > 0:
            delay = sb.record.started_at + lifetime - time.time()
            sb.timer = asyncio.create_task(
                self._expire_lifetime(sb, delay), name=f"lifetime-{sb.sandbox_id}"
            )

    async def _wait_main(self, sb: Sandbox) -> None:
        try:
            code = await self._backend.wait(sb.sandbox_id)
        except SandboxNotFound:
            return  # destroyed under us: delete reports for itself
        except BackendError as exc:
            await self._finish(sb, None, f"lost track of the sandbox: {exc}", failed=True)
            return
        reason = sb.stop_reason
        lost = False
        if reason is None:
            with contextlib.suppress(BackendError):
                exit_reason = (await self._backend.state(sb.sandbox_id)).reason
                lost = exit_reason == "lost"
                reason = LOST_REASON if lost else describe_exit(exit_reason)
        await self._finish(sb, None if lost else code, reason or "", failed=lost)

    async def _expire_lifetime(self, sb: Sandbox, delay: float) -> None:
        await asyncio.sleep(max(delay, 0.0))
        reason = f"max lifetime of {sb.record.max_lifetime_seconds} s reached"
        async with sb.ops:
            if sb.phase in TERMINAL or self._sandboxes.get(sb.sandbox_id) is not sb:
                return
            _log.info("sandbox %s: %s, stopping it", sb.sandbox_id, reason)
            sb.stop_reason = reason
            try:
                code = await self._backend.stop(sb.sandbox_id, LIFETIME_STOP_GRACE_SECONDS)
            except BackendError as exc:
                await self._finish(
                    sb, None, f"stopping at its max lifetime failed: {exc}", failed=True
                )
                return
            await self._finish(sb, code, reason)

    async def _finish(
        self, sb: Sandbox, code: int | None, reason: str, *, failed: bool = False
    ) -> None:
        """Record and report the sandbox's end exactly once; later callers wait for it."""
        async with sb.report:
            if sb.phase in TERMINAL:
                return
            phase = (
                runner_pb2.SANDBOX_PHASE_FAILED if failed else runner_pb2.SANDBOX_PHASE_COMPLETED
            )
            sb.set_phase(phase, exit_code=code, reason=reason)
            self._ledger.release(sb.sandbox_id)
            sb.cancel_timer()
            await self._emit(sb)
            if self._retain is not None:
                sb.timer = asyncio.create_task(
                    self._expire_retention(sb, self._retain), name=f"retain-{sb.sandbox_id}"
                )

    async def _expire_retention(self, sb: Sandbox, delay: float) -> None:
        await asyncio.sleep(delay)
        async with sb.ops:
            if self._sandboxes.get(sb.sandbox_id) is not sb:
                return
            with contextlib.suppress(SandboxNotFound):
                await self._backend.destroy(sb.sandbox_id)
            self._forget(sb)

    def _forget(self, sb: Sandbox) -> None:
        if self._sandboxes.get(sb.sandbox_id) is sb:
            del self._sandboxes[sb.sandbox_id]
        self._records.remove(sb.sandbox_id)
        self._ledger.release(sb.sandbox_id)
        sb.cancel_timer()
        if sb.watcher is not None and sb.watcher is not asyncio.current_task():
            sb.watcher.cancel()

    async def _recover_ended(self, sid: str, record: RunnerRecord) -> None:
        """A sandbox with a record that the backend did not report alive: ended or gone."""
        try:
            state = await self._backend.state(sid)
        except BackendError:
            self._records.remove(sid)
            return
        sb = Sandbox(sid, record)
        sb.applied(record.generation)
        # Killed with its build: the runner died before it recorded the start, and the
        # sandbox ended without a report of its own (PID 1 killed, or its keeper gone: a
        # half-built sandbox dies with its runner). It reads as never started, not as a
        # COMPLETED 137 or a sandbox whose host went down.
        cut_short = not record.started_at and state.reason in ("killed", "lost")
        if state.state != "exited" or cut_short:  # never started, or killed with its build
            sb.set_phase(runner_pb2.SANDBOX_PHASE_FAILED, reason="lost while the runner restarted")
        elif state.reason == "lost":  # no exit status: its processes died with the host
            sb.set_phase(runner_pb2.SANDBOX_PHASE_FAILED, reason=LOST_REASON)
        else:
            reason = describe_exit(state.reason)
            if state.reason == "lifetime":
                reason = f"max lifetime of {record.max_lifetime_seconds} s reached"
            sb.set_phase(
                runner_pb2.SANDBOX_PHASE_COMPLETED, exit_code=state.exit_code, reason=reason
            )
        sb.changed_at = state.finished_at or time.time()
        self._sandboxes[sid] = sb
        if self._retain is not None:
            sb.timer = asyncio.create_task(
                self._expire_retention(sb, self._retain), name=f"retain-{sid}"
            )
