"""The control plane's database refuses writes for a while, then recovers.

Real failures (``store_fault``): SQLite on a full filesystem, a PostgreSQL server that is
stopped and started again, a PostgreSQL database turned read-only. While the store fails,
calls that must write (Start, Stop) answer UNAVAILABLE with ``CWSANDBOX_STORE_UNAVAILABLE``
and change nothing; runners stay connected and healthy (the store is not theirs to fix: no
redial); running sandboxes keep working (exec and files need no write). After recovery
nothing has diverged: the sandbox whose Stop failed still runs and works, and one whose main
process ended during the outage (its report could not be stored) is reported ended once the
reconciler takes a snapshot of the runner: at its periodic resync (every 30 s; the ``slow``
variant waits for that alone) or when something wakes it sooner (a Start on that runner).

An outage longer than the control plane's credential cache (5 s) also takes away what every
call needs to read: who the caller is. Calls must then still answer clearly (UNAVAILABLE,
``CWSANDBOX_STORE_UNAVAILABLE``), never UNKNOWN with a database driver's message, and an exec
must not wait 10 s for a runner stream that cannot authenticate.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    RECOVERY,
    Cluster,
    cpu_seconds,
    error_reason,
    rpc_error,
    sandbox_pids,
    wait_until,
)
from tests.support.gateway import Gateway
from tests.support.postgres import StoreFault

# Exits with 7 three seconds after it starts: it ends during the outage.
ENDS_DURING_OUTAGE = ["sh", "-c", "sleep 3; exit 7"]
CREDENTIAL_CACHE_SECONDS = 5.0  # identity_service.CACHE_SECONDS
# Longer than two health timeouts (a missed heartbeat would show) and than the sandbox above
# takes to end; shorter than the credential cache, which the next test outlasts.
OUTAGE_SECONDS = 4.5
RESYNC_SECONDS = 30.0  # reconciler.RESYNC_SECONDS
RESYNC_BOUND = RESYNC_SECONDS + 15
PROMPT = 3.0  # a call during an outage answers within this
BUSY_CPU_SHARE = 0.5  # of one core: more during an outage means a retry loop without pause
FAULTS = ["sqlite-disk-full", "postgresql-down", "postgresql-read-only"]
SPIN_WINDOW = 5.0
MAX_SNAPSHOT_FAILURES = 10  # logged "snapshot kept for the resync" lines in SPIN_WINDOW


class HealthWatch:
    """Samples the runner's health every 0.2 s in a thread until stopped."""

    def __init__(self, cluster: Cluster, api_key: str) -> None:
        self.samples: list[bool | None] = []
        self._cluster = cluster
        self._api_key = api_key
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append(self._cluster.runner_health(self._api_key))
            self._done.wait(0.2)

    def stop(self) -> list[bool | None]:
        self._done.set()
        self._thread.join(10)
        return self.samples


def assert_store_unavailable(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert error_reason(error) == "CWSANDBOX_STORE_UNAVAILABLE", error
    assert "database is unavailable" in (error.details() or ""), error.details()


def refused_start(gateway: Gateway, runner_id: str) -> grpc.RpcError:
    request = g.StartSandboxRequest(
        command="sleep", args=["60"], profile_names=["locked-down"], runner_ids=[runner_id]
    )
    return rpc_error(lambda: gateway.gateway.Start(request, timeout=30))


def refused_stop(gateway: Gateway, sandbox_id: str) -> grpc.RpcError:
    request = g.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=1)
    return rpc_error(lambda: gateway.gateway.Stop(request, timeout=30))


@pytest.mark.parametrize(
    "trigger",
    ["start", pytest.param("resync", marks=pytest.mark.slow)],
)
def test_store_outage_refuses_writes_keeps_runners_and_converges_after(
    faulty_cluster: tuple[Cluster, StoreFault], trigger: str
) -> None:
    cluster, fault = faulty_cluster
    gateway = cluster.gateway()
    kept = gateway.start(cluster.runner_id)
    gateway.write_file(kept, "/tmp/mark.txt", b"before the outage\n")
    connected_at = cluster.connected_at()
    assert cluster.registrations() == 1
    control_plane_pid = cluster.control_plane.pid
    # A key first used now is cached by the control plane for the whole (short) outage, so
    # this test sees what the store's failure does to writes, not to authentication (the
    # next test outlasts the cache).
    key = cluster.control_plane.create_key("admin", role="admin")
    gateway = cluster.gateway(key)
    ender = gateway.start(cluster.runner_id, argv=ENDS_DURING_OUTAGE)

    watch = HealthWatch(cluster, key)
    fault.fail()
    failed_at = time.monotonic()
    cpu_before = cpu_seconds(control_plane_pid)
    try:
        # Writes are refused, clearly and at once, and change nothing.
        assert_store_unavailable(refused_start(gateway, cluster.runner_id))
        assert_store_unavailable(refused_stop(gateway, kept))
        assert gateway.get(ender).sandbox_status == g.SANDBOX_STATUS_RUNNING
        assert sandbox_pids(ender), "it ended before the outage: the test proves nothing"
        # It ends now, and its report cannot be stored.
        wait_until(f"{ender} ended on the host", lambda: not sandbox_pids(ender), 15)
        while time.monotonic() - failed_at < OUTAGE_SECONDS:
            time.sleep(0.2)
        outage = time.monotonic() - failed_at
        busy = (cpu_seconds(control_plane_pid) - cpu_before) / outage
    finally:
        fault.recover()
    recovered_at = time.monotonic()
    samples = watch.stop()

    # The runner stayed connected and healthy throughout: same connection, no redial.
    assert samples and all(s is True for s in samples), samples
    assert cluster.connected_at() == connected_at
    assert cluster.registrations() == 1
    assert busy <= BUSY_CPU_SHARE, f"control plane used {busy:.0%} of a core during the outage"

    # Nothing diverged: the sandbox whose Stop was refused still runs, and works.
    got = gateway.get(kept)
    assert (got.sandbox_status, got.status_reason) == (g.SANDBOX_STATUS_RUNNING, ""), got
    assert gateway.exec(kept, "cat", "/tmp/mark.txt").stdout == b"before the outage\n"
    assert sandbox_pids(kept)

    def started() -> str | None:
        try:
            return gateway.start(cluster.runner_id, timeout=30)
        except grpc.RpcError as error:  # a pooled connection the outage broke fails once
            assert_store_unavailable(error)
            return None

    if trigger == "resync":  # nothing but the reconciler's periodic snapshot
        bound = RESYNC_BOUND
    else:  # a Start on that runner wakes its reconciler, which takes the snapshot it owes
        wait_until("a Start succeeds after recovery", started, 15, interval=0.5)
        bound = RECOVERY
    got = gateway.wait(ender, lambda s: s != g.SANDBOX_STATUS_RUNNING, bound)
    assert (got.sandbox_status, got.exit_code) == (g.SANDBOX_STATUS_COMPLETED, 7), got
    assert time.monotonic() - recovered_at <= bound + 15

    # Writes work again.
    again = wait_until("a Start succeeds after recovery", started, 15, interval=0.5)
    assert gateway.exec(again, "true").ok
    gateway.stop(kept)
    got = gateway.get(kept)
    assert (got.sandbox_status, got.status_reason) == (g.SANDBOX_STATUS_COMPLETED, "stopped")
    assert cluster.registrations() == 1


@pytest.mark.parametrize("store_fault", FAULTS, indirect=True)
def test_calls_during_a_long_outage_answer_clearly(
    faulty_cluster: tuple[Cluster, StoreFault],
) -> None:
    cluster, fault = faulty_cluster
    gateway = cluster.gateway()
    kept = gateway.start(cluster.runner_id)
    gateway.write_file(kept, "/tmp/mark.txt", b"before the outage\n")

    fault.fail()
    try:
        time.sleep(CREDENTIAL_CACHE_SECONDS + 1)  # the outage outlasts the credential cache
        # A read answers, or says clearly that the database is away.
        asked = time.monotonic()
        try:
            got = gateway.get(kept)
        except grpc.RpcError as error:
            assert_store_unavailable(error)
        else:
            assert got.sandbox_status == g.SANDBOX_STATUS_RUNNING, got
        assert time.monotonic() - asked <= PROMPT
        # So does an exec (the runner's own stream authenticates too), promptly.
        asked = time.monotonic()
        try:
            result = gateway.exec(kept, "cat", "/tmp/mark.txt", timeout=30)
        except grpc.RpcError as error:
            assert_store_unavailable(error)
        else:
            assert result.ok or "database" in result.error, result
            if result.ok:
                assert result.stdout == b"before the outage\n", result
        assert time.monotonic() - asked <= PROMPT
        assert_store_unavailable(refused_start(gateway, cluster.runner_id))
    finally:
        fault.recover()

    def read_back() -> bytes | None:
        result = gateway.exec(kept, "cat", "/tmp/mark.txt")
        return result.stdout if result.ok else None

    assert wait_until("exec works after recovery", read_back, 15, 0.5) == b"before the outage\n"
    assert cluster.registrations() == 1


def assert_no_spin(cluster: Cluster, window: float) -> None:
    """Over ``window`` seconds: the control plane mostly idle, its failed snapshots few."""
    proc = cluster.control_plane.proc
    assert proc is not None
    first_line = len(proc.lines)
    cpu_before = cpu_seconds(cluster.control_plane.pid)
    time.sleep(window)
    busy = (cpu_seconds(cluster.control_plane.pid) - cpu_before) / window
    failures = sum("snapshot kept for the resync" in line for line in proc.lines[first_line:])
    assert failures <= MAX_SNAPSHOT_FAILURES and busy <= BUSY_CPU_SHARE, (
        f"in {window:.0f} s: {failures} failed snapshots, {busy:.0%} of a core"
    )


@pytest.mark.parametrize("store_fault", ["sqlite-disk-full", "postgresql-read-only"], indirect=True)
def test_a_runner_registering_during_an_outage_does_not_make_the_control_plane_spin(
    faulty_cluster: tuple[Cluster, StoreFault],
) -> None:
    """A report that cannot be stored waits for the store, it is not retried in a loop.

    (Only the faults under which reads work: a runner registering needs its credential read;
    see the test above for a PostgreSQL server that is down.)
    """
    cluster, fault = faulty_cluster
    gateway = cluster.gateway()
    ender = gateway.start(cluster.runner_id, argv=ENDS_DURING_OUTAGE)
    fault.fail()
    try:
        wait_until(f"{ender} ended on the host", lambda: not sandbox_pids(ender), 15)
        cluster.runner.kill()
        cluster.runner.start()  # its registration carries a snapshot the store cannot take
        cluster.wait_health(True, RECOVERY)
        assert_no_spin(cluster, SPIN_WINDOW)
    finally:
        fault.recover()
    got = gateway.wait(ender, lambda s: s != g.SANDBOX_STATUS_RUNNING, RESYNC_BOUND)
    assert (got.sandbox_status, got.exit_code) == (g.SANDBOX_STATUS_COMPLETED, 7), got


@pytest.mark.slow
def test_an_outage_longer_than_the_resync_does_not_make_the_control_plane_spin(
    faulty_cluster: tuple[Cluster, StoreFault],
) -> None:
    cluster, fault = faulty_cluster
    gateway = cluster.gateway()
    ender = gateway.start(cluster.runner_id, argv=ENDS_DURING_OUTAGE)
    fault.fail()
    try:
        wait_until(f"{ender} ended on the host", lambda: not sandbox_pids(ender), 15)
        time.sleep(RESYNC_SECONDS)  # the reconciler's periodic resync comes in this time
        assert_no_spin(cluster, SPIN_WINDOW)
    finally:
        fault.recover()
    got = gateway.wait(ender, lambda s: s != g.SANDBOX_STATUS_RUNNING, RESYNC_BOUND)
    assert (got.sandbox_status, got.exit_code) == (g.SANDBOX_STATUS_COMPLETED, 7), got
