"""``internet`` egress reaches the internet, not what sits next to the runner.

The "internet" and the neighbours are all one test host (``nethost.py``): a network
namespace this module creates, with a public stand-in address (198.18/15) and addresses in
10/8, 192.168/16 and 100.64/10. The host's own address is one the test adds to the host end
of that veth. No packet goes anywhere else; everything is removed even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.local.egress import NON_PUBLIC, SHARED_CHAIN
from sandboxd.controlplane.v1.network import MAX_EGRESS_RULES, network_wish
from sandboxd_protocol.v1 import sandbox_pb2 as V

from .nethost import NetHost, test_host

__all__ = ["test_host"]


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 90))  # type: ignore[arg-type]


async def reaches(h: Harness, sid: str, ip: str, port: int = 8080) -> bool:
    """Whether a TCP client in the sandbox gets the test server's greeting from ``ip``."""
    r = await run(h, sid, sh(f"nc -w 2 {ip} {port} </dev/null"))
    return r.code == 0 and r.stdout.startswith(b"hello ")


def test_internet_reaches_the_internet_but_no_private_neighbour(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox(network=NetworkSpec(EgressType.INTERNET)) as sid:
            assert await reaches(local_harness, sid, test_host.ip_a)  # the route works
            for ip in test_host.non_public:
                assert not await reaches(local_harness, sid, ip), ip

    go(aio, scenario())


def test_allowlist_naming_a_private_address_reaches_it_and_nothing_else(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    cgnat_subnet = test_host.cgnat.rsplit(".", 1)[0] + ".0/24"
    spec = NetworkSpec(EgressType.ALLOWLIST, cidrs=(f"{test_host.private_a}/32", cgnat_subnet))

    async def scenario() -> None:
        async with local_harness.sandbox(network=spec) as sid:
            assert await reaches(local_harness, sid, test_host.private_a)
            assert await reaches(local_harness, sid, test_host.cgnat)
            for ip in (test_host.private_b, test_host.lan, test_host.ip_a):
                assert not await reaches(local_harness, sid, ip), ip

    go(aio, scenario())


def test_runner_blocked_destinations_such_as_the_control_plane(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    """``NetworkSpec.blocked`` (the runner puts its control plane there) wins unless named."""
    control_plane = f"{test_host.ip_b}/32"
    subnet = test_host.ip_b.rsplit(".", 1)[0] + ".0/24"
    internet = NetworkSpec(EgressType.INTERNET, blocked=(control_plane,))
    wide = NetworkSpec(EgressType.ALLOWLIST, cidrs=(subnet,), blocked=(control_plane,))
    exact = NetworkSpec(EgressType.ALLOWLIST, cidrs=(control_plane,), blocked=(control_plane,))

    async def scenario() -> None:
        async with local_harness.sandbox(network=internet) as sid:
            assert await reaches(local_harness, sid, test_host.ip_a)
            assert not await reaches(local_harness, sid, test_host.ip_b)
        async with local_harness.sandbox(network=wide) as sid:
            assert await reaches(local_harness, sid, test_host.ip_a)
            assert not await reaches(local_harness, sid, test_host.ip_b)
        async with local_harness.sandbox(network=exact) as sid:
            assert await reaches(local_harness, sid, test_host.ip_b)

    go(aio, scenario())


class HostServer:
    """A TCP server of the test process on one host address; counts who connected."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.create_server((address, port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self.peers.append(peer[0])
                conn.sendall(b"hello from the host\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@contextlib.contextmanager
def host_address(test_host: NetHost, port: int) -> Iterator[tuple[str, HostServer]]:
    """Give the host one more (public-range) address, on a real interface, and serve on it."""
    n = test_host.host_ip.split(".")[2]
    address = f"198.19.{n}.1"
    subprocess.run(
        ["ip", "addr", "add", f"{address}/32", "dev", test_host.host_if],
        check=True,
        capture_output=True,
    )
    server = None
    try:
        server = HostServer(address, port)
        yield address, server
    finally:
        if server is not None:
            server.close()
        subprocess.run(
            ["ip", "addr", "del", f"{address}/32", "dev", test_host.host_if],
            capture_output=True,
        )


def test_host_addresses_are_unreachable_also_ones_added_later(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    port = 8081

    async def scenario() -> None:
        named = NetworkSpec(EgressType.ALLOWLIST, cidrs=("198.19.0.0/16",))
        async with (
            local_harness.sandbox(network=NetworkSpec(EgressType.INTERNET)) as early,
            local_harness.sandbox(network=named) as early_named,
        ):
            # The host gains an address after both sandboxes exist.
            with host_address(test_host, port) as (address, server):
                with socket.create_connection((address, port), timeout=5) as probe:
                    assert probe.recv(64) == b"hello from the host\n"  # the service is up
                # A create lists it in the shared chain once the runner's read of the
                # host's addresses (at most a second old) has it; until then, and for the
                # sandboxes made before, ``INPUT`` drops what is addressed to the host.
                listed = f"-A {SHARED_CHAIN} -d {address}/32 -j REJECT"
                deadline = time.monotonic() + 20
                while True:
                    internet = NetworkSpec(EgressType.INTERNET)
                    async with local_harness.sandbox(network=internet) as late:
                        assert not await reaches(local_harness, late, address, port), late
                        if listed not in _iptables():
                            assert time.monotonic() < deadline, "never listed"
                            continue
                        for sid in (early, late):
                            assert await reaches(local_harness, sid, test_host.ip_a)
                        for sid in (early, early_named, late):
                            assert not await reaches(local_harness, sid, address, port), sid
                    break
                assert server.peers == [address]  # only the probe: no sandbox got through

    go(aio, scenario())


def _iptables() -> str:
    return subprocess.run(["iptables-save"], check=True, capture_output=True, text=True).stdout


def test_rule_set_is_small_shared_and_torn_down(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def scenario() -> None:
        spec = local_harness.spec(network=NetworkSpec(EgressType.INTERNET))
        await local_harness.backend.create(spec)
        lease = local_harness.backend._records[spec.sandbox_id].lease  # type: ignore[attr-defined]
        try:
            rules = _iptables().splitlines()
            own = [line for line in rules if line.startswith(f"-A {lease.chain} ")]
            # First, the log of new connections for the activity trail (connection_trail.py).
            assert own[0].startswith(f"-A {lease.chain} -m conntrack --ctstate NEW -m limit")
            assert f'-j NFLOG --nflog-prefix "sbx:{lease.tag}:fwd"' in own[0]
            # On its INPUT hook (in its bucket's chain), the log first, then the drop.
            hooks = [
                r for r in rules if r.startswith(f"-A SBX-I-{lease.tag[0]} -i {lease.host_if} ")
            ]
            assert len(hooks) == 2 and "-j NFLOG" in hooks[0] and hooks[1].endswith("-j DROP")
            assert own[1:] == [
                f"-A {lease.chain} -d 10.213.0.0/16 -j DROP",
                f"-A {lease.chain} -j {SHARED_CHAIN}",
                f"-A {lease.chain} -j ACCEPT",
            ]
            shared = {line.split()[3] for line in rules if line.startswith(f"-A {SHARED_CHAIN} ")}
            assert {cidr for cidr, _why in NON_PUBLIC} <= shared
        finally:
            await local_harness.backend.destroy(spec.sandbox_id)
        assert lease.tag not in _iptables()
        assert f":{lease.chain} " not in _iptables()

    go(aio, scenario())


EDGE_CIDRS = (
    "0.0.0.0/0",  # everything
    "0.0.0.0/32",
    "255.255.255.255/32",
    "10.213.0.7/16",  # the sandbox pool itself, host bits set (not strict)
    "127.0.0.0/8",
    "169.254.169.254/32",
    "224.0.0.0/4",
    "::/0",  # IPv6: parsed, then left out of the rules
    "2001:db8::/32",
)


def test_no_allowlist_a_request_may_send_makes_the_host_firewall_fail(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """The attack on ``HostNetworkFailed``: a failure to make a sandbox's network counts
    against the runner (the start backoff skips it for everyone), so no request may be able
    to cause one. A v1 request is the only one that writes CIDRs of its own: the largest
    allowlist it may send, of edge values that pass the control plane's parsing (the same
    ``network_wish`` that serves CreateSandbox), must be written by the real firewall."""
    rules = [V.EgressRule(cidr=V.CidrBlock(cidr=cidr)) for cidr in EDGE_CIDRS]
    rules += [
        V.EgressRule(cidr=V.CidrBlock(cidr=f"198.51.{i}.{i}/{8 + i % 25}"))
        for i in range(MAX_EGRESS_RULES - len(rules))
    ]
    wish = network_wish(V.SandboxSpec(network=V.NetworkOptions(egress=rules)))
    assert wish.egress_type == EgressType.ALLOWLIST.value
    spec = NetworkSpec(EgressType.ALLOWLIST, cidrs=wish.egress_cidrs)

    async def scenario() -> None:
        async with local_harness.sandbox(network=spec) as sid:  # raised HostNetworkFailed
            assert (await run(local_harness, sid, ["true"])).code == 0
            lease = local_harness.backend._records[sid].lease  # type: ignore[attr-defined]
            own = [line for line in _iptables().splitlines() if f"-A {lease.chain} " in line]
            written = {line.split(" -d ")[1].split()[0] for line in own if " -d " in line}
            ipv4 = {cidr for cidr in wish.egress_cidrs if ":" not in cidr} - {"0.0.0.0/0"}
            assert ipv4 <= written, ipv4 - written  # each is a rule (0.0.0.0/0 has no -d)

    go(aio, scenario())
