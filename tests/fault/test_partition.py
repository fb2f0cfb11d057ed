"""The network between a runner's host and the control plane fails, then heals.

A partition (``Host.cut()``: the router drops every packet to and from the host; nobody is
told) leaves the runner and its sandboxes running. While it lasts the control plane must
report the runner unhealthy within its health timeout, say in each of its sandboxes' status
reason that the runner is unreachable and since when, and accept a Stop (it is recorded and
takes effect when the runner answers). Once the link is back and the runner is reported
healthy, exec and file calls must work at once: the *first* exec after healthy must succeed
(the issue found "did not open the exec stream in time" right after a partition healed).

Three cuts: a partition shorter than the control plane's HTTP/2 keepalive (5 s ping, 5 s
timeout), so the same connection resumes; a pulled cable (``cut("link")``) of 6 s, restored
just before that keepalive gives up on the connection, which the runner's heartbeats have
already revived; and a partition longer than the keepalive (``slow``), after which the
runner must redial, late (its TCP backs off; ``tests/support/hosts.py``).
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    RECOVERY,
    UNHEALTHY_BOUND,
    Cluster,
    error_reason,
    sandbox_pids,
    wait_until,
)
from tests.support.hosts import Cut

STOP_GRACE = 1
STOP_MARGIN = 15.0  # lifecycle.STOP_MARGIN_SECONDS
FIRST_EXEC_BOUND = 3.0  # "at once": the first exec after healthy answers within this
UNREACHABLE = "its runner east is unreachable (last heard from"

# (cut length in seconds, how long the runner may take to be healthy after the restore)
SHORT = (4.0, RECOVERY)
# Longer than the keepalive: the runner learns its stream is gone only when a backed-off
# retransmission reaches the control plane (measured 12 s after a 15 s cut; hosts.py).
LONG = (15.0, 15.0 + RECOVERY)


class Stopper:
    """A Stop call in a thread (it waits for the end, which needs the runner)."""

    def __init__(self, cluster: Cluster, sandbox_id: str) -> None:
        self.outcome: list[grpc.RpcError | None] = []
        self._gateway = cluster.gateway()
        self._sandbox_id = sandbox_id
        self._thread = threading.Thread(target=self._stop, daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        try:
            self._gateway.stop(self._sandbox_id, STOP_GRACE, timeout=STOP_GRACE + STOP_MARGIN + 30)
            self.outcome.append(None)
        except grpc.RpcError as error:
            self.outcome.append(error)

    def result(self) -> grpc.RpcError | None:
        self._thread.join(STOP_GRACE + STOP_MARGIN + 35)
        assert self.outcome, "Stop never answered"
        return self.outcome[0]


@pytest.mark.parametrize(
    "how, cut_seconds, heal_bound",
    [
        pytest.param("drop", *SHORT, id="short"),
        # Heartbeats resume on the old connection while the control plane's sends on it
        # are still in TCP backoff: the runner is asked to redial before it reads healthy,
        # and an open lost with the old connection is sent again on the new one.
        pytest.param("link", 6.0, RECOVERY, id="link-6s"),
        pytest.param("drop", *LONG, id="long", marks=pytest.mark.slow),
    ],
)
def test_partition_then_heal(
    cluster: Cluster, how: Cut, cut_seconds: float, heal_bound: float
) -> None:
    gateway = cluster.gateway()
    kept = gateway.start(cluster.runner_id)
    stopped = gateway.start(cluster.runner_id)
    gateway.write_file(kept, "/tmp/mark.txt", b"before the cut\n")

    cluster.host.cut(how)
    cut_at = time.monotonic()
    cluster.wait_health(False, UNHEALTHY_BOUND + 2)
    assert time.monotonic() - cut_at <= UNHEALTHY_BOUND

    got = gateway.get(kept)
    assert got.sandbox_status == g.SANDBOX_STATUS_RUNNING, got
    assert UNREACHABLE in got.status_reason, got.status_reason

    stopper = Stopper(cluster, stopped)
    got = gateway.wait(stopped, lambda s: s == g.SANDBOX_STATUS_TERMINATING, 10)
    assert UNREACHABLE in got.status_reason, got.status_reason
    # Nothing crosses the cut: both sandboxes still run on the host.
    assert sandbox_pids(kept) and sandbox_pids(stopped)

    while time.monotonic() - cut_at < cut_seconds:  # hold the cut; nothing changes meanwhile
        assert cluster.runner_health() is False
        time.sleep(0.2)
    cluster.host.restore()
    restored_at = time.monotonic()
    cluster.wait_health(True, heal_bound)
    healthy_at = time.monotonic()

    # The first exec after healthy works, at once (no retry).
    result = gateway.exec(kept, "cat", "/tmp/mark.txt", timeout=FIRST_EXEC_BOUND + 10)
    assert (result.exit_code, result.stdout, result.error) == (0, b"before the cut\n", ""), (
        f"first exec {time.monotonic() - healthy_at:.1f} s after healthy: {result}"
    )
    assert time.monotonic() - healthy_at <= FIRST_EXEC_BOUND
    assert gateway.read_file(kept, "/tmp/mark.txt") == b"before the cut\n"
    gateway.write_file(kept, "/tmp/after.txt", b"after the cut\n")
    assert gateway.exec(kept, "cat", "/tmp/after.txt").stdout == b"after the cut\n"
    assert time.monotonic() - restored_at <= heal_bound + FIRST_EXEC_BOUND
    got = gateway.get(kept)
    assert (got.sandbox_status, got.status_reason) == (g.SANDBOX_STATUS_RUNNING, ""), got

    # The Stop issued during the cut took effect, and its caller was told clearly.
    got = gateway.wait(stopped, lambda s: s != g.SANDBOX_STATUS_TERMINATING, RECOVERY)
    assert (got.sandbox_status, got.status_reason) == (g.SANDBOX_STATUS_COMPLETED, "stopped")
    wait_until(f"{stopped} gone from the host", lambda: not sandbox_pids(stopped), 10)
    error = stopper.result()
    if error is not None:  # the cut outlasted the Stop's wait
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert error_reason(error) == "CWSANDBOX_RUNNER_UNAVAILABLE", error
        assert "the stop is recorded" in (error.details() or ""), error
