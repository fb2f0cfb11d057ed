"""Runners on two "hosts" (network namespaces), a control plane in the root namespace.

Real processes and real sandboxes throughout: ``sandboxd controlplane`` listens on the test
network's address, each ``sandboxd runner`` runs inside its host's namespace and dials it
through the test router (``tests/support/hosts.py``), sandboxes are the local backend's
(egress ``none``, the embedded ``locked-down`` profile). Faults are real too: a cut link
drops packets in the router, a crash is SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from sandboxd.images import ImageStore, build_python_image
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.gateway import Gateway
from tests.support.hosts import Cut, Host, HostNetwork
from tests.support.processes import ControlPlaneProcess, DiscoveryClient, RunnerProcess

HEALTH_TIMEOUT = 2.0  # short, so a partition shows within seconds
RECOVERY = 10.0  # a restored or restarted runner is healthy and usable within this


@dataclass
class TwoHosts:
    network: HostNetwork
    control_plane: ControlPlaneProcess
    discovery: DiscoveryClient
    gateway: Gateway
    hosts: dict[str, Host]  # runner id -> its host
    runners: dict[str, RunnerProcess]


def prepare_image(state_dir: Path) -> None:
    """``python:3.11`` in a runner's image store (a link into the machine-wide build cache)."""
    build_python_image(ImageStore(state_dir), progress=lambda _line: None)


@pytest.fixture
def two_hosts(test_network: HostNetwork, tmp_path: Path) -> Iterator[TwoHosts]:
    """A control plane (health timeout 2 s) and runners ``east`` and ``west`` on two hosts.

    ``test_network`` stops the runners and reaps whatever sandboxes are left, also when a
    test or this fixture fails half-way.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root for the local backend")
    cp = test_network.control_plane(tmp_path / "cp", health_timeout=HEALTH_TIMEOUT)
    gateway: Gateway | None = None
    try:
        cp.start()
        hosts = {"east": test_network.add_host(), "west": test_network.add_host()}
        runners = {}
        for runner_id, host in hosts.items():
            prepare_image(tmp_path / runner_id)
            runners[runner_id] = host.runner(cp, tmp_path / runner_id, runner_id=runner_id)
            runners[runner_id].start()
        gateway = Gateway(cp)
        with cp.discovery() as discovery:
            for runner_id in runners:
                discovery.wait_for(runner_id, healthy=True, timeout=60)
            yield TwoHosts(test_network, cp, discovery, gateway, hosts, runners)
            # Delete the sandboxes the normal way, through the control plane, once every
            # runner is back; this also checks the test left a working cluster behind.
            for host in hosts.values():
                host.restore()
            for runner_id, runner in runners.items():
                if runner.proc is None or runner.proc.popen.poll() is not None:
                    runner.start()
                discovery.wait_for(runner_id, healthy=True, timeout=30)
            assert gateway.delete_started() == []
    finally:
        if gateway is not None:
            gateway.close()
        if cp.proc is not None:
            cp.stop()


def backend_cgroup_group(state_dir: Path) -> str:
    """The cgroup group the local backend of a runner with ``state_dir`` puts sandboxes in."""
    data_dir = (state_dir / "backend").absolute()
    return "sandboxd-" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:8]


def cgroup_of(pid: int) -> str:
    """``pid``'s cgroup path in the pids hierarchy (v1) or the unified one (v2)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    by_controller = {line.split(":")[1]: line.split(":", 2)[2] for line in lines}
    return by_controller.get("pids") or by_controller[""]


def sandbox_pid(sandbox_id: str) -> int:
    """A host PID of a process in the sandbox's cgroup (its path carries the sandbox id)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if sandbox_id in Path(f"/proc/{entry}/cgroup").read_text():
                    return int(entry)
            except OSError:
                continue
    raise AssertionError(f"no process of {sandbox_id} on this machine")


def test_runners_on_two_hosts_register_and_run_sandboxes(two_hosts: TwoHosts) -> None:
    cluster = two_hosts
    listed = {r.runner_id: r for r in cluster.discovery.all_runners()}
    assert set(listed) == {"east", "west"} and all(r.healthy for r in listed.values())
    sandboxes = {runner_id: cluster.gateway.start(runner_id) for runner_id in cluster.hosts}
    for runner_id, sandbox_id in sandboxes.items():
        got = cluster.gateway.get(sandbox_id)
        assert got.runner_id == runner_id
        result = cluster.gateway.exec(sandbox_id, "sh", "-c", "echo hello from $0", runner_id)
        assert (result.exit_code, result.stdout) == (0, f"hello from {runner_id}\n".encode())
        # Each runner's sandboxes live in its own cgroup group (keyed by its data directory),
        # so two runners on one machine never share or clean up each other's.
        group = backend_cgroup_group(cluster.runners[runner_id].state_dir)
        cgroup = cgroup_of(sandbox_pid(sandbox_id))
        assert f"/{group}/{sandbox_id}" in cgroup, cgroup
    assert backend_cgroup_group(cluster.runners["east"].state_dir) != backend_cgroup_group(
        cluster.runners["west"].state_dir
    )
    # The runners dial from their own hosts' addresses, not from this namespace.
    for host in cluster.hosts.values():
        sockets = host.run("ss", "-Htn", "state", "established").stdout
        sockets = sockets.replace("[::ffff:", "").replace("]", "")  # IPv4-mapped addresses
        local, peer = f"{host.address}:", f"{cluster.control_plane.target}"
        assert any(local in line and peer in line for line in sockets.splitlines()), sockets


def test_a_cut_host_turns_unhealthy_the_other_keeps_working_and_it_recovers(
    two_hosts: TwoHosts,
) -> None:
    cluster = two_hosts
    east = cluster.gateway.start("east")
    west = cluster.gateway.start("west")

    cluster.hosts["east"].cut()  # packets dropped in the router: a partition
    cut_at = time.monotonic()
    lost, _ = cluster.discovery.wait_for("east", healthy=False, timeout=HEALTH_TIMEOUT + 5)
    assert time.monotonic() - cut_at <= HEALTH_TIMEOUT + 1.5  # the heartbeat timeout, not TCP's

    # The other host is untouched: healthy, exec works, new sandboxes land there.
    assert cluster.discovery.get_runner("west").healthy
    assert cluster.gateway.exec(west, "echo", "still here").stdout == b"still here\n"
    another = cluster.gateway.start("west")
    assert cluster.gateway.exec(another, "true").ok
    # Nothing is placed on the unhealthy runner; the refusal names it.
    with pytest.raises(grpc.RpcError) as refused:
        cluster.gateway.start("east", timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    assert "east" in (refused.value.details() or "")

    cluster.hosts["east"].restore()
    restored_at = time.monotonic()
    back, _ = cluster.discovery.wait_for("east", healthy=True, timeout=RECOVERY)
    result = cluster.gateway.exec_until_ok(east, "echo", "back", timeout=RECOVERY)
    assert result.stdout == b"back\n"
    assert time.monotonic() - restored_at <= RECOVERY
    assert back.runner_id == lost.runner_id == "east"
    assert cluster.gateway.get(east).sandbox_status == g.SANDBOX_STATUS_RUNNING


def test_a_killed_runner_restarts_on_its_state_dir_and_readopts_its_sandbox(
    two_hosts: TwoHosts,
) -> None:
    cluster = two_hosts
    sandbox_id = cluster.gateway.start("east")
    assert cluster.gateway.exec(sandbox_id, "sh", "-c", "echo kept > /tmp/mark").ok
    runner = cluster.runners["east"]
    runner.kill()  # SIGKILL of the runner itself: no goodbye, its sandbox keeps running
    cluster.discovery.wait_for("east", healthy=False, timeout=HEALTH_TIMEOUT + 5)
    assert cluster.discovery.get_runner("west").healthy

    runner.start()  # same state directory: same id, credential and sandboxes
    restarted_at = time.monotonic()
    cluster.discovery.wait_for("east", healthy=True, timeout=RECOVERY)
    result = cluster.gateway.exec_until_ok(sandbox_id, "cat", "/tmp/mark", timeout=RECOVERY)
    assert result.stdout == b"kept\n"  # the same sandbox, not a new one
    assert time.monotonic() - restarted_at <= RECOVERY
    assert cluster.gateway.get(sandbox_id).sandbox_status == g.SANDBOX_STATUS_RUNNING


LONG_CUT = 15.0  # longer than the control plane's keepalive (5 s ping + 5 s timeout)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["drop", "link"])
def test_a_cut_longer_than_keepalive_ends_the_stream_and_the_runner_redials(
    two_hosts: TwoHosts, how: Cut
) -> None:
    """After a long cut the control plane has closed the runner's stream; the runner redials.

    How soon depends on what the runner's TCP sees (measured: ``link`` about 1 s after the
    restore, ``drop`` about 12 s after a 15 s cut). A pulled cable makes its sends fail
    locally, which TCP retries every 0.5 s without backing off. A partition loses them
    silently: TCP backs off exponentially, and the runner, which sends no keepalive pings of
    its own, learns that its stream is gone only when the next retransmission reaches the
    control plane and is answered with a reset. The longer the partition, the longer that
    wait (up to TCP's give-up after ~15 minutes).
    """
    cluster = two_hosts
    sandbox_id, west = cluster.gateway.start("east"), cluster.gateway.start("west")
    before = cluster.discovery.get_runner("east").connected_at.ToDatetime()
    host = cluster.hosts["east"]
    host.cut(how)
    cut_at = time.monotonic()
    cluster.discovery.wait_for("east", healthy=False, timeout=HEALTH_TIMEOUT + 5)
    while time.monotonic() - cut_at < LONG_CUT:  # hold the cut; west keeps working meanwhile
        assert cluster.gateway.exec(west, "true").ok
        time.sleep(0.5)
    host.restore()
    restored_at = time.monotonic()
    bound = RECOVERY if how == "link" else LONG_CUT + RECOVERY
    back, _ = cluster.discovery.wait_for("east", healthy=True, timeout=bound)
    assert back.connected_at.ToDatetime() > before  # a new stream, not the old one resumed
    assert cluster.gateway.exec_until_ok(sandbox_id, "echo", "ok", timeout=RECOVERY).ok
    assert time.monotonic() - restored_at <= bound + 1
