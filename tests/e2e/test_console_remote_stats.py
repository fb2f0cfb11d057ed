"""The console's resource graphs for a sandbox whose runner is another process on another host.

A ``sandboxd controlplane`` with the console, and a ``sandboxd runner`` in a network namespace
of its own (``tests/support/hosts.py``): the numbers come from that runner's cgroup reads,
asked over its control stream, not from anything in the control plane's process. When the
runner is gone (SIGKILL), the page says the numbers are not reachable instead of showing
zeros.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.console import Console
from tests.support.faults import UNHEALTHY_BOUND, Cluster, start_cluster, wait_until
from tests.support.hosts import HostNetwork
from tests.support.ports import free_port

# Holds about 24 MiB of memory so the graph has something to show.
HOLD = "python3 -c 'import time; b = bytearray(24 << 20); time.sleep(600)'"


@pytest.fixture
def cluster(test_network: HostNetwork, tmp_path: Path) -> Iterator[Cluster]:
    console = ("--console-listen", f"127.0.0.1:{free_port()}", "--log-level", "INFO")
    with start_cluster(test_network, tmp_path, "", control_plane_args=console) as running:
        yield running


def test_graphs_come_from_the_remote_runner_and_say_when_it_is_away(cluster: Cluster) -> None:
    assert cluster.control_plane.proc is not None
    console = Console.of(cluster.control_plane.proc)
    gateway = cluster.gateway()
    sandbox_id = gateway.start(cluster.runner_id, argv=["/bin/sh", "-c", HOLD])
    with console.signed_in(cluster.control_plane.admin_key) as admin:

        def stats() -> dict[str, object]:
            return dict(admin.get(f"api/sandboxes/{sandbox_id}/stats").json())

        def holding() -> dict[str, object] | None:
            read = stats()
            memory = read.get("memory_bytes", 0)
            return (
                read
                if read.get("available") and isinstance(memory, int) and memory > 20 << 20
                else None
            )

        read = wait_until("the runner's numbers, with the held memory", holding, 30)
        assert read["pids"] and int(str(read["pids"])) >= 1
        assert read["status"] == "SANDBOX_STATUS_RUNNING"

        cluster.runner.kill()
        cluster.wait_health(False, UNHEALTHY_BOUND + 2)
        away = stats()
        assert away["available"] is False and "memory_bytes" not in away
