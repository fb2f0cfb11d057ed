"""``SandboxStatus`` and the status sets the wait loops stop on (protocol §4.1).

The poll loops compare raw wire numbers, not enum members, on purpose: an unknown future
status then counts as "still changing" and is polled until the wait times out, instead of
being mistaken for a final state.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = ["STARTUP_DONE", "TERMINAL", "SandboxStatus"]

_log = logging.getLogger("cwsandbox")
_S = gw.SandboxStatus


class SandboxStatus(StrEnum):
    """Where a sandbox is in its life; values are the lowercase names used by ``list``."""

    RUNNING = "running"
    CREATING = "creating"
    PENDING = "pending"
    PAUSED = "paused"
    TERMINATING = "terminating"
    COMPLETED = "completed"
    FAILED = "failed"
    TERMINATED = "terminated"
    UNSPECIFIED = "unspecified"

    @classmethod
    def from_proto(cls, proto_status: int) -> SandboxStatus:
        """Map a wire value; unknown values become ``UNSPECIFIED`` (with a warning)."""
        status = _FROM_PROTO.get(proto_status)
        if status is None:
            _log.warning(
                "unknown sandbox status %d from server; treating as unspecified", proto_status
            )
            return cls.UNSPECIFIED
        return status

    def to_proto(self) -> int:
        """The wire value of this status."""
        return _TO_PROTO[self]

    @property
    def is_terminal(self) -> bool:
        """Whether the sandbox has ended (completed, failed or terminated)."""
        return self in (SandboxStatus.COMPLETED, SandboxStatus.FAILED, SandboxStatus.TERMINATED)

    @classmethod
    def parse(cls, value: SandboxStatus | str) -> SandboxStatus:
        """Accept a member or its lowercase name (``"running"``); ``ValueError`` otherwise."""
        if isinstance(value, SandboxStatus):
            return value
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown sandbox status {value!r}; use one of: {names}") from None


_TO_PROTO = {
    SandboxStatus.UNSPECIFIED: _S.SANDBOX_STATUS_UNSPECIFIED,
    SandboxStatus.CREATING: _S.SANDBOX_STATUS_CREATING,
    SandboxStatus.RUNNING: _S.SANDBOX_STATUS_RUNNING,
    SandboxStatus.COMPLETED: _S.SANDBOX_STATUS_COMPLETED,
    SandboxStatus.FAILED: _S.SANDBOX_STATUS_FAILED,
    SandboxStatus.TERMINATED: _S.SANDBOX_STATUS_TERMINATED,
    SandboxStatus.PENDING: _S.SANDBOX_STATUS_PENDING,
    SandboxStatus.PAUSED: _S.SANDBOX_STATUS_PAUSED,
    SandboxStatus.TERMINATING: _S.SANDBOX_STATUS_TERMINATING,
}
_FROM_PROTO: dict[int, SandboxStatus] = {int(v): k for k, v in _TO_PROTO.items()}

#: Statuses that end the wait for startup: usable, draining, or already over.
STARTUP_DONE: frozenset[int] = frozenset(
    {
        _S.SANDBOX_STATUS_RUNNING,
        _S.SANDBOX_STATUS_PAUSED,
        _S.SANDBOX_STATUS_TERMINATING,
        _S.SANDBOX_STATUS_COMPLETED,
        _S.SANDBOX_STATUS_FAILED,
        _S.SANDBOX_STATUS_TERMINATED,
        _S.SANDBOX_STATUS_UNSPECIFIED,
    }
)
#: Statuses that end the wait for completion. UNSPECIFIED here means "exited cleanly".
TERMINAL: frozenset[int] = frozenset(
    {
        _S.SANDBOX_STATUS_COMPLETED,
        _S.SANDBOX_STATUS_FAILED,
        _S.SANDBOX_STATUS_TERMINATED,
        _S.SANDBOX_STATUS_UNSPECIFIED,
    }
)
