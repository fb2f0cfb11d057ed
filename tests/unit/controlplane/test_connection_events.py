"""A runner's report of connection attempts: only its own sandboxes, only well-formed fields.

The event log and the record cache are small stand-ins here (the trail's storage and the
records are tested on their own); what is under test is the check between them. End to end,
through a real runner and firewall, in ``tests/e2e/test_connection_trail.py``.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from sandboxd.controlplane.connection_events import MAX_PER_REPORT, MAX_RULE, ConnectionEvents
from sandboxd.controlplane.events import EventLog
from sandboxd.controlplane.metrics import ControlPlaneMetrics
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.store.event_store import SandboxEvent
from sandboxd_protocol.sandboxd_v1 import runner_pb2


class Records:
    """Stand-in for ``SandboxRecords.cached``: two sandboxes, on runners east and west."""

    def __init__(self) -> None:
        self.by_id = {
            "sb-east": SandboxRecord(sandbox_id="sb-east", runner_id="east", owner_org="team-a"),
            "sb-west": SandboxRecord(sandbox_id="sb-west", runner_id="west", owner_org="team-b"),
        }

    def cached(self, sandbox_id: str) -> SandboxRecord | None:
        return self.by_id.get(sandbox_id)


class Events:
    """Stand-in for ``EventLog.append``: keeps what would be queued."""

    def __init__(self) -> None:
        self.appended: list[SandboxEvent] = []

    def append(self, event: SandboxEvent) -> None:
        self.appended.append(event)


def attempt(sandbox_id: str = "sb-east", **fields: Any) -> runner_pb2.ConnectionAttempt:
    values: dict[str, Any] = {
        "sandbox_id": sandbox_id, "protocol": "tcp", "destination": "198.18.0.1", "port": 443,
        "decision": "rejected", "rule": "SBX-x -j REJECT", "count": 3,
    }  # fmt: skip
    values.update(fields)
    message = runner_pb2.ConnectionAttempt(**values)
    message.at.FromNanoseconds(time.time_ns())
    return message


@pytest.fixture
def setup() -> tuple[ConnectionEvents, Events, ControlPlaneMetrics]:
    events, metrics = Events(), ControlPlaneMetrics()
    sink = ConnectionEvents(cast(EventLog, events), cast(SandboxRecords, Records()), metrics)
    return sink, events, metrics


def test_own_sandbox_is_recorded_with_its_owner_and_counted(
    setup: tuple[ConnectionEvents, Events, ControlPlaneMetrics],
) -> None:
    sink, events, metrics = setup
    assert sink.report("east", runner_pb2.ConnectionLog(attempts=[attempt()])) == 1
    (event,) = events.appended
    assert (event.sandbox_id, event.owner_org, event.kind, event.actor) == (
        "sb-east", "team-a", "connection", "east",
    )  # fmt: skip
    assert event.data == {
        "protocol": "tcp", "destination": "198.18.0.1", "port": 443, "decision": "rejected",
        "rule": "SBX-x -j REJECT", "count": 3,
    }  # fmt: skip
    value = metrics.registry.get_sample_value(
        "sandboxd_connection_attempts_total", {"decision": "rejected"}
    )
    assert value == 3


def test_another_runners_sandbox_and_unknown_ids_are_refused(
    setup: tuple[ConnectionEvents, Events, ControlPlaneMetrics],
) -> None:
    sink, events, _ = setup
    report = runner_pb2.ConnectionLog(attempts=[attempt("sb-west"), attempt("sb-nobody")])
    assert sink.report("east", report) == 0
    assert events.appended == []


@pytest.mark.parametrize(
    "fields",
    [
        {"decision": "maybe"},
        {"decision": ""},
        {"destination": "not-an-address"},
        {"destination": "::1"},
        {"port": 70000},
        {"port": -1},
        {"protocol": "tcp; drop table"},
        {"protocol": "x" * 9},
    ],
)
def test_malformed_attempts_are_refused(
    setup: tuple[ConnectionEvents, Events, ControlPlaneMetrics], fields: dict[str, Any]
) -> None:
    sink, events, _ = setup
    assert sink.report("east", runner_pb2.ConnectionLog(attempts=[attempt(**fields)])) == 0
    assert events.appended == []


def test_fields_are_bounded(setup: tuple[ConnectionEvents, Events, ControlPlaneMetrics]) -> None:
    sink, events, _ = setup
    stale = attempt(rule="r" * 10_000, count=10**9)
    stale.at.FromSeconds(0)  # 1970: the control plane's clock is used instead
    huge = runner_pb2.ConnectionLog(attempts=[stale] * (MAX_PER_REPORT + 10))
    assert sink.report("east", huge) == MAX_PER_REPORT
    event = events.appended[0]
    assert len(event.data["rule"]) == MAX_RULE
    assert event.data["count"] == 1_000_000
    assert abs(event.at.timestamp() - time.time()) < 60
