"""A runner is SIGKILLed while creates wait their turn for the backend, then restarted.

The runner builds at most ``--max-concurrent-creates`` cold creates at once and queues the
rest in memory (``sandboxd.runner.create_slots``), each with its reservation and its runner
record already made. A kill loses the queue. After the restart every sandbox that was
waiting must still be created, exactly once, and run: nothing the control plane accepted
may be lost with the runner's memory. The one being built at the kill dies with it (a
half-built sandbox cannot be finished by anyone); it must read FAILED saying so, not
COMPLETED with the 137 of a kill, as it did before (found by this test), nor as a sandbox
whose host went down. Depending on how far its build got it may have had no process on the
host yet at the kill, so it may be any one of those the test saw waiting.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import RECOVERY, sandboxes_on_host, start_cluster, wait_until
from tests.support.gateway import ExecResult
from tests.support.hosts import HostNetwork

COUNT = 12
STARTING = (g.SANDBOX_STATUS_PENDING, g.SANDBOX_STATUS_CREATING)
CUT_SHORT = "lost while the runner restarted"
SLEEPS = "grep -l '^sleep$' /proc/[0-9]*/comm | wc -l"  # in the sandbox's PID namespace


def test_creates_waiting_their_turn_when_the_runner_is_killed_all_run_after_its_restart(
    test_network: HostNetwork, database_url: str, tmp_path: Path
) -> None:
    with start_cluster(
        test_network, tmp_path, database_url, runner_args=["--max-concurrent-creates", "1"]
    ) as cluster:
        gateway = cluster.gateway()
        with ThreadPoolExecutor(COUNT) as pool:  # all at once: one builds, the rest queue
            ids = list(pool.map(lambda _: gateway.create(cluster.runner_id), range(COUNT)))
        wait_until("a first sandbox on the host", lambda: sandboxes_on_host(ids), 30, interval=0.01)
        cluster.runner.kill()
        built = sandboxes_on_host(ids)
        waiting = [s for s in ids if s not in built]
        # One build at a time: of those not on the host, all but one at most were queued.
        assert len(waiting) >= 2, f"only {len(waiting)} of {COUNT} not yet built at the kill"

        cluster.runner.start()  # same state directory: same id, credential and records
        cluster.wait_health(True, RECOVERY)
        cut_short = []
        for sandbox_id in ids:
            got = gateway.wait(sandbox_id, lambda s: s not in STARTING, 60)
            if got.sandbox_status == g.SANDBOX_STATUS_FAILED and got.status_reason == CUT_SHORT:
                cut_short.append(sandbox_id)  # the one being built when the runner died
                continue
            assert got.sandbox_status == g.SANDBOX_STATUS_RUNNING, (sandbox_id, got)
            # Started exactly once: one main process, whose shell runs one ``sleep``. The
            # shell forks it a moment after the sandbox reads RUNNING (CI once saw none yet).

            def counted(sid: str = sandbox_id) -> ExecResult | None:
                result = gateway.exec_until_ok(sid, "sh", "-c", SLEEPS)
                return result if result.stdout != b"0\n" else None

            result = wait_until(f"a sleep in {sandbox_id}", counted, 10, interval=0.05)
            assert (result.exit_code, result.stdout) == (0, b"1\n"), (sandbox_id, result)
        assert len(cut_short) <= 1, cut_short  # one build at a time
