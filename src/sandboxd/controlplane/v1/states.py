"""Sandbox states as v1 numbers them (protocol/v1.md §4.1).

Why a mapping: records keep the v1beta2 ``SandboxStatus`` (the store's List filter uses it),
and v1 moved numbers 5–9 (TERMINATING 9→5, TERMINATED 5→6, PENDING 6→7, PAUSED 7→8, new
PREPARING 9). Every state that crosses the v1 API goes through here, both ways.
"""

from __future__ import annotations

from sandboxd_protocol.v1 import sandbox_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2

B = gateway_pb2
V = sandbox_pb2

_TO_V1: dict[int, sandbox_pb2.State] = {
    B.SANDBOX_STATUS_CREATING: V.STATE_CREATING,
    B.SANDBOX_STATUS_RUNNING: V.STATE_RUNNING,
    B.SANDBOX_STATUS_COMPLETED: V.STATE_COMPLETED,
    B.SANDBOX_STATUS_FAILED: V.STATE_FAILED,
    B.SANDBOX_STATUS_TERMINATED: V.STATE_TERMINATED,
    B.SANDBOX_STATUS_PENDING: V.STATE_PENDING,
    B.SANDBOX_STATUS_PAUSED: V.STATE_PAUSED,
    B.SANDBOX_STATUS_TERMINATING: V.STATE_TERMINATING,
}
_FROM_V1: dict[int, int] = {int(v1): beta for beta, v1 in _TO_V1.items()}


def v1_state(status: int) -> sandbox_pb2.State:
    """The v1 ``State`` of a record's v1beta2 status; never 0 (a live sandbox reads CREATING)."""
    return _TO_V1.get(status, V.STATE_CREATING)


def status_of_state(state: int) -> int | None:
    """The v1beta2 status a v1 ``State`` filter means; None for PREPARING (no record has it)."""
    return _FROM_V1.get(state)
