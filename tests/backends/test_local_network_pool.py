"""Networks made ahead of need (``network_pool.py``): taken whole, refilled, never leaked.

Real namespaces, veths and rules on this host, through the local backend; no packet leaves
it (reachability itself is ``test_local_network.py``'s and ``test_local_egress.py``'s).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness, run
from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.network import NETNS_DIR, NetworkManager
from sandboxd.backends.local.network_pool import PREPARED, PreparedNetworks
from sandboxd.images import ImageStore

from .image_refs import BUSYBOX

INTERNET = NetworkSpec(egress=EgressType.INTERNET)


def _netns() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()


async def _ready(pool: PreparedNetworks, count: int) -> None:
    async with asyncio.timeout(30):
        while len(pool) < count:
            await asyncio.sleep(0.02)


def test_a_create_takes_a_ready_network_and_the_pool_refills(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    # A backend of its own: the session's shared one may have learnt the policy already
    # (from an earlier test on this worker), and this test starts from an empty pool.
    backend = LocalBackend(tmp_path / "backend", images=image_store)
    local_harness = Harness(backend, BUSYBOX, None, lambda: backend, prefix=f"np{os.getpid()}-")
    pool: PreparedNetworks = backend._nets  # type: ignore[attr-defined]
    net: NetworkManager = backend._net  # type: ignore[attr-defined]

    async def scenario() -> None:
        try:
            await body()
        finally:
            await backend.close()

    async def body() -> None:
        async with local_harness.sandbox(network=INTERNET) as first:
            assert backend._records[first].lease.tag == net.tag_for(first)  # type: ignore[attr-defined]
        await _ready(pool, 1)  # the first create taught it the policy
        ready_tags = {r.lease.tag for r in pool._ready}
        async with local_harness.sandbox(network=INTERNET) as second:
            lease = backend._records[second].lease  # type: ignore[attr-defined]
            assert lease.tag in ready_tags  # taken whole, not made on the create path
            assert net.claims()[lease.index] == second  # the claim names its sandbox now
            r = await run(local_harness, second, ["cat", "/proc/net/dev"])
            assert b"eth0" in r.stdout
        assert f"sandboxd-{lease.tag}" not in _netns()  # torn down like any other
        await _ready(pool, 1)
        left = {f"sandboxd-{r.lease.tag}" for r in pool._ready}
        assert left <= _netns()
        await pool.close()
        assert not left & _netns()  # closing tears the ready ones down
        assert not [h for h in net.claims().values() if h.startswith(PREPARED)]

    aio.run(asyncio.wait_for(scenario(), 120))


def test_networks_a_dead_runner_left_ready_are_reaped(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")

    async def scenario() -> None:
        net = NetworkManager("reaptest", pool="10.214.0.0/24", ipam_dir=str(tmp_path / "ipam"))
        crashed = PreparedNetworks(net, ready=1)
        lease = await crashed.take("sb-x", EgressType.INTERNET, (), (), lambda _lease: None)
        crashed.refill()
        await _ready(crashed, 1)
        orphan = crashed._ready[0].lease
        await net.teardown(lease, EgressType.INTERNET, ())
        assert f"sandboxd-{orphan.tag}" in _netns()
        # The process died here: nothing closed the pool. The next one reaps what it left.
        again = NetworkManager("reaptest", pool="10.214.0.0/24", ipam_dir=str(tmp_path / "ipam"))
        assert await PreparedNetworks(again).reap() == 1
        assert f"sandboxd-{orphan.tag}" not in _netns()
        assert again.claims() == {}

    asyncio.run(asyncio.wait_for(scenario(), 120))
