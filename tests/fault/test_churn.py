"""Many create → exec → stop → delete cycles leave nothing behind and no memory growth.

Each cycle starts a sandbox with egress ``internet`` (the ``default`` profile), so it gets
every resource a sandbox can hold on its runner's host: processes (keeper, PID 1, main),
cgroups, a named network namespace, a veth pair, firewall rules, user-id and subnet claims,
a state directory and records. After the cycles, what the runner holds on the host (see
``tests.support.faults.HostInventory``) must be what it held after the first cycle, and the
control plane's resident memory at the last cycle must be within a small bound of what it
was early on. 50 cycles run in CI; 1,000 are ``slow``.
"""

from __future__ import annotations

import time

import pytest

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import (
    Cluster,
    HostInventory,
    host_inventory,
    rss_bytes,
    wait_until,
)
from tests.support.gateway import Gateway

MIB = 1 << 20


def one_cycle(gateway: Gateway, runner_id: str) -> str:
    sandbox_id = gateway.start(runner_id, profile="default")
    result = gateway.exec(sandbox_id, "echo", sandbox_id)
    assert (result.exit_code, result.stdout) == (0, f"{sandbox_id}\n".encode()), result
    gateway.stop(sandbox_id, grace_seconds=1)
    assert gateway.get(sandbox_id).sandbox_status == g.SANDBOX_STATUS_COMPLETED
    gateway.delete(sandbox_id)
    gateway.started.remove(sandbox_id)
    return sandbox_id


def steady_inventory(cluster: Cluster, sandbox_ids: list[str]) -> HostInventory:
    """The inventory once it stopped changing for a second (the zygote refills its prepared
    user namespaces in the background after each create)."""
    last = host_inventory(cluster.host, cluster.runner, sandbox_ids)

    def unchanged() -> HostInventory | None:
        nonlocal last
        time.sleep(1.0)
        now = host_inventory(cluster.host, cluster.runner, sandbox_ids)
        steady, last = now == last, now
        return now if steady else None

    return wait_until("the runner's host is steady", unchanged, 20, 0)


@pytest.mark.parametrize(
    "cycles, early, rss_bound",
    [
        pytest.param(50, 10, 8 * MIB, id="50"),
        pytest.param(1000, 100, 16 * MIB, id="1000", marks=pytest.mark.slow),
    ],
)
def test_cycles_leak_nothing_and_memory_stays_flat(
    cluster: Cluster, cycles: int, early: int, rss_bound: int
) -> None:
    gateway = cluster.gateway()
    runner_id = cluster.runner_id
    control_plane = cluster.control_plane.pid
    # The first cycle makes what lives as long as the runner (its zygote, prepared user
    # namespaces, the firewall's table headers, its directories): the baseline.
    done = [one_cycle(gateway, runner_id)]
    before = steady_inventory(cluster, done)

    rss: dict[int, int] = {}
    started = time.monotonic()
    for cycle in range(1, cycles + 1):
        done.append(one_cycle(gateway, runner_id))
        if cycle in (early, cycles):
            rss[cycle] = rss_bytes(control_plane)
    elapsed = time.monotonic() - started

    def settled() -> HostInventory | None:
        now = host_inventory(cluster.host, cluster.runner, done)
        return now if not before.differences(now) else None

    try:
        wait_until("the host holds what it held after the first cycle", settled, 20, 0.5)
    except AssertionError:
        now = host_inventory(cluster.host, cluster.runner, done)
        raise AssertionError(f"left behind (new, gone): {before.differences(now)}") from None
    assert gateway.list_all(include_stopped=True) == []
    growth = rss[cycles] - rss[early]
    assert growth <= rss_bound, (
        f"control plane RSS {rss[early] / MIB:.1f} MiB at cycle {early}, "
        f"{rss[cycles] / MIB:.1f} MiB at cycle {cycles} ({elapsed / cycles:.2f} s per cycle)"
    )
