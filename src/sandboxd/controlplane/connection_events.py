"""Runners' reports of outbound connection attempts, turned into activity-trail events.

Why checked here: a runner reports what its host firewall saw, and a runner is trusted only
with its own sandboxes. An attempt naming a sandbox that is not placed on the reporting
runner is dropped (a compromised runner cannot write into another runner's sandboxes'
trails), and every field is bounded before it is stored, so a report cannot grow a row
without limit or smuggle in a value of the wrong shape.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address

from sandboxd.controlplane.events import EventLog
from sandboxd.controlplane.metrics import ControlPlaneMetrics
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.store.event_store import SandboxEvent
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["ConnectionEvents"]

log = logging.getLogger(__name__)

DECISIONS = frozenset({"allowed", "dropped", "rejected"})
MAX_PER_REPORT = 4096
MAX_RULE = 240
MAX_COUNT = 1_000_000
SKEW_SECONDS = 3600.0
"""A report time further than this from the control plane's clock is replaced by now."""


class ConnectionEvents:
    """Checks each reported attempt and appends a ``connection`` event to its sandbox's trail."""

    def __init__(
        self, events: EventLog, records: SandboxRecords, metrics: ControlPlaneMetrics | None
    ) -> None:
        self._events = events
        self._records = records
        self._metrics = metrics

    def report(self, runner_id: str, connections: runner_pb2.ConnectionLog) -> int:
        """Record ``runner_id``'s report; returns how many attempts were accepted."""
        accepted = 0
        refused = 0
        for attempt in connections.attempts[:MAX_PER_REPORT]:
            event = self._event(runner_id, attempt)
            if event is None:
                refused += 1
                continue
            self._events.append(event)
            if self._metrics is not None:
                counter = self._metrics.connection_attempts.labels(event.data["decision"])
                counter.inc(event.data["count"])
            accepted += 1
        refused += max(0, len(connections.attempts) - MAX_PER_REPORT)
        if refused:
            log.warning(
                "runner %s: %d connection attempts not recorded (not its sandboxes, or malformed)",
                runner_id,
                refused,
            )
        return accepted

    def _event(self, runner_id: str, attempt: runner_pb2.ConnectionAttempt) -> SandboxEvent | None:
        record = self._records.cached(attempt.sandbox_id)
        if record is None or record.runner_id != runner_id:
            return None
        if attempt.decision not in DECISIONS or not 0 <= attempt.port <= 65535:
            return None
        try:
            destination = str(IPv4Address(attempt.destination))
        except ValueError:
            return None
        protocol = attempt.protocol
        if not (protocol.isalnum() and len(protocol) <= 8):
            return None
        seconds = attempt.at.seconds + attempt.at.nanos / 1e9
        if abs(seconds - time.time()) > SKEW_SECONDS:
            seconds = time.time()
        data = {
            "protocol": protocol,
            "destination": destination,
            "port": attempt.port,
            "decision": attempt.decision,
            "rule": attempt.rule[:MAX_RULE],
            "count": min(max(attempt.count, 1), MAX_COUNT),
        }
        at = datetime.fromtimestamp(seconds, UTC)
        return SandboxEvent(record.sandbox_id, record.owner_org, at, "connection", runner_id, data)
