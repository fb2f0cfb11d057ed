"""Networks made ahead of need (``network_pool.py``): taken whole, refilled, never leaked.

Real namespaces, veths and rules on this host, through the local backend; no packet leaves
it (reachability itself is ``test_local_network.py``'s and ``test_local_egress.py``'s).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness, run
from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.network import NETNS_DIR, NetworkError, NetworkManager
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


def _ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=False).stdout


def test_a_network_is_two_ip_runs_and_teardown_survives_missing_parts(tmp_path: Path) -> None:
    """The host end stays on the host though ``netns add`` shares its batch; teardown goes on
    past a part that is already gone (a veth deleted by hand), and a clash rolls back."""
    if os.geteuid() != 0:
        pytest.skip("needs root")

    async def scenario() -> None:
        net = NetworkManager("iptest", pool="10.214.1.0/24", ipam_dir=str(tmp_path / "ipam"))
        lease = net.allocate("sb-ip")
        await net.setup(lease, EgressType.INTERNET, ())
        try:
            host_end = _ip("-o", "link", "show", lease.host_if)
            assert "state UP" in host_end or ",UP" in host_end, host_end
            assert f"{lease.host_ip}/30" in _ip("-o", "-4", "addr", "show", lease.host_if)
            inside = _ip("-n", lease.netns, "-o", "-4", "addr")
            assert f"{lease.sandbox_ip}/30" in inside and "eth0" in inside
            assert f"default via {lease.host_ip}" in _ip("-n", lease.netns, "route")
            assert lease.host_if not in _ip("-n", lease.netns, "-o", "link")
            # Someone removed the veth: the namespace must still go with the teardown.
            subprocess.run(["ip", "link", "del", lease.host_if], check=True)
        finally:
            await net.teardown(lease, EgressType.INTERNET, ())
        assert lease.netns not in _netns()
        assert _ip("-o", "link", "show", lease.host_if) == ""

        # A namespace of that name exists already: the batch (made ahead, at the lowest
        # priority) stops before the veth.
        clash = net.allocate("sb-clash")
        subprocess.run(["ip", "netns", "add", clash.netns], check=True)
        try:
            with pytest.raises(NetworkError, match="File exists"):
                await net.prepare(clash, nice=True)
            assert _ip("-o", "link", "show", clash.host_if) == ""
        finally:
            subprocess.run(["ip", "netns", "del", clash.netns], check=False)
            net.release(clash)
        assert net.claims() == {}

    asyncio.run(asyncio.wait_for(scenario(), 120))
