"""Pause across faults: a runner SIGKILLed while its sandbox is paused, a pause asked for
while the runner is away, and a control plane restarted in between.

The pause lives in the kernel (the sandbox's freezer cgroup) and in the database (desired
state), never only in a process's memory: a restarted runner reads the freezer and reports
the sandbox PAUSED, a restarted control plane reads it from its records, and a pause
recorded while the runner was away is carried out by the reconciler when it returns.
"""

from __future__ import annotations

import time

import grpc

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    RECOVERY,
    UNHEALTHY_BOUND,
    Cluster,
    error_reason,
    rpc_error,
    sandbox_pids,
    wait_idle,
    wait_until,
)
from tests.support.gateway import IDLE, Gateway
from tests.support.pausing import cpu_usage_ns, frozen

COUNTER = """
import os
n = 0
while True:
    n += 1
    if n % 20000 == 0:
        open("/tmp/count.new", "w").write(str(n))
        os.replace("/tmp/count.new", "/tmp/count")
"""


def _count(gateway: Gateway, sandbox_id: str) -> int:
    try:
        return int(gateway.read_file(sandbox_id, "/tmp/count") or b"0")
    except grpc.RpcError:
        return 0


def _pause(gateway: Gateway, sandbox_id: str, wait: int = 0) -> None:
    request = g.PauseSandboxRequest(sandbox_id=sandbox_id, max_timeout_seconds=wait)
    assert gateway.gateway.Pause(request, timeout=60).success


def _resume(gateway: Gateway, sandbox_id: str) -> None:
    request = g.ResumeSandboxRequest(sandbox_id=sandbox_id)
    assert gateway.gateway.Resume(request, timeout=60).success


def test_a_paused_sandbox_stays_paused_through_a_runner_kill9(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    sid = gateway.start(cluster.runner_id, argv=["python", "-c", COUNTER])
    wait_until("the counter", lambda: _count(gateway, sid) > 0, 60)
    _pause(gateway, sid)
    assert frozen(sid)

    cluster.runner.kill()
    cluster.wait_health(False, UNHEALTHY_BOUND + 2)
    assert frozen(sid), "the runner's death thawed the sandbox"
    used = cpu_usage_ns(sid)

    cluster.runner.start()  # same state directory: it re-adopts the sandbox
    cluster.wait_health(True, RECOVERY)
    got = gateway.get(sid)
    assert got.sandbox_status == g.SANDBOX_STATUS_PAUSED, got
    assert got.status_reason == "", got
    began = time.monotonic()
    refused = gateway.exec(sid, "true", timeout=10)
    assert refused.error.startswith("SANDBOX_PAUSED:"), refused
    assert time.monotonic() - began < 10
    assert frozen(sid) and cpu_usage_ns(sid) - used < 5_000_000, "it ran while paused"

    # The control plane restarts too: the pause is in its records.
    cluster.control_plane.kill()
    cluster.restart_control_plane()
    cluster.wait_health(True, RECOVERY)
    gateway = cluster.gateway()
    assert gateway.get(sid).sandbox_status == g.SANDBOX_STATUS_PAUSED
    assert frozen(sid)

    _resume(gateway, sid)
    assert not frozen(sid)
    at_resume = _count(gateway, sid)
    assert at_resume > 0, "the counter started over"
    wait_until("the counter going on", lambda: _count(gateway, sid) > at_resume, 60)
    assert gateway.exec(sid, "echo", "alive").stdout == b"alive\n"


def test_a_pause_asked_while_the_runner_is_away_happens_when_it_returns(
    cluster: Cluster,
) -> None:
    gateway = cluster.gateway()
    sid = gateway.start(cluster.runner_id, argv=IDLE)
    wait_idle(sid)  # its shell exits 0 on SIGTERM only once it set its trap
    cluster.runner.kill()
    cluster.wait_health(False, UNHEALTHY_BOUND + 2)

    error = rpc_error(
        lambda: gateway.gateway.Pause(
            g.PauseSandboxRequest(sandbox_id=sid, max_timeout_seconds=2), timeout=30
        )
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert error_reason(error) == "CWSANDBOX_RUNNER_UNAVAILABLE"
    assert "will be when its runner answers" in (error.details() or ""), error.details()
    got = gateway.get(sid)
    assert got.sandbox_status == g.SANDBOX_STATUS_RUNNING, got  # not paused yet: the truth
    assert "is unreachable" in got.status_reason, got
    assert not frozen(sid)
    refused = gateway.exec(sid, "true", timeout=10)  # but nothing runs in it meanwhile
    assert refused.error.startswith("SANDBOX_PAUSED:"), refused

    cluster.runner.start()
    cluster.wait_health(True, RECOVERY)
    gateway.wait(sid, lambda s: s == g.SANDBOX_STATUS_PAUSED, RECOVERY)
    assert frozen(sid)

    # A paused sandbox stops: thawed first, so its main process gets SIGTERM (it exits 0).
    began = time.monotonic()
    gateway.stop(sid, grace_seconds=10)
    assert time.monotonic() - began < 8, "the stop waited out its grace"
    got = gateway.get(sid)
    assert (got.sandbox_status, got.exit_code) == (g.SANDBOX_STATUS_COMPLETED, 0), got
    wait_until(f"{sid} gone from the host", lambda: not sandbox_pids(sid), 10)
