"""Reconcilers: one per runner, bringing what its sandboxes are to what they should be.

Why level-triggered (Kubernetes controllers, Nomad's allocation reconciler): a reconciler
never remembers what it meant to do; each pass reads the records of its runner's unsettled
sandboxes, asks :func:`sandbox_model.decide` for the next step, and sends that step as an
idempotent, generation-tagged command. It runs on every runner event, (re)registration,
desired-state change, and a periodic resync (which also asks the runner for a snapshot of
everything it holds), so a lost message, a crashed control plane or a runner that was away
only delays convergence. Commands in flight are not sent twice until they time out; a
runner's answers and reports only ever update observed state.

Positive evidence before destruction (DESIGN.md rule 11): a sandbox a runner reports that no
record here owns is destroyed only if a tombstone says this control plane deleted it;
otherwise it is an *orphan*, recorded for administrators and left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import grpc

from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import RunnerLink
from sandboxd.controlplane.sandbox_model import (
    ENDED,
    STARTED,
    Action,
    Observed,
    Report,
    SandboxRecord,
    decide,
    give_up,
    now,
    observe,
    pause_refused,
    report_of,
)
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.controlplane.secrets import Secrets
from sandboxd.controlplane.start_backoff import blames_runner
from sandboxd.errors import ApiError
from sandboxd.store.sandbox_store import Orphan
from sandboxd_protocol.sandboxd_v1 import runner_pb2

log = logging.getLogger(__name__)

RESYNC_SECONDS = 30.0
"""A full pass, with a snapshot from the runner, at least this often."""
RESEND_SECONDS = 30.0
"""A command without an answer this long is sent again (they are idempotent)."""
START_COMMAND_SECONDS = 90.0
PAUSE_COMMAND_SECONDS = 30.0
"""Freezing waits for tasks in uninterruptible sleep, up to 10 s on the runner."""
STOP_MARGIN_SECONDS = 15.0
RETRY_SECONDS = 2.0
"""A command that failed without progress is sent again after this long, not at once."""
SNAPSHOT_RETRY_SECONDS = (1.0, 30.0)
"""A snapshot that could not be stored is asked for again after 1 s, doubling up to 30 s."""
RECHECK_SECONDS = 1.0
"""A snapshot that left a sandbox undecided (``apply_snapshot``) is followed by another."""
LOST_REASON = "lost: its runner no longer has it"

StartNote = Callable[[str, bool, str], None]
MoveStart = Callable[[SandboxRecord, ApiError], Awaitable[bool]]
"""Moves a start its runner failed to another runner (``StartMoves.move``): True if moved."""


@dataclass(frozen=True)
class InFlight:
    """A command sent and not yet answered."""

    action: Action
    generation: int
    link: RunnerLink
    sent: float
    # Set when the command failed: it is not sent again before this (monotonic) time.
    retry_at: float | None = None


class NoProgress(Exception):
    """A command was answered but changed nothing here; it is retried after a pause."""


class RunnerReconciler:
    """Reconciles the sandboxes of one runner (one asyncio task)."""

    def __init__(
        self,
        runner_id: str,
        records: SandboxRecords,
        registry: RunnerRegistry,
        note_start: StartNote,
        secrets: Secrets | None = None,
        *,
        move_start: MoveStart | None = None,
    ) -> None:
        self.runner_id = runner_id
        self._records = records
        self._registry = registry
        self._note_start = note_start
        self._secrets = secrets
        self._move_start = move_start
        self._wake = asyncio.Event()
        self._inflight: dict[str, InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._snapshot_due = True
        # While the database refuses what snapshots bring, they are not asked for before this
        # (monotonic) time: an outage must not become a loop of round trips and log lines.
        self._snapshot_not_before = 0.0
        self._snapshot_delay = SNAPSHOT_RETRY_SECONDS[0]
        # Reports counted as they are applied, and each sandbox's latest, so that a snapshot
        # never calls lost a sandbox reported after it was asked for (apply_snapshot).
        self._reports = 0
        self._reported_at: dict[str, int] = {}
        self._asked: list[int] = []  # the report count when each pending snapshot was asked
        self._full = True
        self._dirty: set[str] = set()
        self._task = asyncio.create_task(self._loop(), name=f"reconcile-{runner_id}")

    @property
    def snapshots_asked(self) -> int:
        """Snapshots asked of the runner whose answers are not applied yet."""
        return len(self._asked)

    @property
    def pending(self) -> int:
        """Sandboxes marked for this reconciler's next pass."""
        return len(self._dirty)

    def kick(self, sandbox_id: str | None = None, snapshot: bool = False) -> None:
        """Reconcile soon (coalesced): one sandbox, or all of them when ``sandbox_id`` is None.

        With ``snapshot``, the runner is asked for a snapshot of everything it holds first.
        """
        self._snapshot_due = self._snapshot_due or snapshot
        if sandbox_id is None:
            self._full = True
        else:
            self._dirty.add(sandbox_id)
        self._wake.set()

    async def close(self) -> None:
        """Stop reconciling (control-plane shutdown)."""
        for task in (self._task, *self._tasks):
            task.cancel()
        await asyncio.gather(self._task, *self._tasks, return_exceptions=True)

    def _link(self) -> RunnerLink | None:
        state = self._registry.get(self.runner_id)
        return state.link if state is not None else None

    async def _loop(self) -> None:
        while True:
            try:
                # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that
                # races with the event, and close() would then wait forever.
                async with asyncio.timeout(RESYNC_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                self._snapshot_due = self._full = True
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:  # a pass must never end the loop; the next one retries
                log.exception("reconciling runner %s failed", self.runner_id)

    async def reconcile(self) -> None:
        """One pass over the runner's unsettled sandboxes (or only the ones kicked)."""
        link = self._link()
        if link is not None and self._snapshot_due:
            wait = self._snapshot_not_before - time.monotonic()
            if wait <= 0:
                self._snapshot_due = False
                self._spawn(self._request_snapshot(link))
        at = now()
        if self._full:
            self._full = False
            self._dirty.clear()
            records = self._records.live_on(self.runner_id)
        else:
            dirty, self._dirty = self._dirty, set()
            found = (self._records.cached(sid) for sid in dirty)
            records = [r for r in found if r is not None and r.runner_id == self.runner_id]
        for record in records:
            await self._step(record, link, at)

    async def _step(self, record: SandboxRecord, link: RunnerLink | None, at: datetime) -> None:
        action = decide(record, at)
        if action is Action.GIVE_UP:
            seconds = (record.start_deadline - record.created_at).total_seconds()  # type: ignore[operator]
            why = f"did not start within {seconds:.0f} s"
            if link is None:
                why += f": its runner {self.runner_id} was unreachable"
            updated = await self._records.update(
                record.sandbox_id,
                lambda r: give_up(r, why) if decide(r, now()) is Action.GIVE_UP else None,
            )
            if updated is None:
                return
            record, action = updated, decide(updated, at)
        if action is Action.NOTHING:
            self._inflight.pop(record.sandbox_id, None)
            return
        if link is None:
            return
        sent = self._inflight.get(record.sandbox_id)
        clock = time.monotonic()
        if sent is not None and sent.retry_at is not None:
            if clock < sent.retry_at and sent.generation == record.generation:
                return  # it failed a moment ago: wait (a kick is scheduled for retry_at)
        elif (
            sent is not None
            and sent.action is action
            and sent.generation == record.generation
            and sent.link is link
            and clock - sent.sent < RESEND_SECONDS
        ):
            return
        flight = InFlight(action, record.generation, link, time.monotonic())
        self._inflight[record.sandbox_id] = flight
        self._spawn(self._command(record, flight))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _landed(self, sandbox_id: str, flight: InFlight, progressed: bool) -> None:
        """A command ended: look again now, or after a pause when it achieved nothing.

        Why the pause: a runner that answers at once without progress (a closing link, a
        sandbox in an unexpected state) would otherwise be sent the command in a hot loop.
        """
        if self._inflight.get(sandbox_id) is not flight:
            return
        if progressed:
            del self._inflight[sandbox_id]
            self.kick(sandbox_id)
            return
        self._inflight[sandbox_id] = replace(flight, retry_at=time.monotonic() + RETRY_SECONDS)
        asyncio.get_running_loop().call_later(RETRY_SECONDS, self.kick, sandbox_id)

    async def _observe(self, sandbox_id: str, report: Report) -> None:
        self._reports += 1  # an event, a command's answer or a snapshot's line: see apply_snapshot
        self._reported_at[sandbox_id] = self._reports
        if report.phase is Observed.RUNNING:  # shown while stored: a create's hot path
            await self._records.observe_running(sandbox_id, lambda r: observe(r, report))
        else:
            await self._records.update(sandbox_id, lambda r: observe(r, report))

    async def _command(self, record: SandboxRecord, flight: InFlight) -> None:
        sid = record.sandbox_id
        progressed = False
        try:
            if flight.action is Action.START:
                await self._start(record, flight.link)
            elif flight.action is Action.STOP:
                await self._stop(record, flight.link)
            elif flight.action is Action.DELETE:
                await self._delete(record, flight.link)
            elif flight.action in (Action.PAUSE, Action.RESUME):
                await self._set_paused(record, flight.link, flight.action is Action.PAUSE)
            progressed = True
        except NoProgress:
            pass
        except ApiError as error:
            if error.code is grpc.StatusCode.UNAVAILABLE:
                log.info("sandbox %s: %s, will retry", sid, error.message)
                if error.reason == "CWSANDBOX_STORE_UNAVAILABLE" and not self._snapshot_due:
                    self._snapshot_later()
            else:
                log.warning("sandbox %s: %s failed: %s", sid, flight.action.value, error.message)
        except Exception:
            log.exception("sandbox %s: %s failed", sid, flight.action.value)
        finally:
            self._landed(sid, flight, progressed)

    async def _start(self, record: SandboxRecord, link: RunnerLink) -> None:
        if record.spec is None:  # decide() never starts an adopted orphan; be sure
            raise NoProgress
        spec = runner_pb2.SandboxSpec.FromString(record.spec)
        try:
            await self._add_secrets(record, spec)
        except ApiError as error:
            if error.code is grpc.StatusCode.UNAVAILABLE:
                raise  # the database is away: the start is sent again
            failed = Report(Observed.FAILED, record.generation, reason=error.message)
            await self._observe(record.sandbox_id, failed)
            return
        command = runner_pb2.Command(
            start=runner_pb2.StartSandbox(spec=spec, generation=record.generation)
        )
        try:
            result = await link.call(command, timeout=START_COMMAND_SECONDS)
        except ApiError as error:
            if error.reason == "CWSANDBOX_RUNNER_UNAVAILABLE":
                raise  # no answer (connection lost, timeout): the start is sent again
            if error.code is grpc.StatusCode.ALREADY_EXISTS:
                self.kick(record.sandbox_id, snapshot=True)  # exists, not running: learn more
                raise NoProgress from None
            if blames_runner(error):  # placement backs off runners whose starts keep failing
                self._note_start(self.runner_id, False, error.message)
                if self._move_start is not None and await self._move_start(record, error):
                    return  # another runner's reconciler starts it (start_moves.py)
            await self._observe(
                record.sandbox_id,
                Report(Observed.FAILED, record.generation, reason=error.message),
            )
            return
        self._note_start(self.runner_id, True, "")
        report = Report(
            Observed.RUNNING,
            record.generation,
            service_address=result.started.service_address,
        )
        await self._observe(record.sandbox_id, report)

    async def _add_secrets(self, record: SandboxRecord, spec: runner_pb2.SandboxSpec) -> None:
        """Resolve the spec's secret references into this one command (never the record).

        Read again for every start sent, so a start after a runner came back uses the
        values as they are now, and a value deleted meanwhile fails the start by name.
        """
        if not spec.secret_references:
            return
        if self._secrets is None:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION, "this control plane has no secret stores"
            )
        values = await self._secrets.resolve(record.owner_org, spec.secret_references)
        spec.secret_environment.extend(values)

    async def _stop(self, record: SandboxRecord, link: RunnerLink) -> None:
        command = runner_pb2.Command(
            stop=runner_pb2.StopSandbox(
                sandbox_id=record.sandbox_id,
                grace_seconds=record.stop_grace_seconds,
                generation=record.generation,
            )
        )
        try:
            result = await link.call(
                command, timeout=record.stop_grace_seconds + STOP_MARGIN_SECONDS
            )
        except ApiError as error:
            if error.reason != "CWSANDBOX_SANDBOX_NOT_FOUND":
                raise
            await self._observe(record.sandbox_id, Report(Observed.GONE, record.generation))
            return
        report = report_of(result.state) if result.HasField("state") else None
        if report is not None:
            await self._observe(record.sandbox_id, report)

    async def _set_paused(self, record: SandboxRecord, link: RunnerLink, paused: bool) -> None:
        """Freeze or thaw on the runner; a pause the runner cannot do is given up (pausing.py)."""
        sid, generation = record.sandbox_id, record.generation
        command = (
            runner_pb2.Command(pause=runner_pb2.PauseSandbox(sandbox_id=sid, generation=generation))
            if paused
            else runner_pb2.Command(
                resume=runner_pb2.ResumeSandbox(sandbox_id=sid, generation=generation)
            )
        )
        try:
            result = await link.call(command, timeout=PAUSE_COMMAND_SECONDS)
        except ApiError as error:
            if error.reason == "CWSANDBOX_SANDBOX_NOT_FOUND":
                await self._observe(record.sandbox_id, Report(Observed.GONE, record.generation))
                return
            if not paused or error.code is grpc.StatusCode.UNAVAILABLE:
                raise
            why, generation = error.message, record.generation
            await self._records.update(
                record.sandbox_id, lambda r: pause_refused(r, generation, why)
            )
            return
        report = report_of(result.state) if result.HasField("state") else None
        if report is not None:
            await self._observe(record.sandbox_id, report)

    async def _delete(self, record: SandboxRecord, link: RunnerLink) -> None:
        command = runner_pb2.Command(
            delete=runner_pb2.DeleteSandbox(
                sandbox_id=record.sandbox_id, generation=record.generation
            )
        )
        try:
            await link.call(command, timeout=STOP_MARGIN_SECONDS + 10)
        except ApiError as error:
            if error.reason != "CWSANDBOX_SANDBOX_NOT_FOUND":
                raise
        current = await self._records.get(record.sandbox_id)
        if current is not None:
            await self._records.remove(current)

    # -- what the runner reports ----------------------------------------------------------
    async def _request_snapshot(self, link: RunnerLink) -> None:
        since = self._reports  # what is reported from now on may be newer than the snapshot
        self._asked.append(since)
        try:
            try:
                result = await link.call(runner_pb2.Command(snapshot=runner_pb2.Snapshot()))
            except ApiError as error:
                log.info("runner %s: no snapshot (%s)", self.runner_id, error.message)
                return
            await self.apply_snapshot(list(result.snapshot.sandboxes), "", since=since)
        finally:
            self._asked.remove(since)
            self._forget_reports()

    def _forget_reports(self) -> None:
        """Drop the report marks no snapshot still waiting for its answer can need."""
        floor = min(self._asked, default=self._reports)
        self._reported_at = {sid: n for sid, n in self._reported_at.items() if n > floor}

    async def apply_event(self, event: runner_pb2.SandboxEvent) -> None:
        """A runner's report about one sandbox: update its observed state."""
        report = report_of(event)
        try:
            record = await self._records.get(event.sandbox_id)
            if report is None or record is None or record.runner_id != self.runner_id:
                return  # unknown here: the next snapshot classifies it
            await self._observe(event.sandbox_id, report)
        except ApiError as error:
            log.warning("runner %s: report kept for the resync (%s)", self.runner_id, error.message)
            if not self._snapshot_due:
                self._snapshot_later()

    async def apply_snapshot(
        self,
        events: list[runner_pb2.SandboxEvent],
        runner_cluster_id: str,
        since: int | None = None,
    ) -> None:
        """Everything the runner holds: update, destroy what we deleted, note orphans.

        A sandbox the runner no longer reports although it was running here is gone (its
        runner lost it, e.g. with the host). One that is not yet reported as started is
        left to the reconciler, which starts it (again).

        ``since``: the report count when the snapshot was asked for (None: now, for the one a
        runner brings when it connects). A sandbox reported after that is not called lost:
        the runner leaves sandboxes still starting out of a snapshot, and one whose start
        ends after the snapshot was made has its RUNNING report applied before, or while,
        the snapshot is (the answer waits on another task). Calling it lost made a sandbox
        that ran fine FAILED after a control plane restart (a CI run of
        ``test_controlplane_kill9_and_restart_loses_nothing``). A sandbox really gone is
        found by the next snapshot, asked for :data:`RECHECK_SECONDS` later.
        """
        since = self._reports if since is None else since
        undecided = False
        reported = {event.sandbox_id: event for event in events}
        unknown: list[runner_pb2.SandboxEvent] = []
        try:
            for sid, event in reported.items():
                record = await self._records.get(sid)
                if record is None or record.runner_id != self.runner_id:
                    unknown.append(event)
                    continue
                report = report_of(event)
                if report is not None:
                    await self._observe(sid, report)
            for record in self._records.live_on(self.runner_id):
                if record.sandbox_id not in reported and record.observed in STARTED:
                    if self._reported_at.get(record.sandbox_id, 0) > since:
                        undecided = True  # reported after the snapshot was asked for (above)
                        continue
                    lost = Report(Observed.GONE, record.observed_generation, reason=LOST_REASON)
                    await self._observe(record.sandbox_id, lost)
            await self._classify_unknown(unknown, runner_cluster_id)
        except ApiError as error:
            log.warning(
                "runner %s: snapshot kept for the resync (%s)", self.runner_id, error.message
            )
            self._snapshot_later()
            return
        self._snapshot_delay = SNAPSHOT_RETRY_SECONDS[0]
        if undecided:  # a newer snapshot decides whether it is still there
            self._snapshot_due = True
            self._snapshot_not_before = time.monotonic() + RECHECK_SECONDS
            asyncio.get_running_loop().call_later(RECHECK_SECONDS, self.kick)
        self.kick()

    def _snapshot_later(self) -> None:
        """Ask for a snapshot again after a pause that doubles while the store refuses."""
        delay = self._snapshot_delay
        self._snapshot_delay = min(delay * 2, SNAPSHOT_RETRY_SECONDS[1])
        self._snapshot_due = True
        self._snapshot_not_before = time.monotonic() + delay
        asyncio.get_running_loop().call_later(delay, self.kick)

    async def _classify_unknown(
        self, unknown: list[runner_pb2.SandboxEvent], runner_cluster_id: str
    ) -> None:
        deleted = await self._records.tombstoned([e.sandbox_id for e in unknown])
        link = self._link()
        orphans: list[Orphan] = []
        seen = now()
        for event in unknown:
            if event.sandbox_id in deleted:
                if link is not None:  # deleted here while its runner was away: finish it there
                    delete = runner_pb2.DeleteSandbox(sandbox_id=event.sandbox_id)
                    with contextlib.suppress(ApiError):
                        link.send(runner_pb2.Command(delete=delete))
                continue
            report = report_of(event)
            orphans.append(
                Orphan(
                    sandbox_id=event.sandbox_id,
                    runner_id=self.runner_id,
                    phase=report.phase.value if report else "unknown",
                    exit_code=event.exit_code if event.HasField("exit_code") else None,
                    reason=event.reason,
                    runner_cluster_id=runner_cluster_id,
                    first_seen=seen,
                    last_seen=seen,
                )
            )
        if orphans:
            log.warning(
                "runner %s holds %d sandbox(es) this control plane has no record of; they are "
                "left running and listed by `sandboxd sandboxes orphans`",
                self.runner_id,
                len(orphans),
            )
        await self._records.note_orphans(self.runner_id, orphans)


class Reconcilers:
    """The reconcilers of every runner, created on first need."""

    def __init__(
        self,
        records: SandboxRecords,
        registry: RunnerRegistry,
        secrets: Secrets | None = None,
        *,
        move_start: MoveStart | None = None,
    ) -> None:
        self._records = records
        self._registry = registry
        self._secrets = secrets
        self._move_start = move_start
        self._by_runner: dict[str, RunnerReconciler] = {}
        records.on_change = lambda record: self.of(record.runner_id).kick(record.sandbox_id)

    def queue_depth(self) -> int:
        """Sandboxes waiting for their runner's reconciler, over all runners (for metrics)."""
        return sum(reconciler.pending for reconciler in self._by_runner.values())

    def note_start(self, runner_id: str, ok: bool, reason: str) -> None:
        """Tell placement how a start on ``runner_id`` went (its backoff)."""
        self._registry.note_start(runner_id, ok, reason)

    def of(self, runner_id: str) -> RunnerReconciler:
        """The reconciler of ``runner_id``."""
        reconciler = self._by_runner.get(runner_id)
        if reconciler is None:
            reconciler = RunnerReconciler(
                runner_id,
                self._records,
                self._registry,
                self.note_start,
                self._secrets,
                move_start=self._move_start,
            )
            self._by_runner[runner_id] = reconciler
        return reconciler

    def kick(self, runner_id: str, snapshot: bool = False) -> None:
        """Reconcile every unsettled sandbox of ``runner_id`` soon."""
        self.of(runner_id).kick(None, snapshot)

    def kick_all(self) -> None:
        """Reconcile every runner that has unsettled sandboxes (e.g. after start-up)."""
        for runner_id in {r.runner_id for r in self._records.live()}:
            self.kick(runner_id)

    async def on_register(self, runner_id: str, register: runner_pb2.Register) -> None:
        """A runner (re)connected: apply its snapshot, then reconcile."""
        await self.of(runner_id).apply_snapshot(list(register.sandboxes), register.cluster_id)

    async def on_event(self, runner_id: str, event: runner_pb2.SandboxEvent) -> None:
        """A runner reported one sandbox."""
        await self.of(runner_id).apply_event(event)

    def on_disconnect(self, runner_id: str) -> None:
        """A runner's connection ended: commands in flight on it will be sent again."""
        self.kick(runner_id)

    async def close(self) -> None:
        """Stop every reconciler."""
        await asyncio.gather(*(r.close() for r in self._by_runner.values()))
        self._by_runner.clear()


__all__ = ["ENDED", "Reconcilers", "RunnerReconciler"]
