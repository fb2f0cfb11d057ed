"""One supervised sandbox as the runner sees it, and how it is reported.

Why the phase is the wire enum: what the runner reports (``SandboxEvent``) and what it
decides on (is it running? has its end been reported?) must never disagree, so there is one
field. ``STARTING`` (the enum's unspecified value) marks a sandbox whose start is still in
progress; it is never reported, because the control plane already shows it as creating.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from sandboxd.runner.records import RunnerRecord
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["LIVE", "STARTING", "TERMINAL", "Sandbox", "describe_exit", "event_of"]

STARTING = runner_pb2.SANDBOX_PHASE_UNSPECIFIED
TERMINAL = frozenset({runner_pb2.SANDBOX_PHASE_COMPLETED, runner_pb2.SANDBOX_PHASE_FAILED})
LIVE = frozenset({runner_pb2.SANDBOX_PHASE_RUNNING, runner_pb2.SANDBOX_PHASE_PAUSED})
"""Started and not ended: running, or paused (its processes frozen)."""

# SandboxState.reason from the backend -> the reason reported to the control plane. An
# ordinary exit reports "" so the control plane can say "exited" or "stopped" itself.
_EXIT_REASONS = {
    "exited": "",
    "stopped": "stopped",
    "oom": "out of memory: the kernel killed the sandbox's process",
    "killed": "killed",
    "lifetime": "max lifetime reached",
    "start_failed": "the main process could not be started",
}


def describe_exit(reason: str | None) -> str:
    """The reported reason for a backend's exit reason."""
    return _EXIT_REASONS.get(reason or "exited", reason or "")


@dataclass(eq=False)
class Sandbox:
    """Mutable state of one sandbox; only the supervisor's tasks change it."""

    sandbox_id: str
    record: RunnerRecord
    phase: runner_pb2.SandboxPhase = STARTING
    exit_code: int | None = None
    reason: str = ""
    changed_at: float = field(default_factory=time.time)
    stop_reason: str | None = None  # set before the runner itself ends the main process
    # The highest command generation applied to it (reported, so stale reports are ignored).
    generation: int = 0
    # Serialises start, stop, delete and lifetime expiry of this sandbox.
    ops: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Makes reporting the end happen once, and makes later reporters wait until it was sent.
    report: asyncio.Lock = field(default_factory=asyncio.Lock)
    watcher: asyncio.Task[None] | None = None
    timer: asyncio.Task[None] | None = None  # lifetime expiry, later retention expiry
    # Set once the backend runs it (see ``backend_started``), once it has left STARTING, or
    # once its start failed: what an exec that came with the start waits for
    # (start_arrivals.py), not for the start's bookkeeping and report.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # The backend created and started it, while its start may still be recording it and
    # reporting RUNNING: execs and file operations may go to it already.
    backend_running: bool = False

    def __post_init__(self) -> None:
        if self.phase != STARTING:  # recovered as it was: nothing to wait for
            self.settled.set()

    def applied(self, generation: int) -> None:
        """A command of ``generation`` reached this sandbox (generations only grow)."""
        self.generation = max(self.generation, generation)

    def set_phase(
        self, phase: runner_pb2.SandboxPhase, *, exit_code: int | None = None, reason: str = ""
    ) -> None:
        """Move to ``phase`` now."""
        self.phase = phase
        self.exit_code = exit_code
        self.reason = reason
        self.changed_at = time.time()
        if phase != STARTING:
            self.settled.set()

    def backend_started(self) -> None:
        """The backend runs it: waiting execs go now, not after the runner's record is saved.

        Why: a warm claim's or a cold create's first exec used to wait, after the backend's
        answer, for the backend's state, the runner's record (a new file: an inode to
        allocate) and the RUNNING report; traced, it now leaves the runner about 1 ms
        sooner. A start that fails after this point destroys the sandbox, and an exec
        already in it then ends with an error, as one whose sandbox goes away does.
        """
        self.backend_running = True
        self.settled.set()

    def started(self) -> runner_pb2.SandboxStarted:
        """The answer to its start command."""
        return runner_pb2.SandboxStarted(
            service_address=self.record.service_address,
            published_ports=self.record.published_ports,
        )

    def cancel_timer(self) -> None:
        """Cancel the pending lifetime or retention expiry, unless that is who is calling."""
        if self.timer is not None and self.timer is not asyncio.current_task():
            self.timer.cancel()
        self.timer = None

    def tasks(self) -> list[asyncio.Task[None]]:
        """Tasks that watch this sandbox (for shutdown)."""
        return [t for t in (self.watcher, self.timer) if t is not None]


def event_of(sb: Sandbox) -> runner_pb2.SandboxEvent:
    """The sandbox's current state as an event (also used for ``Register.sandboxes``)."""
    at = timestamp_pb2.Timestamp()
    at.FromNanoseconds(int(sb.changed_at * 1e9))
    event = runner_pb2.SandboxEvent(
        sandbox_id=sb.sandbox_id,
        phase=sb.phase,
        reason=sb.reason,
        at=at,
        generation=sb.generation,
        service_address=sb.record.service_address,
    )
    if sb.exit_code is not None:
        event.exit_code = sb.exit_code
    return event
