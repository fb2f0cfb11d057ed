"""Backing off runners whose sandbox starts keep failing.

Why: the scheduler prefers the least loaded runner, and a runner whose starts fail never
gets loaded — each failure releases its reservation — so without a memory of failures one
broken runner would attract every Start. After :data:`FAILURES_BEFORE_BACKOFF` consecutive
failures a runner is skipped for :data:`FIRST_BACKOFF_SECONDS`, doubling with each further
failure up to :data:`MAX_BACKOFF_SECONDS`; one successful start clears the record. When a
period ends the runner is tried again (one failure then doubles the period), so a runner
that was repaired comes back by itself.

Only failures that say something about the runner count (:func:`blames_runner`): a sandbox
whose command does not exist fails to start on a perfectly good runner, and counting that
would let any caller push every runner into backoff.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from sandboxd.errors import ApiError

FAILURES_BEFORE_BACKOFF = 3
FIRST_BACKOFF_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 300.0
MAX_REASON_CHARS = 160

# Codes with which a start fails because of the runner (its backend is unavailable, it did
# not answer, it crashed), as opposed to the request (bad argument, a command that does not
# exist: FAILED_PRECONDITION / INVALID_ARGUMENT, which prove the runner itself works).
_RUNNER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# The runner's own capacity disagrees with what the control plane reserved for it.
_RUNNER_FAULT_REASONS = frozenset({"CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"})


def blames_runner(error: ApiError) -> bool:
    """Whether a failed start counts against the runner it was placed on."""
    return error.code in _RUNNER_FAULTS or error.reason in _RUNNER_FAULT_REASONS


def backoff_seconds(failures: int) -> float:
    """How long a runner with ``failures`` consecutive failed starts is skipped (0: not)."""
    if failures < FAILURES_BEFORE_BACKOFF:
        return 0.0
    doublings = min(failures - FAILURES_BEFORE_BACKOFF, 16)
    return min(FIRST_BACKOFF_SECONDS * (1 << doublings), MAX_BACKOFF_SECONDS)


@dataclass
class StartRecord:
    """One runner's recent start outcomes; ``until`` is on the registry's monotonic clock."""

    failures: int = 0
    last_failure: str = ""
    until: float = float("-inf")

    def note(self, ok: bool, reason: str, now: float) -> None:
        """Count a failed start (maybe starting a backoff period), or clear after a success."""
        if ok:
            self.failures, self.last_failure, self.until = 0, "", float("-inf")
            return
        self.failures += 1
        reason = " ".join(reason.split()) or "no reason given"
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        self.last_failure = reason
        period = backoff_seconds(self.failures)
        if period:
            self.until = now + period

    def backed_off(self, now: float) -> bool:
        """Whether placement should skip the runner at ``now``."""
        return now < self.until
