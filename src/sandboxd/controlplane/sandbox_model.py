"""The sandbox state model: desired state, observed state, and what they mean to a client.

Why two halves (the Kubernetes/Nomad controller model): a client call only changes what a
sandbox *should* be (``desired``: running, stopped, deleted), in one database write, and
answers; what the sandbox *is* (``observed``: none yet, running, completed, failed, gone)
changes only from its runner's reports. A reconciler (``reconciler.py``) compares the two and
sends idempotent commands until they agree, on every event, reconnect, change and a periodic
resync, so no transition depends on one message arriving or one process surviving.

Every desired change bumps ``generation``; commands carry it and runners report the highest
generation they applied, so the control plane can tell a report that answers its latest
wish from a stale one. Observed phases only move forward (none → running → ended), so a
repeated or reordered report changes nothing.

This module is pure (no I/O): the record, the public status a record reads as, how a
runner's report is applied, and what the reconciler should do next. Unit tests cover every
pair of desired and observed state.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sandboxd.identity.model import ADMIN_ORG
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2

S = gateway_pb2
TERMINAL_STATUSES = frozenset(
    {S.SANDBOX_STATUS_COMPLETED, S.SANDBOX_STATUS_FAILED, S.SANDBOX_STATUS_TERMINATED}
)
STARTING_STATUSES = frozenset({S.SANDBOX_STATUS_CREATING, S.SANDBOX_STATUS_PENDING})
"""Placed, not yet reported running (or ended) by its runner."""
START_TIMEOUT_SECONDS = 120.0
"""How long a sandbox may take to be reported running before it is given up (FAILED)."""


class Desired(enum.StrEnum):
    """What a client asked the sandbox to be."""

    RUNNING = "running"
    PAUSED = "paused"  # running, with its processes frozen (pausing.py)
    STOPPED = "stopped"
    DELETED = "deleted"


class Observed(enum.StrEnum):
    """What the sandbox's runner last reported it to be."""

    NONE = "none"  # not reported yet (the start is on its way, or its runner is away)
    RUNNING = "running"
    PAUSED = "paused"  # running, every process frozen; ranks like RUNNING
    COMPLETED = "completed"  # its main process ended (exit_code set)
    FAILED = "failed"  # the runner failed to start or keep it
    GONE = "gone"  # its runner no longer has it and never reported its end


ENDED = frozenset({Observed.COMPLETED, Observed.FAILED, Observed.GONE})
_RANK = {Observed.NONE: 0, Observed.RUNNING: 1, Observed.PAUSED: 1}  # ended ones rank 2
STARTED = frozenset({Observed.RUNNING, Observed.PAUSED})
"""Started and not ended: its runner holds it, running or paused."""


def rank(phase: Observed) -> int:
    """Observed phases only move forward: none (0) → running (1) → ended (2)."""
    return _RANK.get(phase, 2)


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def new_sandbox_id() -> str:
    """Ids sort by creation time, so List pages come out oldest first."""
    return f"sb-{time.time_ns() // 1_000_000:011x}{os.urandom(4).hex()}"


@dataclass
class SandboxRecord:
    """One sandbox as the control plane keeps it (one database row)."""

    sandbox_id: str
    runner_id: str
    runner_group_id: str = ""
    profile_name: str = ""
    image: str = ""
    owner_org: str = ADMIN_ORG
    # The runner's instructions (a serialized runner SandboxSpec); None for adopted orphans.
    spec: bytes | None = None
    # The client's request while the sandbox starts (``held_requests.py``), so that a start
    # its runner fails can move to another runner also after a restart; None once settled.
    start_request: bytes | None = None
    tags: list[str] = field(default_factory=list)
    exposed_ports: list[int] = field(default_factory=list)
    applied_egress_mode: str = ""
    applied_ingress_mode: str = ""
    # What the sandbox reserves from its runner's capacity (its resource requests) ...
    reserved_cpu_millicores: int = 0
    reserved_memory_bytes: int = 0
    reserved_gpu_count: int = 0
    # ... and its limits, which count against its organization's quotas while it lives.
    cpu_limit_millicores: int = 0
    memory_limit_bytes: int = 0
    desired: Desired = Desired.RUNNING
    generation: int = 1
    stop_grace_seconds: int = 10
    observed: Observed = Observed.NONE
    observed_generation: int = 0
    exit_code: int | None = None
    # The runner's reason for an end, or the control plane's own verdict (``verdict``).
    reason: str = ""
    # Set when the control plane itself gave the sandbox up (a start that never came); the
    # sandbox then reads FAILED with this reason whatever its runner reports later.
    verdict: str = ""
    service_address: str = ""
    created_at: datetime = field(default_factory=now)
    start_deadline: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # Bumped by every write, so concurrent writers cannot lose each other's changes.
    version: int = 1

    @property
    def status(self) -> int:
        """The public ``SandboxStatus`` this record reads as."""
        return public_status(self)

    @property
    def status_reason(self) -> str:
        """The reason shown beside the status."""
        return public_reason(self)

    @property
    def terminal(self) -> bool:
        """COMPLETED, FAILED or TERMINATED: its public status will not change any more."""
        return self.status in TERMINAL_STATUSES

    @property
    def live(self) -> bool:
        """Still holds (or may hold) capacity on its runner: not known to have ended there."""
        return self.observed not in ENDED

    @property
    def stop_requested(self) -> bool:
        """A client (or the control plane) asked it to stop."""
        return self.desired in (Desired.STOPPED, Desired.DELETED)

    @property
    def paused(self) -> bool:
        """Paused, or being paused or resumed: nothing can run in it now."""
        return not self.terminal and (
            self.observed is Observed.PAUSED
            or (self.desired is Desired.PAUSED and self.observed is Observed.RUNNING)
        )

    def reservation(self) -> runner_pb2.Reservation:
        """What it takes from its runner's capacity."""
        return runner_pb2.Reservation(
            cpu_millicores=self.reserved_cpu_millicores,
            memory_bytes=self.reserved_memory_bytes,
            gpu_count=self.reserved_gpu_count,
        )


def public_status(record: SandboxRecord) -> int:
    """Derive the v1beta2 status from desired and observed state."""
    if record.verdict:
        return S.SANDBOX_STATUS_FAILED
    if record.observed is Observed.COMPLETED:
        return S.SANDBOX_STATUS_COMPLETED
    if record.observed is Observed.FAILED:
        return S.SANDBOX_STATUS_FAILED
    if record.observed is Observed.GONE:
        return S.SANDBOX_STATUS_TERMINATED if record.stop_requested else S.SANDBOX_STATUS_FAILED
    if record.stop_requested:
        return S.SANDBOX_STATUS_TERMINATING
    if record.observed is Observed.RUNNING:
        return S.SANDBOX_STATUS_RUNNING
    if record.observed is Observed.PAUSED:
        return S.SANDBOX_STATUS_PAUSED
    return S.SANDBOX_STATUS_CREATING


def public_reason(record: SandboxRecord) -> str:
    """Why the sandbox is where it is (empty for a plain running sandbox)."""
    if record.verdict:
        return record.verdict
    if record.observed is Observed.COMPLETED:
        return record.reason or ("stopped" if record.stop_requested else "exited")
    if record.observed is Observed.GONE:
        if record.stop_requested:
            return record.reason or "stopped before its runner started it"
        return record.reason or "lost: its runner no longer has it"
    if record.observed is Observed.FAILED:
        return record.reason or "failed"
    return "" if record.stop_requested else record.reason


@dataclass(frozen=True)
class Report:
    """One runner report about one sandbox, in control-plane terms."""

    phase: Observed
    generation: int
    exit_code: int | None = None
    reason: str = ""
    at: datetime | None = None
    service_address: str | None = None


_PHASES = {
    runner_pb2.SANDBOX_PHASE_RUNNING: Observed.RUNNING,
    runner_pb2.SANDBOX_PHASE_PAUSED: Observed.PAUSED,
    runner_pb2.SANDBOX_PHASE_COMPLETED: Observed.COMPLETED,
    runner_pb2.SANDBOX_PHASE_FAILED: Observed.FAILED,
}


def report_of(event: runner_pb2.SandboxEvent) -> Report | None:
    """A runner's event as a :class:`Report` (None for a phase we do not act on)."""
    phase = _PHASES.get(event.phase)
    if phase is None:
        return None
    at = event.at.ToDatetime(tzinfo=UTC) if event.HasField("at") else None
    return Report(
        phase=phase,
        generation=event.generation,
        exit_code=event.exit_code if event.HasField("exit_code") else None,
        reason=event.reason,
        at=at,
        service_address=event.service_address or None,
    )


def observe(record: SandboxRecord, report: Report) -> SandboxRecord | None:
    """``record`` with ``report`` applied, or None when the report changes nothing.

    Phases only move forward, and within a phase only a newer generation is news, so a
    repeated or reordered report (a RUNNING that arrives after the COMPLETED) is ignored.
    Running and paused rank alike: a pause or resume is news by its newer generation, and a
    runner that finds the truth differs at the same generation (a restarted runner reads
    the freezer) is believed, since it applies a generation together with its phase.
    """
    old, new = rank(record.observed), rank(report.phase)
    flipped = new == old == 1 and report.phase is not record.observed
    if flipped and report.generation >= record.observed_generation:
        return replace(
            record,
            observed=report.phase,
            observed_generation=report.generation,
            started_at=record.started_at or report.at or now(),
            start_request=None,
        )
    if new < old or (new == old and report.generation <= record.observed_generation):
        if report.service_address and report.service_address != record.service_address:
            return replace(record, service_address=report.service_address)
        return None
    changed = replace(
        record,
        observed=report.phase if new > old or new == 1 else record.observed,
        observed_generation=max(record.observed_generation, report.generation),
        start_request=None,  # its start settled: it will not move any more
    )
    if report.service_address is not None:
        changed.service_address = report.service_address
    when = report.at or now()
    if report.phase in STARTED and record.started_at is None:
        changed.started_at = when
    if report.phase in ENDED and new > old:
        changed.exit_code = report.exit_code
        changed.reason = report.reason
        changed.ended_at = when
        if changed.started_at is None and report.phase is Observed.COMPLETED:
            changed.started_at = when
    return changed


class Action(enum.StrEnum):
    """What the reconciler should do about one sandbox now."""

    NOTHING = "nothing"
    START = "start"
    STOP = "stop"
    DELETE = "delete"
    PAUSE = "pause"
    RESUME = "resume"
    GIVE_UP = "give_up"  # a start that never came: stop wanting it, and say why


def decide(record: SandboxRecord, at: datetime) -> Action:
    """The next step that brings observed state toward desired state (pure; idempotent)."""
    if record.desired is Desired.DELETED:
        return Action.DELETE
    if record.observed in ENDED:
        return Action.NOTHING
    if record.desired is Desired.STOPPED:
        return Action.STOP
    if record.observed is Observed.RUNNING:
        return Action.PAUSE if record.desired is Desired.PAUSED else Action.NOTHING
    if record.observed is Observed.PAUSED:
        if record.desired is Desired.RUNNING:
            return Action.RESUME
        # Paused, but not by this wish (a runner that died mid-pause reports what it found
        # with the generation before): pausing again is harmless and confirms this one.
        behind = record.observed_generation < record.generation
        return Action.PAUSE if behind else Action.NOTHING
    if record.start_deadline is not None and at >= record.start_deadline:
        return Action.GIVE_UP
    if record.spec is None:
        return Action.NOTHING  # an adopted orphan: only its runner can start it; wait for it
    return Action.START


def give_up(record: SandboxRecord, why: str) -> SandboxRecord:
    """The control plane's verdict on a start that never came: FAILED, and stop it."""
    return replace(
        record,
        desired=Desired.STOPPED,
        generation=record.generation + 1,
        verdict=why,
        ended_at=record.ended_at or now(),
        start_request=None,  # it will not be started anywhere
    )


def pause_refused(record: SandboxRecord, generation: int, why: str) -> SandboxRecord | None:
    """A pause its runner cannot do (no freezer, say): want it running again, and say why.

    Only the pause of ``generation`` is given up: a client may have resumed or stopped it
    meanwhile, and then there is nothing to undo.
    """
    if record.desired is not Desired.PAUSED or record.generation != generation:
        return None
    return replace(
        record,
        desired=Desired.RUNNING,
        generation=record.generation + 1,
        reason=f"pause refused by its runner: {why}",
    )


def start_deadline(created: datetime, seconds: float = START_TIMEOUT_SECONDS) -> datetime:
    """When a start that has not been reported running is given up."""
    return created + timedelta(seconds=seconds)
