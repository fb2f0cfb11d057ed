"""Sandbox hooks in bucket chains (``hook_chains.py``): shared safely, made again, removed last.

Real rules on this host, made by two network managers (two backends of one host, as two
runners with their own data directories would be) on one pool. Other test workers may have
sandboxes in the same buckets at the same time, so what is checked of a bucket chain is its
lines naming our own leases, and that a chain, when it is gone, is no longer jumped to.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType
from sandboxd.backends.local.hook_chains import nat_chain
from sandboxd.backends.local.network import Lease, NetworkManager
from tests.support.host_network import chain_rules, in_own_network_namespace, jumps_to

POOL = "10.214.8.0/24"
INTERNET = EgressType.INTERNET


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def _sandbox_in_bucket(net: NetworkManager, bucket: str, taken: set[str]) -> str:
    """A sandbox id whose lease tag (under ``net``) falls in ``bucket``."""
    for n in range(10_000):
        sandbox_id = f"sb-hooks-{os.getpid()}-{n}"
        if sandbox_id not in taken and net.tag_for(sandbox_id)[0] == bucket:
            taken.add(sandbox_id)
            return sandbox_id
    raise AssertionError(f"no sandbox id in bucket {bucket}")


def _gone_or_unused(chain: str, ours: list[Lease], table: str = "filter") -> None:
    """None of our rules left in ``chain``; the chain gone (and not jumped to) or in use."""
    lines = chain_rules(chain, table)
    assert not [line for line in lines for lease in ours if lease.tag in line]
    if not lines:
        assert jumps_to(chain, table) == [], f"{chain} is gone but still jumped to"


def test_two_backends_share_a_bucket_and_the_last_one_out_removes_it(tmp_path: Path) -> None:
    """Backend b makes its network in the bucket backend a made: a's hooks stay whole (the
    group is never re-declared, which would flush it), and there is one jump per hook.
    a's last teardown leaves the chains, as b's rules are in them; b's removes them."""
    ipam = str(tmp_path / "ipam")
    a = NetworkManager("hooka", pool=POOL, ipam_dir=ipam)
    b = NetworkManager("hookb", pool=POOL, ipam_dir=ipam)
    taken: set[str] = set()
    first = f"sb-hooks-{os.getpid()}-first"
    bucket = a.tag_for(first)[0]
    into, forward = f"SBX-I-{bucket}", f"SBX-F-{bucket}"

    async def scenario() -> None:
        la = a.allocate(first)
        lb = b.allocate(_sandbox_in_bucket(b, bucket, taken))
        await a.setup(la, INTERNET, ())
        try:
            await b.setup(lb, INTERNET, ())
            try:
                for lease in (la, lb):
                    assert [r for r in chain_rules(into) if f"-i {lease.host_if} " in r]
                    assert [r for r in chain_rules(forward) if f"-j {lease.chain}" in r]
                    assert [
                        r for r in chain_rules(nat_chain(lease.sandbox_ip), "nat") if lease.tag in r
                    ]
                # One jump per hook, however many backends made the group's chains.
                hooks = '-m comment --comment "sandboxd:hooks"'
                assert jumps_to(into) == [f"-A INPUT -i sbx{bucket}+ {hooks} -j {into}"]
                assert sorted(jumps_to(forward)) == [
                    f"-A FORWARD -i sbx{bucket}+ {hooks} -j {forward}",
                    f"-A FORWARD -o sbx{bucket}+ {hooks} -j {forward}",
                ]
                await a.teardown(la, INTERNET, ())  # a's last network: it tries to remove
                assert not [r for r in chain_rules(into) + chain_rules(forward) if la.tag in r]
                assert [r for r in chain_rules(into) if lb.tag in r]  # b's hooks stay whole
                assert [r for r in chain_rules(forward) if f"-j {lb.chain}" in r]
                assert len(jumps_to(into)) == 1 and len(jumps_to(forward)) == 2
                assert chain_rules(lb.chain)  # and b's own chain
            finally:
                await b.teardown(lb, INTERNET, ())
        finally:
            await a.teardown(la, INTERNET, ())  # again if it failed before: tolerated
        for chain in (into, forward):
            _gone_or_unused(chain, [la, lb])
        _gone_or_unused(nat_chain(la.sandbox_ip), [la, lb], "nat")
        assert a.claims() == {} and b.claims() == {}

    asyncio.run(asyncio.wait_for(scenario(), 60))


# What both scripts below share: the firewall as iptables-save prints it, and a check that
# ends the script with that printed.
PRELUDE = r"""
import asyncio, subprocess, sys
from sandboxd.backends.base import EgressType
from sandboxd.backends.local.network import LIFT_SECONDS, NetworkManager
from tests.support.host_network import table_rules as rules

def check(ok, what):
    if not ok:
        sys.exit(f"{what}\n" + "\n".join(rules() + rules("nat")))

def manager(name, ipam):  # this namespace's loopback up first: see FLUSHED
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return NetworkManager(name, pool="10.214.9.0/24", ipam_dir=ipam)

def two_backends(ipam, name):  # backends a and b, a's first network and its bucket
    a, b = manager(f"{name}a", ipam), manager(f"{name}b", ipam)
    first = a.allocate(f"sb-{name}")
    return a, b, first, first.tag[0]

def names_in(net, bucket, prefix="sb-"):  # sandbox names whose networks fall in ``bucket``
    return (f"{prefix}{n}" for n in range(10_000) if net.tag_for(f"{prefix}{n}")[0] == bucket)
"""


# A backend's hook group removed by another backend (it found the chains empty), in a
# network namespace of its own: on the host it could race other test workers' sandboxes.
REMOVED = (
    PRELUDE
    + r"""

async def main(ipam):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # see FLUSHED
    a = NetworkManager("removed", pool="10.214.9.0/24", ipam_dir=ipam)
    keep = a.allocate("sb-keep")
    bucket = next(d for d in "0123456789abcdef" if d != keep.tag[0])
    ids = names_in(a, bucket)
    await a.setup(keep, EgressType.INTERNET, ())
    first = a.allocate(next(ids))
    await a.setup(first, EgressType.INTERNET, ())
    check(any(r.endswith(f"-j SBX-I-{bucket}") for r in rules()), "no jump to the bucket")
    await a.teardown(first, EgressType.INTERNET, ())  # a's last network in the bucket
    check(not [r for r in rules() if f"SBX-I-{bucket}" in r or f"SBX-F-{bucket}" in r],
          "the bucket's chains stayed after its last network")
    check(any(r.endswith(f"-j SBX-I-{keep.tag[0]}") for r in rules()), "keep's bucket went")
    second = a.allocate(next(ids))
    await a.setup(second, EgressType.INTERNET, ())
    # The ruleset is flushed and its chains deleted (a firewall reload) while a has
    # networks: a's next network in the bucket makes every chain and jump again.
    for table in ("filter", "nat"):
        subprocess.run(["iptables", "-t", table, "-F"], check=True)
        subprocess.run(["iptables", "-t", table, "-X"], check=True)
    again = a.allocate(next(ids))
    await a.setup(again, EgressType.INTERNET, ())
    check(any(again.host_if in r for r in rules() if r.startswith(f"-A SBX-I-{bucket} ")),
          "the new network's hooks are missing")
    check(sum(r.endswith(f"-j SBX-I-{bucket}") for r in rules()) == 1, "not one INPUT jump")
    check(sum(r.endswith(f"-j SBX-F-{bucket}") for r in rules()) == 2, "not two FORWARD jumps")
    check(any(r.startswith(f"-A {again.chain} ") for r in rules()), "its own chain is missing")
    check(sum("sandboxd:hooks" in r for r in rules("nat")) == 1, "nat jump not made again")
    # Only the nat table is wiped: the next add commits its filter part and fails in nat
    # (each table commits on its own); tried again, its filter hooks must not be doubled.
    for step in ("-F", "-X"):
        subprocess.run(["iptables", "-t", "nat", step], check=True)
    late = a.allocate(next(ids))
    await a.setup(late, EgressType.INTERNET, ())
    hooks = [r for r in rules() if r.startswith("-A SBX-") and f" {late.host_if} " in r]
    check(len(hooks) == 3, "its filter hooks are not there once each")  # -i twice, -o once
    check(sum(late.tag in r for r in rules("nat")) == 1, "its nat rule is not there once")
    for lease in (late, again, second, keep):
        await a.teardown(lease, EgressType.INTERNET, ())
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the last teardown: {left}")
    check(a.claims() == {}, "claims left")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
"""
)


def test_a_bucket_goes_with_its_last_network_and_a_wiped_one_is_made_again(
    tmp_path: Path,
) -> None:
    """A backend's last network in a bucket takes the bucket's chains with it, while its
    networks elsewhere keep theirs. Then the whole ruleset is flushed and its chains deleted
    (a firewall reload) while the backend has networks: its next network in the bucket
    makes the chains, jumps (once each) and its own chain again instead of failing. Then
    only the nat table is wiped: the next add fails after committing its filter part, and
    is tried again without doubling it (else its teardown would leave a copy behind)."""
    _in_own_network_namespace(REMOVED, tmp_path)


def _in_own_network_namespace(script: str, tmp_path: Path) -> None:
    in_own_network_namespace(script, str(tmp_path / "ipam"))


# Run in a network namespace of its own (its own, empty firewall), since it flushes built-in
# chains: on the host that would take other test workers' sandboxes' jumps away.
FLUSHED = (
    PRELUDE
    + r"""

async def main(ipam):
    # With no address at all, this namespace would let a socket bind to any: every subnet
    # would look taken by an interface (network._on_this_host).
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    net = NetworkManager("flushed", pool="10.214.9.0/24", ipam_dir=ipam)
    first = net.allocate("sb-first")
    bucket = first.tag[0]
    second_id = next(names_in(net, bucket))
    await net.setup(first, EgressType.INTERNET, ())
    # A firewall manager flushes the built-in chains (ours stay, unreached) and puts its
    # own rule first.
    for chain in ("INPUT", "FORWARD"):
        subprocess.run(["iptables", "-F", chain], check=True)
    subprocess.run(["iptables", "-t", "nat", "-F", "POSTROUTING"], check=True)
    subprocess.run(["iptables", "-I", "FORWARD", "-j", "ACCEPT"], check=True)
    second = net.allocate(second_id)
    await net.setup(second, EgressType.INTERNET, ())
    hooks = '-m comment --comment "sandboxd:hooks"'
    for jump in (
        f"-A INPUT -i sbx{bucket}+ {hooks} -j SBX-I-{bucket}",
        f"-A FORWARD -i sbx{bucket}+ {hooks} -j SBX-F-{bucket}",
        f"-A FORWARD -o sbx{bucket}+ {hooks} -j SBX-F-{bucket}",
    ):
        check(rules().count(jump) == 1, f"not exactly one {jump!r}")
    forward = [r for r in rules() if r.startswith("-A FORWARD ")]
    check(forward[-1] == "-A FORWARD -j ACCEPT", "our jumps are not above the host's rule")
    check(any(second.host_if in r for r in rules() if r.startswith(f"-A SBX-I-{bucket} ")),
          "the new network's hooks are missing")
    check(sum("sandboxd:hooks" in r for r in rules("nat")) == 1, "nat jump not back once")
    # A host rule put first later: a network made ahead of need (niced, as the pool does)
    # puts the group's jumps first again, once LIFT_SECONDS have passed since they were
    # last put first (here: the group was made); a create's add only checks them (no
    # deletion, whose commit waits 15-30 ms).
    subprocess.run(["iptables", "-I", "INPUT", "-j", "ACCEPT"], check=True)
    for key in net._lifted:  # LIFT_SECONDS later
        net._lifted[key] -= LIFT_SECONDS
    ahead = net.allocate(next(f"sb-a{n}" for n in range(10_000)
                              if net.tag_for(f"sb-a{n}")[0] == bucket))
    await net.prepare(ahead)
    await net.install_rules(ahead, EgressType.INTERNET, (), (), nice=True)
    inputs = [r for r in rules() if r.startswith("-A INPUT ")]
    check(inputs[0].endswith(f"-j SBX-I-{bucket}"), "the jump is not first again")
    check(sum(r.endswith(f"-j SBX-I-{bucket}") for r in inputs) == 1, "not one INPUT jump")
    await net.teardown(ahead, EgressType.INTERNET, ())
    await net.teardown(second, EgressType.INTERNET, ())
    await net.teardown(first, EgressType.INTERNET, ())
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the last teardown: {left}")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
"""
)


def test_a_flushed_jump_is_put_back_first_by_the_next_network(tmp_path: Path) -> None:
    """The host's firewall manager flushes INPUT, FORWARD and POSTROUTING (our chains stay,
    with nothing jumping to them) and puts its own rule first: the next network's add finds
    a jump missing and puts every jump of its group back, once, above the host's rule,
    instead of writing hooks nothing reaches. A host rule put first later: the next network
    made ahead of need puts the jumps first again. The last teardown leaves nothing."""
    _in_own_network_namespace(FLUSHED, tmp_path)


# Networks made ahead while one network is alive, taken and torn down one after another as
# a client creating and removing sandboxes in a loop does, in a namespace of its own.
BUCKETED = (
    PRELUDE
    + r"""
from sandboxd.backends.local import network_pool
from sandboxd.backends.local.network_pool import PreparedNetworks

def buckets():
    return {r.split()[0].removeprefix(":SBX-I-") for r in rules() if r.startswith(":SBX-I-")}

async def filled(pool, n):
    pool.refill()
    async with asyncio.timeout(30):
        while len(pool._ready) < n:
            await asyncio.sleep(0.02)

async def main(ipam):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # see FLUSHED
    net = NetworkManager("bucketed", pool="10.214.10.0/24", ipam_dir=ipam)
    keep = net.allocate("sb-keep")
    await net.setup(keep, EgressType.INTERNET, ())
    bucket = keep.tag[0]
    pool = PreparedNetworks(net, ready=3)
    pool._policy = (EgressType.INTERNET, (), ())
    await filled(pool, 3)
    check(all(r.lease.tag[0] == bucket for r in pool._ready), "a network ahead left the bucket")
    for n in range(4):  # taken, torn down, made again: the bucket's group stays the only one
        lease = await pool.take(f"sb-{n}", EgressType.INTERNET, (), (), lambda _lease: None)
        await net.teardown(lease, EgressType.INTERNET, ())
        await filled(pool, 3)
        check(buckets() == {bucket}, f"hook groups {buckets()}, not only {bucket}")
    network_pool.BUCKET_ROOM = len(pool._ready) + 1  # the bucket is full now
    pool._size = 5
    await filled(pool, 5)
    others = {r.lease.tag[0] for r in pool._ready} - {bucket}
    check(len(buckets()) > 1 and others, "a full bucket took more networks")
    await pool.close()
    await net.teardown(keep, EgressType.INTERNET, ())
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the last teardown: {left}")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 90))
"""
)


def test_networks_made_ahead_join_a_hook_group_in_use(tmp_path: Path) -> None:
    """With one network alive, every network made ahead gets a tag in its bucket, so a
    client that creates and removes sandboxes one after another never makes or removes a
    hook group: a removal is a deletion, whose commit holds up every firewall transaction
    behind it, the adds of creates included. A bucket at ``BUCKET_ROOM`` networks takes no
    more (another opens), so buckets stay about equal; the last teardown leaves nothing."""
    _in_own_network_namespace(BUCKETED, tmp_path)


# Two backends of one host, in a network namespace of their own. Backend b's last network in
# a bucket goes, taking the bucket's hook group with it, at the worst moments for backend a:
# after a found the group made (so a's add fails), and again right after a repaired it. The
# interleaving is injected by wrapping a's two steps (real rules, real iptables; only the
# timing is forced): on a busy host it happens by itself, rarely.
RACED = (
    PRELUDE
    + r"""

async def main(ipam):
    a, b, la, bucket = two_backends(ipam, "raced")
    ids = names_in(b, bucket, "sb-b")
    repairs, late = [], []
    made, repair = a._make_hook_chains, a._repair_hook_chains

    async def made_then_removed(lease, nice):  # b's only network in the bucket goes
        await made(lease, nice)
        await b.teardown(first, EgressType.INTERNET, ())
        check(not any(f"SBX-F-{bucket}" in r for r in rules()), "b did not remove the group")

    async def repaired_then_raced(group, nice):
        await repair(group, nice)
        repairs.append(group.key)
        if group.key.startswith("filter:") and not late:
            # b makes and tears down another network in the bucket now. Its removal of the
            # group waits for the host-wide lock, which a holds through its next try; were
            # it not held, b would be done within the wait below and a's next try would
            # find the group gone again.
            lb = b.allocate(next(ids))
            await b.setup(lb, EgressType.INTERNET, ())
            late.append(asyncio.create_task(b.teardown(lb, EgressType.INTERNET, ())))
            await asyncio.wait(late, timeout=1.0)

    first = b.allocate(next(ids))  # the group exists, made by b, when a comes
    await b.setup(first, EgressType.INTERNET, ())
    a._make_hook_chains, a._repair_hook_chains = made_then_removed, repaired_then_raced
    await a.setup(la, EgressType.INTERNET, ())
    await late[0]  # b's removal ran after a's add, and the kernel refused it
    check(repairs.count(f"filter:{bucket}") == 1, f"a's next try failed: repairs {repairs}")
    hooks = [r for r in rules() if r.startswith("-A SBX-") and f" {la.host_if} " in r]
    check(len(hooks) == 3, "a's hooks are not there once each")  # -i twice, -o once
    check(sum(r.endswith(f"-j SBX-I-{bucket}") for r in rules()) == 1, "not one INPUT jump")
    check(sum(r.endswith(f"-j SBX-F-{bucket}") for r in rules()) == 2, "not two FORWARD jumps")
    check(any(la.tag in r for r in rules("nat")), "a's nat rule is missing")
    await a.teardown(la, EgressType.INTERNET, ())
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the last teardowns: {left}")
    check(a.claims() == {} and b.claims() == {}, "claims left")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 90))
"""
)


def test_a_hook_group_is_not_removed_between_a_repair_and_the_next_try(tmp_path: Path) -> None:
    """Another backend's last network in a bucket may go, and take the bucket's hook group
    with it, while a network of ours is on its way in ("Chain 'SBX-F-6' does not exist",
    seen with two runners creating sandboxes side by side): our add then repairs the group
    and tries again. It does so holding the host-wide lock, under which no backend removes
    a group, so the other backend's next removal, which came right after our repair, waits
    and is then refused (our hooks are in the group): one repair, the create succeeds with
    its hooks there once each. Before the lock, the group could be removed again after each
    repair, and the create failed after four."""
    _in_own_network_namespace(RACED, tmp_path)


# Several adds of one process fail at once (their group was wiped by a firewall reload) and
# repair it at the same time, in a network namespace of its own.
CONCURRENT = (
    PRELUDE
    + r"""

async def main(ipam):
    net = manager("concurrent", ipam)
    first = net.allocate("sb-first")
    bucket = first.tag[0]
    ids = names_in(net, bucket)
    await net.setup(first, EgressType.INTERNET, ())
    for table in ("filter", "nat"):  # a firewall reload while `first` is up
        subprocess.run(["iptables", "-t", table, "-F"], check=True)
        subprocess.run(["iptables", "-t", table, "-X"], check=True)
    burst = [net.allocate(next(ids)) for _ in range(4)]
    await asyncio.gather(*(net.setup(lease, EgressType.INTERNET, ()) for lease in burst))
    for lease in burst:
        check(any(lease.host_if in r for r in rules() if r.startswith(f"-A SBX-I-{bucket} ")),
              f"{lease.tag}'s hooks are missing")
    check(sum(r.endswith(f"-j SBX-I-{bucket}") for r in rules()) == 1, "not one INPUT jump")
    check(sum(r.endswith(f"-j SBX-F-{bucket}") for r in rules()) == 2, "not two FORWARD jumps")
    check(sum("sandboxd:hooks" in r for r in rules("nat")) == 1, "not one nat jump")
    for lease in (*burst, first):
        await net.teardown(lease, EgressType.INTERNET, ())
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the last teardown: {left}")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 90))
"""
)


def test_adds_that_repair_one_group_at_once_leave_one_jump_per_hook(tmp_path: Path) -> None:
    """A firewall reload wipes a group while its backend has a network in it; four creates
    then fail their adds at once and repair the group together. They take turns, so each
    hook has one jump afterwards (not one per repair), and the last teardown removes the
    group: with a jump too many the kernel refused that, and the chains stayed for good."""
    _in_own_network_namespace(CONCURRENT, tmp_path)


# Two backends each repair one group at the same moment (a reload took its jumps while
# both had networks in it), in a network namespace of its own.
TWO_BACKENDS = (
    PRELUDE
    + r"""

async def main(ipam):
    a, b, first, bucket = two_backends(ipam, "two")
    a_ids, b_ids = names_in(a, bucket, "sb-a-"), names_in(b, bucket, "sb-b")
    await a.setup(first, EgressType.INTERNET, ())
    second = b.allocate(next(b_ids))
    await b.setup(second, EgressType.INTERNET, ())
    for chain in ("INPUT", "FORWARD"):  # a reload of the host's own chains only
        subprocess.run(["iptables", "-F", chain], check=True)
    subprocess.run(["iptables", "-t", "nat", "-F", "POSTROUTING"], check=True)
    burst = [(a, a.allocate(next(a_ids))) for _ in range(3)]
    burst += [(b, b.allocate(next(b_ids))) for _ in range(3)]
    await asyncio.gather(*(net.setup(lease, EgressType.INTERNET, ()) for net, lease in burst))
    check(sum(r.endswith(f"-j SBX-I-{bucket}") for r in rules()) == 1, "not one INPUT jump")
    check(sum(r.endswith(f"-j SBX-F-{bucket}") for r in rules()) == 2, "not two FORWARD jumps")
    check(sum("sandboxd:hooks" in r for r in rules("nat")) == 1, "not one nat jump")
    for net, lease in [*burst, (a, first), (b, second)]:
        await net.teardown(lease, EgressType.INTERNET, ())
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the last teardown: {left}")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 90))
"""
)


def test_two_backends_repairing_one_group_at_once_leave_one_jump_per_hook(tmp_path: Path) -> None:
    """A reload takes a group's jumps while two backends have networks in it; both then
    create at once, every add fails and repairs the group. The repairs hold the host-wide
    lock, so they take turns across backends as within one: one jump per hook afterwards,
    and the last teardown removes the group. Before, each backend checked the jumps before
    the other put them in, both put them in, and the kernel then refused the group's
    removal with its last sandbox, so its chains stayed on the host for good."""
    _in_own_network_namespace(TWO_BACKENDS, tmp_path)
