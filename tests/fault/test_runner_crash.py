"""A runner is SIGKILLed and restarted on the same state directory.

Its sandboxes keep running without it (they belong to their keepers, not to the runner
process). The control plane must report the runner unhealthy within its health timeout and
say so in the status reason of its sandboxes, accept a Stop meanwhile (recorded, and
answered UNAVAILABLE saying so when the runner does not come back in time), and after the
restart the sandboxes must be re-adopted and usable, and the stopped one stopped.

When the sandbox's processes died too (its host went down with them: here its keeper and
its processes are SIGKILLed while the runner is down), it must read FAILED with a reason
that says so, not COMPLETED with the 137 of a kill.
"""

from __future__ import annotations

import re
import threading
import time

import grpc

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    HEALTH_TIMEOUT,
    RECOVERY,
    UNHEALTHY_BOUND,
    Cluster,
    error_reason,
    keeper_of,
    kill,
    rpc_error,
    sandbox_pids,
    wait_until,
)
from tests.support.hosts import prepared_claims

STOP_GRACE = 1
# lifecycle.STOP_MARGIN_SECONDS: how long a Stop waits past its grace for the end.
STOP_MARGIN = 15.0
UNREACHABLE = "its runner east is unreachable (last heard from"


def test_runner_kill9_stop_while_down_and_restart_readopts(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    kept = gateway.start(cluster.runner_id)
    stopped = gateway.start(cluster.runner_id)
    gateway.write_file(kept, "/tmp/mark.txt", b"kept\n")

    cluster.runner.kill()
    killed_at = time.monotonic()
    cluster.wait_health(False, UNHEALTHY_BOUND + 2)
    assert time.monotonic() - killed_at <= UNHEALTHY_BOUND
    # The runner's death is no sandbox's: their processes run on.
    assert sandbox_pids(kept) and sandbox_pids(stopped)

    got = gateway.get(kept)
    assert got.sandbox_status == g.SANDBOX_STATUS_RUNNING, got
    assert UNREACHABLE in got.status_reason, got.status_reason

    # A Stop while the runner is down: recorded (the sandbox reads TERMINATING at once), and
    # answered UNAVAILABLE saying so once its grace and margin passed without the runner.
    asked_at = time.monotonic()
    error = rpc_error(
        lambda: gateway.gateway.Stop(
            g.StopSandboxRequest(sandbox_id=stopped, graceful_shutdown_seconds=STOP_GRACE),
            timeout=STOP_GRACE + STOP_MARGIN + 20,
        )
    )
    waited = time.monotonic() - asked_at
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert error_reason(error) == "CWSANDBOX_RUNNER_UNAVAILABLE", error
    assert "the stop is recorded and takes effect when the runner answers" in (
        error.details() or ""
    ), error.details()
    assert waited <= STOP_GRACE + STOP_MARGIN + 3, waited
    got = gateway.get(stopped)
    assert got.sandbox_status == g.SANDBOX_STATUS_TERMINATING, got
    assert UNREACHABLE in got.status_reason, got.status_reason
    assert sandbox_pids(stopped)  # nobody stopped it yet: its runner is down

    cluster.runner.start()  # same state directory: same id, credential and sandboxes
    restarted_at = time.monotonic()
    cluster.wait_health(True, RECOVERY)
    result = gateway.exec(kept, "cat", "/tmp/mark.txt")  # the first exec after healthy
    assert (result.exit_code, result.stdout) == (0, b"kept\n"), result
    assert gateway.read_file(kept, "/tmp/mark.txt") == b"kept\n"
    assert time.monotonic() - restarted_at <= RECOVERY
    got = gateway.get(kept)
    assert (got.sandbox_status, got.status_reason) == (g.SANDBOX_STATUS_RUNNING, ""), got

    # The recorded stop takes effect: stopped, with its reason, and gone from the host.
    got = gateway.wait(stopped, lambda s: s != g.SANDBOX_STATUS_TERMINATING, RECOVERY)
    assert got.sandbox_status == g.SANDBOX_STATUS_COMPLETED, got
    assert got.status_reason == "stopped", got
    assert got.exit_code == 0, got  # its main process exits 0 on SIGTERM
    wait_until(f"{stopped} gone from the host", lambda: not sandbox_pids(stopped), 10)


def test_unreachable_reason_says_when_the_runner_was_last_heard_from(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    sandbox_id = gateway.start(cluster.runner_id)
    cluster.runner.kill()
    cluster.wait_health(False, UNHEALTHY_BOUND + 2)
    reason = gateway.get(sandbox_id).status_reason
    assert re.fullmatch(
        r"its runner east is unreachable \(last heard from \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)",
        reason,
    ), reason


def test_a_stop_waiting_for_a_killed_runner_succeeds_when_it_returns(cluster: Cluster) -> None:
    """The other answer a Stop can get: the runner comes back within its wait, so success."""
    gateway = cluster.gateway()
    sandbox_id = gateway.start(cluster.runner_id)
    cluster.runner.kill()
    cluster.wait_health(False, UNHEALTHY_BOUND + 2)

    outcome: list[object] = []

    def stop() -> None:
        try:
            gateway.stop(sandbox_id, grace_seconds=STOP_GRACE, timeout=60)
            outcome.append(None)
        except grpc.RpcError as error:
            outcome.append(error)

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    gateway.wait(sandbox_id, lambda s: s == g.SANDBOX_STATUS_TERMINATING, 10)
    cluster.runner.start()
    stopper.join(STOP_GRACE + STOP_MARGIN + 10)
    assert outcome == [None], outcome
    got = gateway.get(sandbox_id)
    assert (got.sandbox_status, got.status_reason) == (g.SANDBOX_STATUS_COMPLETED, "stopped")
    assert not sandbox_pids(sandbox_id)


def test_sandbox_that_died_with_its_host_is_failed_not_completed(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    survivor = gateway.start(cluster.runner_id)
    victim = gateway.start(cluster.runner_id)

    cluster.runner.kill()
    # The host "goes down" under the sandbox: its keeper first (so nobody records an exit
    # status), then every process of the sandbox.
    kill([keeper_of(victim)])
    kill(sandbox_pids(victim))
    wait_until(f"{victim} has no process left", lambda: not sandbox_pids(victim), 10)
    cluster.wait_health(False, HEALTH_TIMEOUT + 5)

    cluster.runner.start()
    cluster.wait_health(True, RECOVERY)
    got = gateway.wait(victim, lambda s: s != g.SANDBOX_STATUS_RUNNING, RECOVERY)
    assert got.sandbox_status == g.SANDBOX_STATUS_FAILED, got
    assert "died with their host" in got.status_reason, got.status_reason
    assert not got.HasField("exit_code") or got.exit_code != 137, got
    # Its neighbour, whose processes lived on, was re-adopted and works.
    assert gateway.get(survivor).sandbox_status == g.SANDBOX_STATUS_RUNNING
    assert gateway.exec(survivor, "true").ok


def test_a_restarted_runner_gives_back_what_its_predecessor_prepared(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    sandbox_id = gateway.start(cluster.runner_id)  # its zygote now prepares ranges ahead
    gateway.delete(sandbox_id)
    gateway.started.remove(sandbox_id)
    backend_dir = cluster.runner.state_dir / "backend"
    wait_until("ranges prepared ahead", lambda: prepared_claims(backend_dir), 10)

    cluster.runner.kill()
    cluster.runner.start()
    cluster.wait_health(True, RECOVERY)
    assert cluster.runner.stop() == 0  # a clean stop (SIGTERM), before any create
    leaked = [f"{path}: {path.read_text().strip()}" for path in prepared_claims(backend_dir)]
    assert leaked == [], leaked
