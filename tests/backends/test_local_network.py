"""Egress (none / internet / allowlist) and ingress of the local backend.

Traffic only ever goes to 127.0.0.1 or to a "test host" (``nethost.py``): a network
namespace this module creates itself, joined to the host by a veth pair, with a few
addresses and a small bounded TCP server. No packet is sent anywhere else. What
``internet`` must *not* reach is in ``test_local_egress.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sandboxd.backends.base import (
    EgressType,
    IngressMode,
    MountedFile,
    NetworkSpec,
    ScratchSpec,
)
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import SandboxStartError
from sandboxd.backends.local.zygote import EMPTY_NETNS_AHEAD
from tests.support.host_network import iptables_rules

from .nethost import NetHost, test_host

__all__ = ["test_host"]  # a module-scoped fixture shared with test_local_egress.py


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def net(egress: EgressType, *cidrs: str, **kw: object) -> NetworkSpec:
    return NetworkSpec(egress=egress, cidrs=cidrs, **kw)  # type: ignore[arg-type]


async def fetch(h: Harness, sid: str, ip: str, port: int = 8080) -> tuple[int, bytes]:
    r = await run(h, sid, sh(f"nc -w 3 {ip} {port} </dev/null"))
    return r.code, r.stdout


def test_internet_reaches_outside_through_nat(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox(network=net(EgressType.INTERNET)) as sid:
            for ip in (test_host.ip_a, test_host.ip_b):
                code, out = await fetch(local_harness, sid, ip)
                # the test host sees the host's address: the sandbox is masqueraded
                assert code == 0 and out == f"hello {ip} from-peer {test_host.host_ip}\n".encode()
            r = await run(local_harness, sid, ["ip", "-o", "-4", "addr"])
            assert b"eth0" in r.stdout and b"lo    inet 127.0.0.1/8" in r.stdout, r.stdout
            for scope in ("all", "default", "eth0", "lo"):
                conf = f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"
                assert (await run(local_harness, sid, ["cat", conf])).stdout == b"1\n", scope
            # no IPv6 address at all, not even lo's ::1, and no way to the host over IPv6
            assert (await run(local_harness, sid, ["ip", "-6", "addr"])).stdout == b""

    go(aio, scenario())


def test_allowlist_reaches_only_listed_cidrs(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    async def scenario() -> None:
        spec = net(EgressType.ALLOWLIST, f"{test_host.ip_a}/32")
        async with local_harness.sandbox(network=spec) as sid:
            code, out = await fetch(local_harness, sid, test_host.ip_a)
            assert code == 0 and out.startswith(f"hello {test_host.ip_a}".encode())
            code, out = await fetch(local_harness, sid, test_host.ip_b)
            assert code != 0 and out == b""

    go(aio, scenario())


def test_egress_none_reaches_nothing(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox() as sid:
            code, out = await fetch(local_harness, sid, test_host.ip_a)
            assert code != 0 and out == b""

    go(aio, scenario())


def test_sandboxes_cannot_reach_each_other(
    aio: asyncio.Runner, local_harness: Harness, test_host: NetHost
) -> None:
    listener = ("/bin/sh", "-c", "while true; do echo secret | nc -l -p 9000; done")

    async def scenario() -> None:
        spec = net(EgressType.INTERNET)
        async with (
            local_harness.sandbox(network=spec, command=listener) as b,
            local_harness.sandbox(network=spec) as a,
        ):
            lease = local_harness.backend._records[b].lease  # type: ignore[attr-defined]
            code, out = await fetch(local_harness, a, lease.sandbox_ip, 9000)
            assert out == b"" and code != 0

    go(aio, scenario())


def test_host_rules_exist_while_running_and_vanish_on_destroy(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def scenario() -> None:
        spec = local_harness.spec(network=net(EgressType.ALLOWLIST, "198.51.100.0/24"))
        await local_harness.backend.create(spec)
        lease = local_harness.backend._records[spec.sandbox_id].lease  # type: ignore[attr-defined]
        rules = iptables_rules()
        bucket = lease.tag[0]  # its hooks are in its bucket's chains (hook_chains.py)
        mark = f'-m comment --comment "sandboxd:{lease.tag}"'
        assert f"-A SBX-I-{bucket} -i {lease.host_if} {mark} -j DROP" in rules
        assert f"-A SBX-F-{bucket} -i {lease.host_if} {mark} -j {lease.chain}" in rules
        hooks = '-m comment --comment "sandboxd:hooks"'
        assert f"-A INPUT -i sbx{bucket}+ {hooks} -j SBX-I-{bucket}" in rules
        assert f"-A FORWARD -i sbx{bucket}+ {hooks} -j SBX-F-{bucket}" in rules
        assert f"-A FORWARD -o sbx{bucket}+ {hooks} -j SBX-F-{bucket}" in rules
        direct = ("-A INPUT ", "-A FORWARD ", "-A POSTROUTING ")
        assert not [r for r in rules.splitlines() if r.startswith(direct) and lease.tag in r]
        assert f"-A {lease.chain} -d 198.51.100.0/24 -j ACCEPT" in rules
        # Its own namespace, held by its processes alone: no name, no mount on the host.
        agent = local_harness.backend._records[spec.sandbox_id].agent_pid  # type: ignore[attr-defined]
        assert os.stat(f"/proc/{agent}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        assert not Path("/run/netns", lease.netns).exists()
        assert lease.tag not in Path("/proc/self/mountinfo").read_text()
        assert local_harness.backend._net.netns_fd(lease) is None  # type: ignore[attr-defined]
        await local_harness.backend.destroy(spec.sandbox_id)
        assert lease.tag not in iptables_rules()
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert lease.host_if not in links

    go(aio, scenario())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
        return body


@pytest.mark.parametrize("mode", [IngressMode.INTERNAL, IngressMode.PUBLIC])
def test_ingress_publishes_exposed_ports(
    aio: asyncio.Runner, local_harness: Harness, mode: IngressMode
) -> None:
    page = MountedFile("/www/index.html", b"served from the sandbox\n")
    command = ("httpd", "-f", "-p", "127.0.0.1:8000", "-h", "/www")

    async def scenario() -> None:
        network = NetworkSpec(ingress=mode, exposed_ports=(8000,))
        async with local_harness.sandbox(
            network=network, command=command, mounted_files=(page,)
        ) as sid:
            state = await local_harness.backend.state(sid)
            (port,) = state.ports
            assert port.container_port == 8000
            assert port.host_ip == ("127.0.0.1" if mode is IngressMode.INTERNAL else "0.0.0.0")
            url = f"http://127.0.0.1:{port.host_port}/index.html"
            for _ in range(50):
                try:
                    body = await asyncio.to_thread(_get, url)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            assert body == b"served from the sandbox\n"
        with pytest.raises(OSError):
            await asyncio.to_thread(_get, url)

    go(aio, scenario())


def test_stop_releases_network_and_cgroups_but_keeps_logs(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """After stop nothing of the sandbox is left in the kernel; its log and exit code stay."""

    async def scenario() -> None:
        backend = local_harness.backend
        spec = local_harness.spec(
            command=("sh", "-c", "echo bye; sleep 300"),
            network=net(EgressType.INTERNET),
        )
        await backend.create(spec)
        await backend.start(spec.sandbox_id)
        record = backend._records[spec.sandbox_id]  # type: ignore[attr-defined]
        lease, cgroup_dirs = record.lease, record.cgroup.unique_dirs
        assert lease is not None and all(Path(d).exists() for d in cgroup_dirs)
        async with asyncio.timeout(10):  # stop only once "bye" was written, or it may not be
            while b"bye" not in b"".join([c.data async for c in backend.logs(spec.sandbox_id)]):
                await asyncio.sleep(0.02)
        assert await backend.stop(spec.sandbox_id, 1) in (137, 143)
        for _ in range(50):  # released by a task that follows PID 1's exit
            if record.lease is None and record.cgroup is None:
                break
            await asyncio.sleep(0.05)
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert lease.host_if not in links
        assert lease.tag not in iptables_rules()
        assert not any(Path(d).exists() for d in cgroup_dirs)
        logged = b"".join([chunk.data async for chunk in backend.logs(spec.sandbox_id)])
        assert b"bye" in logged
        assert await backend.wait(spec.sandbox_id) in (137, 143)
        await backend.destroy(spec.sandbox_id)

    go(aio, scenario())


def _net_namespaces_held(pid: int) -> set[str]:
    """The network namespaces (``net:[inode]``) process ``pid`` holds descriptors of."""
    fd_dir = Path(f"/proc/{pid}/fd")
    held = set()
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("net:["):
                held.add(target)
    return held


def test_sandboxes_without_a_network_each_get_a_fresh_namespace_made_ahead(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """The zygote keeps empty network namespaces ready (unsharing one costs about a
    millisecond on the create path); each goes to exactly one sandbox, with only ``lo``."""
    b = local_harness.backend

    async def scenario() -> None:
        async with local_harness.sandbox(network=net(EgressType.NONE)):
            pass  # the first one asks for the pool
        zygote = b._zygote._proc.pid  # type: ignore[attr-defined]
        seen: set[str] = set()
        for _ in range(2):
            deadline = time.monotonic() + 10
            while len(ready := _net_namespaces_held(zygote)) < EMPTY_NETNS_AHEAD:
                assert time.monotonic() < deadline, f"the zygote holds {ready}"
                await asyncio.sleep(0.02)
            async with local_harness.sandbox(network=net(EgressType.NONE)) as sid:
                agent = b._records[sid].agent_pid  # type: ignore[attr-defined]
                netns = os.readlink(f"/proc/{agent}/ns/net")
                assert netns in ready, (netns, ready)  # one made ahead...
                assert netns not in _net_namespaces_held(zygote)  # ...and handed over whole
                assert netns not in seen and netns != os.readlink("/proc/self/ns/net")
                seen.add(netns)
                r = await run(
                    local_harness, sid, sh("cat /proc/net/dev; readlink /proc/self/ns/net")
                )
                interfaces = [
                    ln.split(":")[0].strip() for ln in r.stdout.decode().splitlines()[2:-1]
                ]
                assert interfaces == ["lo"], r.stdout
                assert r.stdout.decode().splitlines()[-1] == netns
                r = await run(local_harness, sid, ["cat", "/sys/class/net/lo/flags"])
                assert int(r.stdout, 16) & 0x1  # IFF_UP: the helper brought lo up ahead

    go(aio, scenario())


async def _descriptors_at_rest(backend: object) -> dict[str, str]:
    """This process's descriptors (number -> target) with the backend's pools full.

    The pools (networks, writable layers, id ranges) are asked to refill, then waited for
    until none is refilling and the count holds still for 0.2 s (at most 20 s). Why: a
    create's refill runs a moment after it (``REFILL_DELAY_SECONDS``) and a failed create
    asks for none, so a count taken right after a create depended on where the pools were,
    and a CI run saw the count after the failed create stay above it with nothing leaked;
    with the pools full both times, a leak of one descriptor shows.
    """
    pools: Any = backend
    pools._refill()
    pools._ranges.refill()
    deadline = time.monotonic() + 20
    last = -1
    while time.monotonic() < deadline:
        refills = [pools._nets._refill, pools._ranges._task, *pools._disk._refills.values()]
        busy = any(task is not None and not task.done() for task in refills)
        count = len(os.listdir("/proc/self/fd"))
        if not busy and count == last:
            break
        last = count
        await asyncio.sleep(0.2)
    found: dict[str, str] = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return found


def test_a_network_whose_namespace_the_runner_lost_fails_the_create_and_leaks_nothing(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """A guard against a bug of ours: the spawn must carry the namespace the runner made.
    Without it the create fails by name (never a sandbox offline in a namespace of its
    own), and the descriptors made for it and the network are given back."""
    backend = local_harness.backend
    pool = backend._nets  # type: ignore[attr-defined]
    take = pool.take

    async def take_then_lose(*args: object, **kwargs: object) -> object:
        lease = await take(*args, **kwargs)
        backend._net.let_go(lease)  # type: ignore[attr-defined]
        return lease

    async def scenario() -> None:
        scratch = ScratchSpec(mount_path="/data", size_bytes=16 << 20)  # one descriptor more
        async with local_harness.sandbox(network=net(EgressType.INTERNET), scratch=scratch):
            pass  # what a backend opens once (its zygote, pools) is open from here on
        spec = local_harness.spec(network=net(EgressType.INTERNET), scratch=scratch)
        before = await _descriptors_at_rest(backend)
        pool.take = take_then_lose
        try:
            with pytest.raises(SandboxStartError, match="its network has no"):
                await backend.create(spec)
        finally:
            del pool.take
        # The pools made full again (the create took a layer and a network, one descriptor
        # each), a leak stays above the count from before.
        after = await _descriptors_at_rest(backend)
        added = sorted((Counter(after.values()) - Counter(before.values())).elements())
        assert len(after) <= len(before), f"descriptors left open: {added}"
        assert spec.sandbox_id not in backend._net.claims().values()  # type: ignore[attr-defined]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f"sbx{backend._net.tag_for(spec.sandbox_id)}" not in links  # type: ignore[attr-defined]

    go(aio, scenario())
