"""The control plane is SIGKILLed and restarted on the same data directory and database.

Its sandboxes are in every state a crash can find them in: idle, with an exec running,
just created (Start answered, the runner may or may not have it yet), ended before the
crash, and ending while the control plane is away. After the restart the runner must be
healthy again within 10 s, every sandbox listed (List and Get) with its true status, exec
and files must work, files written before the crash must read back, and the client of the
interrupted exec must have been told (a gRPC status or an error frame, never a hang).
"""

from __future__ import annotations

import time

import grpc

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    RECOVERY,
    Cluster,
    RunningExec,
    sandbox_pids,
    wait_until,
)

# Exits with 6 four seconds after it starts: it ends while the control plane is down.
ENDS_DURING_OUTAGE = ["sh", "-c", "sleep 4; exit 6"]
INTERRUPTED_CLIENT_BOUND = 5.0  # the interrupted exec's client hears within this


def test_controlplane_kill9_and_restart_loses_nothing(cluster: Cluster) -> None:
    gateway = cluster.gateway()
    runner = cluster.runner_id

    idle = gateway.start(runner)
    gateway.write_file(idle, "/tmp/before-crash.txt", b"written before the crash\n")
    assert gateway.exec(idle, "sh", "-c", "echo via exec > /tmp/exec-before.txt").ok

    ended = gateway.start(runner, argv=["sh", "-c", "exit 5"])
    gateway.wait(ended, lambda s: s == g.SANDBOX_STATUS_COMPLETED, 30)

    busy = gateway.start(runner)
    running = RunningExec(
        gateway, busy, ["sh", "-c", "echo exec-started; exec sleep 3600"], b"exec-started"
    )
    assert running.started.wait(30), running.outcome()

    ending = gateway.start(runner, argv=ENDS_DURING_OUTAGE)
    fresh = gateway.create(runner)  # just created: Start answered, nothing waited for

    cluster.control_plane.kill()
    killed_at = time.monotonic()

    # The interrupted exec's client is told at once, with a status, not left hanging.
    assert running.ended.wait(INTERRUPTED_CLIENT_BOUND), "the exec client hangs"
    assert running.error is not None or running.frame_error, running.outcome()
    if running.error is not None:
        assert running.error.code() == grpc.StatusCode.UNAVAILABLE, running.outcome()
    assert running.ended_at - killed_at <= INTERRUPTED_CLIENT_BOUND
    running.close()

    # The sandbox that ends while the control plane is away really ends meanwhile.
    wait_until(f"{ending} ended on the host", lambda: not sandbox_pids(ending), 30)

    cluster.restart_control_plane()
    restarted_at = time.monotonic()
    cluster.wait_health(True, RECOVERY)
    assert time.monotonic() - restarted_at <= RECOVERY

    gateway = cluster.gateway()  # a new channel: the old one backs off its reconnects
    expected = {
        idle: g.SANDBOX_STATUS_RUNNING,
        busy: g.SANDBOX_STATUS_RUNNING,
        fresh: g.SANDBOX_STATUS_RUNNING,
        ended: g.SANDBOX_STATUS_COMPLETED,
        ending: g.SANDBOX_STATUS_COMPLETED,
    }
    # The just-created one may need its start (re)sent, the ended one its end reported.
    for sandbox_id, status in expected.items():
        gateway.wait(sandbox_id, lambda s, want=status: s == want, 30)  # type: ignore[misc]
    for sandbox_id, status in expected.items():
        got = gateway.get(sandbox_id)
        assert got.sandbox_status == status, got
        assert got.runner_id == runner
    assert gateway.get(ended).exit_code == 5
    assert gateway.get(ending).exit_code == 6
    listed = {s.sandbox_id: s.sandbox_status for s in gateway.list_all(include_stopped=True)}
    assert listed == expected
    running_now = {s.sandbox_id for s in gateway.list_all()}
    assert running_now == {idle, busy, fresh}

    # Files written before the crash read back; exec and files work on every live sandbox.
    assert gateway.read_file(idle, "/tmp/before-crash.txt") == b"written before the crash\n"
    assert gateway.exec(idle, "cat", "/tmp/exec-before.txt").stdout == b"via exec\n"
    for sandbox_id in (idle, busy, fresh):
        result = gateway.exec(sandbox_id, "echo", "alive")
        assert (result.exit_code, result.stdout) == (0, b"alive\n"), result
        gateway.write_file(sandbox_id, "/tmp/after-restart.txt", sandbox_id.encode())
        assert gateway.read_file(sandbox_id, "/tmp/after-restart.txt") == sandbox_id.encode()

    # The interrupted exec's process did not outlive its stream.
    def exec_gone() -> bool:
        listing = gateway.exec(busy, "ps", "-eo", "args").stdout
        return b"sleep 3600" not in listing

    wait_until("the interrupted exec's process was killed", exec_gone, 15)
