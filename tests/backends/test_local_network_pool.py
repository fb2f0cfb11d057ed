"""Networks made ahead of need (``network_pool.py``): taken whole, refilled, never leaked.

Real namespaces, veths and rules on this host, through the local backend; no packet leaves
it (reachability itself is ``test_local_network.py``'s and ``test_local_egress.py``'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType, MountedFile, NetworkSpec
from sandboxd.backends.conformance import Harness, run
from sandboxd.backends.local import LocalBackend, egress, network_namespace
from sandboxd.backends.local.hook_chains import UNKNOWN
from sandboxd.backends.local.network import (
    LEGACY_NETNS_DIR,
    Lease,
    NetworkError,
    NetworkManager,
)
from sandboxd.backends.local.network_pool import PREPARED, PreparedNetworks
from sandboxd.images import ImageStore
from tests.support.host_network import iptables_rules, link_exists

from .image_refs import BUSYBOX

INTERNET = NetworkSpec(egress=EgressType.INTERNET)


def _netns() -> set[str]:
    """Named network namespaces (``ip netns add``): sandboxd makes none."""
    return set(os.listdir(LEGACY_NETNS_DIR)) if os.path.isdir(LEGACY_NETNS_DIR) else set()


def _mounts() -> int:
    with open("/proc/self/mountinfo") as fh:
        return len(fh.readlines())


def _inside(net: NetworkManager, lease: Lease, *argv: str) -> str:
    """``ip`` run in ``lease``'s namespace, through the descriptor ``net`` holds."""
    fd = net.netns_fd(lease)
    assert fd is not None
    enter = ["nsenter", f"--net=/proc/{os.getpid()}/fd/{fd}", "--"]
    return subprocess.run([*enter, "ip", *argv], capture_output=True, text=True).stdout


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
        assert not link_exists(lease.host_if)  # torn down like any other
        assert net.netns_fd(lease) is None  # let go once its sandbox was in it
        await _ready(pool, 1)
        left = [r.lease for r in pool._ready]
        assert all(link_exists(r.host_if) and net.netns_fd(r) is not None for r in left)
        assert not {f"sandboxd-{r.tag}" for r in left} & _netns()  # no name, no mount
        await pool.close()
        for ready in left:  # closing tears the ready ones down
            assert not link_exists(ready.host_if) and net.netns_fd(ready) is None
        assert not [h for h in net.claims().values() if h.startswith(PREPARED)]

    aio.run(asyncio.wait_for(scenario(), 120))


def test_a_second_live_backend_on_the_same_key_leaves_the_firsts_networks_alone(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Networks made ahead are taken back only from a dead predecessor. A second backend
    on the same data directory while the first still runs (a test's reopened backend, two
    runners given one directory) reaped the first's ready networks, rules, links and claims,
    as if it had died; a rule add of the first still on its way then landed after the
    reap, and CI found the rules of four such networks left on the host."""
    data_dir = tmp_path / "backend"
    first = LocalBackend(data_dir, images=image_store)
    harness = Harness(first, BUSYBOX, None, lambda: first, prefix=f"nk{os.getpid()}-")
    pool: PreparedNetworks = first._nets  # type: ignore[attr-defined]
    net: NetworkManager = first._net  # type: ignore[attr-defined]

    async def scenario() -> None:
        second = None
        try:
            async with harness.sandbox(network=INTERNET):
                pass
            await _ready(pool, 2)
            ready = [r.lease for r in pool._ready]
            second = LocalBackend(data_dir, images=image_store)
            other = Harness(second, BUSYBOX, None, lambda: second, prefix=f"nl{os.getpid()}-")
            async with other.sandbox():  # its first create starts it (and reaped there)
                pass
            assert second._owner.held and not second._owner.alone  # type: ignore[attr-defined]
            for lease in ready:
                assert link_exists(lease.host_if), lease
                assert net.claims().get(lease.index) == f"{PREPARED}{lease.tag}"
                assert lease.tag in iptables_rules()
            async with harness.sandbox(network=INTERNET) as sid:  # a ready one still works
                r = await run(harness, sid, ["cat", "/proc/net/dev"])
                assert b"eth0" in r.stdout
        finally:
            if second is not None:
                await second.close()
            await first.close()
        rules = iptables_rules()
        assert not [t for t in (lease.tag for lease in ready) if t in rules]
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
        assert link_exists(orphan.host_if)
        # The process "died" here: nothing closed the pool (its namespace is still held,
        # as by a runner that hangs). The next one reaps what it left.
        again = NetworkManager("reaptest", pool="10.214.0.0/24", ipam_dir=str(tmp_path / "ipam"))
        assert await PreparedNetworks(again).reap() == 1
        assert not link_exists(orphan.host_if)
        assert orphan.tag not in iptables_rules()
        assert again.claims() == {}
        net.let_go(orphan)

    asyncio.run(asyncio.wait_for(scenario(), 120))


def _ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=False).stdout


def test_a_network_is_one_ip_run_in_an_unnamed_namespace_and_teardown_survives_missing_parts(
    tmp_path: Path,
) -> None:
    """The namespace has no name and adds no mount; the host end is on the host, with its
    address, up; teardown goes on past a part already gone (a veth deleted by hand); a
    leftover host end of the same name fails the batch and nothing of it stays held."""
    if os.geteuid() != 0:
        pytest.skip("needs root")

    async def scenario() -> None:
        net = NetworkManager("iptest", pool="10.214.1.0/24", ipam_dir=str(tmp_path / "ipam"))
        lease = net.allocate("sb-ip")
        mounts = _mounts()
        await net.setup(lease, EgressType.INTERNET, ())
        try:
            assert _mounts() == mounts and lease.netns not in _netns()
            host_end = _ip("-o", "link", "show", lease.host_if)
            assert "state UP" in host_end or ",UP" in host_end, host_end
            assert f"{lease.host_ip}/30" in _ip("-o", "-4", "addr", "show", lease.host_if)
            inside = _inside(net, lease, "-o", "-4", "addr")
            assert f"{lease.sandbox_ip}/30" in inside and "eth0" in inside
            assert f"default via {lease.host_ip}" in _inside(net, lease, "route")
            assert lease.host_if not in _inside(net, lease, "-o", "link")
            assert "lo: <LOOPBACK,UP" in _inside(net, lease, "-o", "link")
            # Someone removed the veth: the teardown must still go on.
            subprocess.run(["ip", "link", "del", lease.host_if], check=True)
        finally:
            await net.teardown(lease, EgressType.INTERNET, ())
        assert net.netns_fd(lease) is None
        assert _ip("-o", "link", "show", lease.host_if) == ""

        # A host end of that name exists already (a crash, by hand): making the veth
        # fails, and no namespace stays held.
        clash = net.allocate("sb-clash")
        peer = ["peer", "name", f"{clash.host_if[:12]}p"]
        subprocess.run(["ip", "link", "add", clash.host_if, "type", "veth", *peer], check=True)
        try:
            with pytest.raises(NetworkError, match="File exists"):
                await net.prepare(clash)
            assert net.netns_fd(clash) is None
        finally:
            subprocess.run(["ip", "link", "del", clash.host_if], check=False)
            net.release(clash)
        assert net.claims() == {}

    asyncio.run(asyncio.wait_for(scenario(), 120))


async def _remove(net: NetworkManager, leases: dict[str, int]) -> None:
    """Whatever of these leases (tag -> index) is left, gone: namespaces, links, rules."""
    for tag, index in leases.items():
        await net.teardown(net.lease_at(index, tag), EgressType.INTERNET, ())


def _left_of(lease_tags: set[str]) -> list[str]:
    """Namespaces, links and host rules of these leases that still exist."""
    rules = iptables_rules()
    left = [f"netns sandboxd-{tag}" for tag in lease_tags if f"sandboxd-{tag}" in _netns()]
    left += [f"link sbx{tag}" for tag in lease_tags if link_exists(f"sbx{tag}")]
    left += [f"rule {line}" for line in rules.splitlines() for t in lease_tags if t in line]
    return left


@pytest.fixture
def slow_net_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Making a namespace and ``iptables-restore`` runs that *add* rules start 0.5 s late (as
    when a busy host starves the niced work of networks made ahead); removals run at once.

    The namespace is made by system calls in a thread (``network_namespace.py``): its
    thread sleeps first (a stand-in for a starved thread; the calls after it are real).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root")
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real_restore = shutil.which("iptables-restore")
    assert real_restore is not None
    (slow / "iptables-restore").write_text(
        "#!/bin/sh\n"
        'input=$(cat; echo x); input="${input%x}"\n'
        'case "$input" in *"-I INPUT"*) sleep 0.5 ;; esac\n'
        f'printf %s "$input" | exec {real_restore} "$@"\n'
    )
    (slow / "iptables-restore").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:{os.environ['PATH']}")
    real_make = network_namespace._make

    def late_make(plan: network_namespace.VethPlan) -> int:
        time.sleep(0.5)
        return real_make(plan)

    monkeypatch.setattr(network_namespace, "_make", late_make)


@pytest.mark.usefixtures("slow_net_commands")
def test_a_network_set_up_cancelled_at_any_moment_leaves_nothing_behind(tmp_path: Path) -> None:
    """Cancelled creates and closed pools tear down what their host commands made.

    A cancelled task used to leave its ``ip``/``iptables-restore`` child running: the
    rollback ran first, found nothing, released the subnet, and then the child made the
    namespace, the veth with the subnet's address, or the rules. A later network with
    the same subnet then shared its address with the leftover veth, and its sandbox reached
    nothing (seen in CI: an ``internet`` sandbox whose every connection timed out).
    """

    async def scenario() -> None:
        net = NetworkManager("canceltest", pool="10.214.2.0/24", ipam_dir=str(tmp_path / "ipam"))
        made: dict[str, int] = {}  # every lease, also the pool's half-made ones: tag -> index
        lease_at = net.lease_at

        def recorded(index: int, tag: str, hooks: str = UNKNOWN) -> Lease:
            made[tag] = index
            return lease_at(index, tag, hooks)

        net.lease_at = recorded  # type: ignore[method-assign]
        # In the namespace's making (its thread cannot be stopped: the rollback waits for
        # it), about when it ends, and in ``iptables-restore``'s wait.
        for when in (0.1, 0.55, 0.8):
            lease = net.allocate(f"sb-{when}")
            task = asyncio.ensure_future(net.setup(lease, EgressType.INTERNET, ()))
            await asyncio.sleep(when)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert net.claims() == {}
        for when in (0.1, 0.55, 0.8):  # a pool closed in the middle of making one ahead
            pool = PreparedNetworks(net, ready=1)
            pool._policy = (EgressType.INTERNET, (), ())
            pool.refill()
            await asyncio.sleep(when)
            await pool.close()
            assert net.claims() == {}
        # Also a while later, when a child still running would have made its part.
        await asyncio.sleep(1.0)
        try:
            assert _left_of(set(made)) == []
            held = [tag for tag, i in made.items() if net.netns_fd(lease_at(i, tag)) is not None]
            assert held == []  # no namespace kept by a descriptor nobody will close
        finally:
            await _remove(net, made)

    asyncio.run(asyncio.wait_for(scenario(), 120))


@pytest.mark.timeout(60)
def test_a_cancelled_set_up_waits_for_its_namespace_thread_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while its namespace is being made (a thread that cannot be stopped, here
    held 0.5 s as on a starved host), the set-up ends only after that thread has: then it
    closes the namespace and the rollback removes the veth. A rollback that ran first would
    find nothing, release the subnet, and leave the thread's veth and namespace behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    real_make = network_namespace._make
    finished: list[float] = []

    def late_make(plan: network_namespace.VethPlan) -> int:
        time.sleep(0.5)
        try:
            return real_make(plan)
        finally:
            finished.append(time.monotonic())

    monkeypatch.setattr(network_namespace, "_make", late_make)

    async def scenario() -> None:
        net = NetworkManager("hangtest", pool="10.214.6.0/24", ipam_dir=str(tmp_path / "ipam"))
        lease = net.allocate("sb-hang")
        task = asyncio.ensure_future(net.setup(lease, EgressType.INTERNET, ()))
        await asyncio.sleep(0.1)  # its thread sleeps, nothing is made yet
        task.cancel()
        async with asyncio.timeout(20):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ended = time.monotonic()
        assert task.cancelled()
        assert finished and finished[0] <= ended  # the thread's work came before the end
        assert net.claims() == {} and net.netns_fd(lease) is None
        assert not link_exists(lease.host_if)
        deadline = time.monotonic() + 10  # its threads end right after their answer
        while network_namespace.running_threads():
            assert time.monotonic() < deadline, "a network thread did not end"
            await asyncio.sleep(0.01)

    asyncio.run(scenario())


FILLING = r"""
import asyncio, sys
from sandboxd.backends.base import EgressType
from sandboxd.backends.local.network import NetworkManager
from sandboxd.backends.local.network_pool import PreparedNetworks

async def main():
    ipam, key, subnets, ready = sys.argv[1:]
    net = NetworkManager(key, pool=subnets, ipam_dir=ipam)
    pool = PreparedNetworks(net, ready=2)
    pool._policy = (EgressType.INTERNET, (), ())
    pool.refill()
    if ready == "ready":  # say so once both are made, naming their host ends
        while len(pool) < 2:
            await asyncio.sleep(0.02)
        print(" ".join(r.lease.host_if for r in pool._ready), flush=True)
    else:
        print("filling", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _filling(ipam: Path, key: str, subnets: str, ready: bool) -> subprocess.Popen[str]:
    """A process that makes two networks ahead (``ready``: prints their host ends once made)."""
    argv = [sys.executable, "-c", FILLING, str(ipam), key, subnets, "ready" if ready else "-"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


@pytest.mark.usefixtures("slow_net_commands")
def test_a_runner_killed_while_making_networks_ahead_leaves_nothing_after_the_reap(
    tmp_path: Path,
) -> None:
    """SIGKILLed while its niced commands wait for the CPU (here its rules' late
    ``iptables-restore``; its namespace's thread is done by then): they die with it, so the
    network the next runner reaps is not made again behind its back."""
    ipam = tmp_path / "ipam"
    proc = _filling(ipam, "killtest", "10.214.3.0/24", ready=False)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "filling"
        time.sleep(0.2)  # its first ``iptables-restore`` is waiting to start
    finally:
        proc.kill()
        proc.wait()

    async def reap() -> list[str]:
        net = NetworkManager("killtest", pool="10.214.3.0/24", ipam_dir=str(ipam))
        making = {h.removeprefix(PREPARED): i for i, h in net.claims().items()}
        assert len(making) == 1  # the one it was making
        await PreparedNetworks(net).reap()
        assert net.claims() == {}
        await asyncio.sleep(1.0)  # past the moment the killed runner's command would run
        left = _left_of(set(making))
        await _remove(net, making)
        return left

    assert asyncio.run(asyncio.wait_for(reap(), 60)) == []


def test_a_runner_killed_with_networks_ready_leaves_no_namespace_and_the_reap_the_rest(
    tmp_path: Path,
) -> None:
    """The namespaces of networks made ahead die with the process that holds them (no name
    in ``/run/netns`` outlives it), and their veths with them, before any reap; the next
    runner's reap removes the rules and claims that stay."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ipam = tmp_path / "ipam"
    proc = _filling(ipam, "filledtest", "10.214.5.0/24", ready=True)
    try:
        assert proc.stdout is not None
        host_ends = proc.stdout.readline().split()
        assert len(host_ends) == 2 and all(link_exists(end) for end in host_ends)
    finally:
        proc.kill()  # SIGKILL: nothing of the process tears anything down
        proc.wait()
    deadline = time.monotonic() + 20
    while any(link_exists(end) for end in host_ends):
        assert time.monotonic() < deadline, f"veths outlived their namespace: {host_ends}"
        time.sleep(0.05)
    tags = [end.removeprefix("sbx") for end in host_ends]
    assert not {f"sandboxd-{tag}" for tag in tags} & _netns()

    async def reap() -> None:
        net = NetworkManager("filledtest", pool="10.214.5.0/24", ipam_dir=str(ipam))
        assert len(net.claims()) == 2
        assert all(tag in iptables_rules() for tag in tags)  # the rules stayed
        assert await PreparedNetworks(net).reap() == 2
        assert net.claims() == {}
        assert not [tag for tag in tags if tag in iptables_rules()]

    asyncio.run(asyncio.wait_for(reap(), 60))


def test_a_subnet_whose_address_a_leftover_interface_holds_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A veth left with a subnet's host address (a crash, by hand) is not shared: the next
    sandbox gets the subnet after it, and the log says which address is taken and where."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    net = NetworkManager("skiptest", pool="10.214.4.0/28", ipam_dir=str(tmp_path / "ipam"))
    leftover = f"sbxleft{os.getpid() % 100000}"  # a veth, as the backend makes them
    peer = ["peer", "name", f"{leftover}p"]
    subprocess.run(["ip", "link", "add", leftover, "type", "veth", *peer], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.214.4.5/30", "dev", leftover], check=True)
        lease = net.allocate("sb-after-leftover")
        assert (lease.index, lease.host_ip) == (2, "10.214.4.9")
        assert net.claims() == {2: "sb-after-leftover"}  # index 1's claim was given back
        assert "10.214.4.5" in caplog.text and "skipping sandbox subnet" in caplog.text
    finally:
        subprocess.run(["ip", "link", "del", leftover], check=False)
    assert net.allocate("sb-next").index == 3
    assert net.allocate("sb-wrapped").index == 1  # free again once the leftover is gone


def test_a_claim_handed_on_is_rewritten_in_place_and_reads_whole(tmp_path: Path) -> None:
    """A network made ahead and taken names its new holder in its claim, written over the
    old one without truncating the file (padding instead): every reader sees exactly one
    holder, also after a longer name was there, and the file keeps its inode."""
    net = NetworkManager("claimtest", pool="10.214.12.0/24", ipam_dir=str(tmp_path / "ipam"))
    lease = net.allocate(f"{PREPARED}x")
    claim = Path(net.ipam) / str(lease.index)
    inode = claim.stat().st_ino
    net.assign(lease, "sb-a-rather-long-sandbox-name-0123456789")
    assert net.claims() == {lease.index: "sb-a-rather-long-sandbox-name-0123456789"}
    net.assign(lease, "sb-short")
    assert net.claims() == {lease.index: "sb-short"}
    assert net.claimed_leases()[0].tag == lease.tag  # the tag it was made under, still
    text = claim.read_text()
    assert text.count("\n") == 1 and text.endswith("\n") and text.split() == [
        "claimtest", "sb-short", lease.tag,
    ]  # fmt: skip
    assert claim.stat().st_ino == inode
    net.release(lease)
    assert net.claims() == {}


def test_sandboxes_with_a_network_get_the_host_resolver_settings_read_only(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A sandbox with egress reads the host's ``/etc/resolv.conf`` (one copy the backend
    keeps, sealed per sandbox, so its state directory holds no file of its own for it),
    cannot change it for itself or anyone else, and keeps the file it mounts itself; a
    sandbox without a network has no such mount."""
    host = Path("/etc/resolv.conf").read_bytes()
    if egress.resolv_conf() is None:
        pytest.skip("this host's resolv.conf names only loopback name servers")
    backend = LocalBackend(tmp_path / "backend", images=image_store)
    harness = Harness(backend, BUSYBOX, None, lambda: backend, prefix=f"rc{os.getpid()}-")
    own = MountedFile("/etc/resolv.conf", b"nameserver 192.0.2.53\n")

    async def body() -> None:
        async with (
            harness.sandbox(network=INTERNET) as one,
            harness.sandbox(network=INTERNET) as two,
        ):
            r = await run(harness, one, ["cat", "/etc/resolv.conf"])
            assert r.stdout == host
            r = await run(harness, one, ["cat", "/proc/self/mountinfo"])
            assert b" /etc/resolv.conf " in r.stdout  # the sealed copy, mounted read-only
            r = await run(harness, one, ["sh", "-c", "echo nameserver 6.6.6.6 > /etc/resolv.conf"])
            assert r.code != 0
            assert (await run(harness, two, ["cat", "/etc/resolv.conf"])).stdout == host
            for sid in (one, two):  # one copy for all, no per-sandbox files on the host
                state_dir = backend._records[sid].state_dir  # type: ignore[attr-defined]
                assert not (state_dir / "files").exists()
        assert Path("/etc/resolv.conf").read_bytes() == host
        async with harness.sandbox(network=INTERNET, mounted_files=(own,)) as mine:
            assert (await run(harness, mine, ["cat", "/etc/resolv.conf"])).stdout == own.data
            state_dir = backend._records[mine].state_dir  # type: ignore[attr-defined]
            assert [p.read_bytes() for p in (state_dir / "files").iterdir()] == [own.data]
        async with harness.sandbox() as offline:  # the image's own file, if any: no mount
            r = await run(harness, offline, ["cat", "/proc/self/mountinfo"])
            assert b" /etc/resolv.conf " not in r.stdout

    async def scenario() -> None:
        try:
            await body()
        finally:
            await backend.close()

    aio.run(asyncio.wait_for(scenario(), 120))
