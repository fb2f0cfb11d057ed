"""The rule watch (``rule_watch.py``): a sandbox's rules come back after a firewall reload.

The attack this stops: the host's firewall manager reloads (``iptables -F`` and ``-X`` of
every table, as ``netfilter-persistent`` or configuration management applying a saved file
do), which took every sandbox's rules away. Before, only the backend's next create put its
own groups back, never the rules of the sandboxes already running: they reached the host's
services, private networks and the metadata address unfiltered, for good.

Each test runs real network managers in a network namespace of its own (its own, empty
firewall): flushing the host's tables would strip other test workers' sandboxes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.backends.local.lease import Lease
from sandboxd.backends.local.rule_watch import Damage, Saved, find_damage
from tests.support.host_network import in_own_network_namespace


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


PRELUDE = r"""
import asyncio, collections, subprocess, sys, time
from sandboxd.backends.base import EgressType
from sandboxd.backends.local import rule_watch
from sandboxd.backends.local.network import NetworkManager
from tests.support.host_network import table_rules

rule_watch.CHECK_SECONDS = 0.05

def ours():
    lines = table_rules() + table_rules("nat")
    return collections.Counter(l for l in lines if l.startswith("-A ") and ("SBX" in l
                               or "sandboxd" in l or "SANDBOXD" in l))

def check(ok, what):
    if not ok:
        sys.exit(f"{what}\n" + "\n".join(table_rules() + table_rules("nat")))

def run(*argv):
    subprocess.run(argv, check=True)

def reload(*tables):  # as a firewall reload does: every chain of each table gone at once
    subprocess.run(["iptables-restore"], input="".join(f"*{t}\nCOMMIT\n" for t in tables),
                   text=True, check=True)

async def back(before, what, seconds=10):
    deadline = time.monotonic() + seconds
    while ours() != before:
        if time.monotonic() > deadline:
            missing = before - ours()
            check(False, f"not put back within {seconds} s after {what}; missing: {missing}")
        await asyncio.sleep(0.05)

async def setup(net, name, egress=EgressType.INTERNET, cidrs=()):
    lease = net.allocate(name)
    await net.setup(lease, egress, cidrs, ("192.0.2.7/32",))
    return lease
"""

RELOADED = (
    PRELUDE
    + r"""
async def main(ipam):
    run("ip", "link", "set", "lo", "up")  # see test_local_hook_chains.FLUSHED
    net = NetworkManager("reloaded", pool="10.214.11.0/24", ipam_dir=ipam, watch=True)
    net.log_group = 0x4321  # hooks that log, as with the connection trail on
    leases = [await setup(net, f"sb-{n}") for n in range(3)]
    leases.append(await setup(net, "sb-allow", EgressType.ALLOWLIST, ("8.8.8.0/24",)))
    before = ours()
    await asyncio.sleep(0.3)  # the watch has looked: nothing was missing, nothing written
    check(net.watch.repairs == 0 and ours() == before, "the watch wrote without a change")
    # A firewall reload: every chain of both tables flushed and deleted.
    reload("filter", "nat")
    await back(before, "a reload")
    # Partial losses, one at a time: built-in chains only, one sandbox's chain, nat only.
    run("iptables", "-F", "INPUT"); run("iptables", "-F", "FORWARD")
    await back(before, "INPUT and FORWARD flushed")
    run("iptables", "-F", leases[3].chain)
    await back(before, "an allowlist sandbox's chain flushed")
    run("iptables", "-F", "SANDBOXD-NONPUBLIC")
    await back(before, "the shared chain flushed")
    reload("nat")
    await back(before, "the nat table wiped")
    for lease in leases:
        await net.teardown(lease, EgressType.INTERNET, ())
    await net.close()
    check(not ours(), f"left after the last teardown: {ours()}")
    check(net.claims() == {}, "claims left")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 90))
"""
)


def test_a_reload_puts_every_sandbox_network_back_as_it_was(tmp_path: Path) -> None:
    """Three internet networks (logging) and an allowlist one: after a reload of both tables,
    and after each partial loss (built-in chains, one network's chain, the shared chain, the
    nat table), every rule is back, line for line, within seconds; with no change the watch
    writes nothing; the teardowns then leave nothing behind (no rule put back twice)."""
    in_own_network_namespace(RELOADED, str(tmp_path / "ipam"))


RECOVERED = (
    PRELUDE
    + r"""
async def main(ipam):
    run("ip", "link", "set", "lo", "up")
    first = NetworkManager("recovered", pool="10.214.12.0/24", ipam_dir=ipam)
    kept = await setup(first, "sb-kept", EgressType.ALLOWLIST, ("8.8.8.0/24",))
    lost = await setup(first, "sb-lost")
    before = ours()
    # A restarted runner: a new manager of the same backend takes the networks over from
    # their claims, without knowing their policies.
    second = NetworkManager("recovered", pool="10.214.12.0/24", ipam_dir=ipam, watch=True)
    rule_watch.CHECK_SECONDS = 30.0  # only a claim (and the start) make the watch look now
    async def looked(n):
        deadline = time.monotonic() + 5
        while second.watch.looks < n:
            check(time.monotonic() < deadline, f"{second.watch.looks} looks, not {n}")
            await asyncio.sleep(0.02)
    second.claim(kept, kept.tag)  # its first look learns the chain as it is
    await looked(1)
    second.claim(lost, lost.tag)  # recovered later: a look of its own soon after
    await looked(2)
    check(ours() == before, "the looks changed rules")
    reload("filter", "nat")
    await back(before, "a reload")
    await second.close()  # that runner goes; the next takes the networks over
    # A recovered network whose chain was gone before the watch ever saw it: put back as a
    # chain that refuses everything, not left open.
    run("iptables", "-F", lost.chain)
    rule_watch.CHECK_SECONDS = 0.05
    third = NetworkManager("recovered", pool="10.214.12.0/24", ipam_dir=ipam, watch=True)
    for lease in (kept, lost):
        third.claim(lease, lease.tag)
    damage = await third.watch.look(force=True)
    check(damage.leases == (lost.tag,), f"damage {damage}")
    deadline = time.monotonic() + 10
    refused = f"-A {lost.chain} -j REJECT --reject-with icmp-admin-prohibited"
    while refused not in ours():
        check(time.monotonic() < deadline, "the unknown chain was not closed")
        await asyncio.sleep(0.05)
    for lease in (kept, lost):
        await third.teardown(lease, EgressType.INTERNET, ())
    await third.close()
    check(not ours(), f"left after the teardowns: {ours()}")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 90))
"""
)


def test_a_recovered_network_is_put_back_as_the_kernel_had_it(tmp_path: Path) -> None:
    """A restarted runner's manager knows its recovered networks only by their claims: each
    claim makes the watch look soon (not at its next periodic look), which reads the chain
    back, so a reload afterwards puts an allowlist network's rules back exactly (not a
    guess at its policy). A network whose chain was already gone when it was first seen
    gets a chain that refuses everything (fails closed)."""
    in_own_network_namespace(RECOVERED, str(tmp_path / "ipam"))


NOTICED = (
    PRELUDE
    + r"""
async def main(ipam):
    run("ip", "link", "set", "lo", "up")
    rule_watch.CHECK_SECONDS = 30.0  # only the kernel's notices can wake the watch
    net = NetworkManager("noticed", pool="10.214.13.0/24", ipam_dir=ipam, watch=True)
    first = await setup(net, "sb-first")
    await asyncio.sleep(0.3)
    looks = net.watch.looks
    check(looks == 1, f"{looks} looks before any change of the host's")  # the first one
    more = [await setup(net, f"sb-{n}") for n in range(3)]  # our own commits only
    await asyncio.sleep(0.5)
    check(net.watch.looks == looks, "the watch read the rules after this process's changes")
    before = ours()
    started = time.monotonic()
    reload("filter", "nat")
    await back(before, "a reload", seconds=5)
    check(time.monotonic() - started < 5, "not woken by the reload's notices")
    # A reload made of several commands in a row, as a firewall script runs them: each
    # must succeed (a chain put back between its flush and its -X would fail the -X, and
    # the script with it), and the rules come back once, after the last.
    rule_watch.SETTLE_SECONDS = 1.0  # a quiet second: room for a slow machine's gaps
    repairs = net.watch.repairs
    steps = ("iptables -F", "iptables -X", "iptables -t nat -F", "iptables -t nat -X",
             "iptables -A FORWARD -j ACCEPT")
    subprocess.run(["sh", "-ec", "; ".join(steps)], check=True)
    await back(before, "a reload script", seconds=10)
    await asyncio.sleep(1.5)  # the look after the repair, which finds all
    check(net.watch.repairs == repairs + 1, f"{net.watch.repairs - repairs} repairs, not one")
    for lease in (first, *more):
        await net.teardown(lease, EgressType.INTERNET, ())
    await net.close()
    check(not ours(), f"left after the teardowns: {ours()}")

asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
"""
)


def test_the_hosts_change_wakes_the_watch_and_its_own_do_not(tmp_path: Path) -> None:
    """With the kernel's change notices, the watch reads the rules when another process
    changed them (a reload is put back at once, not at the next periodic look) and never
    for the backend's own creates, which wrote what they meant to. A reload script of
    several commands runs whole (nothing put back between its steps) and is put back once."""
    in_own_network_namespace(NOTICED, str(tmp_path / "ipam"))


# -- find_damage on its own: what counts as missing --------------------------------------------

SAVED = """*filter
:SBX-0123456789 - [0:0]
-A INPUT -i sbx0+ -m comment --comment "sandboxd:hooks" -j SBX-I-0
-A FORWARD -o sbx0+ -m comment --comment "sandboxd:hooks" -j SBX-F-0
-A FORWARD -i sbx0+ -m comment --comment "sandboxd:hooks" -j SBX-F-0
-A SANDBOXD-NONPUBLIC -d 10.0.0.0/8 -j REJECT --reject-with icmp-admin-prohibited
-A SBX-0123456789 -d 10.214.9.0/24 -j DROP
-A SBX-0123456789 -j ACCEPT
-A SBX-F-0 -i sbx0123456789 -m comment --comment "sandboxd:0123456789" -j SBX-0123456789
-A SBX-F-0 -o sbx0123456789 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "sandboxd:0123456789" -j ACCEPT
-A SBX-I-0 -i sbx0123456789 -m comment --comment "sandboxd:0123456789" -j DROP
COMMIT
*nat
-A POSTROUTING -s 10.214.9.0/24 -m comment --comment "sandboxd:hooks" -j SBX-N-0ad609
-A SBX-N-0ad609 -s 10.214.9.6/32 ! -o sbx0123456789 -m comment --comment "sandboxd:0123456789" -j MASQUERADE
COMMIT
"""  # noqa: E501 - iptables-save's lines as it prints them
LEASE = Lease("0123456789", 1, "10.214.9.5", "10.214.9.6", 0, "chained")
CHAIN = (":SBX-0123456789 - [0:0]", "-A SBX-0123456789 -d 10.214.9.0/24 -j DROP",
         "-A SBX-0123456789 -j ACCEPT")  # fmt: skip


def _damage(text: str) -> Damage:
    saved = Saved.parse(text)
    groups = LEASE.hook_groups()
    return find_damage(saved, [LEASE], {LEASE.tag: CHAIN}, groups, 1)


def test_nothing_is_missing_from_a_whole_ruleset() -> None:
    assert not _damage(SAVED)


@pytest.mark.parametrize(
    ("dropped", "expected"),
    [
        ('-A SBX-I-0 -i sbx0123456789 -m comment --comment "sandboxd', Damage(("0123456789",))),
        ("-A SBX-0123456789 -j ACCEPT", Damage(("0123456789",))),
        ("-A SBX-N-0ad609 -s 10.214.9.6/32", Damage(("0123456789",))),
        ("-A FORWARD -i sbx0+", Damage((), ("filter:0",))),
        ("-A POSTROUTING -s 10.214.9.0/24", Damage((), ("nat:SBX-N-0ad609",))),
        ("-A SANDBOXD-NONPUBLIC", Damage(shared_chain=True)),
    ],
)
def test_each_missing_rule_is_found(dropped: str, expected: Damage) -> None:
    text = "\n".join(line for line in SAVED.splitlines() if not line.startswith(dropped))
    assert _damage(text) == expected


def test_a_missing_rule_is_found_beside_a_doubled_one() -> None:
    """A hook twice in one table does not make up for one missing in another."""
    doubled = SAVED.replace(
        '-A SBX-I-0 -i sbx0123456789 -m comment --comment "sandboxd:0123456789" -j DROP',
        '-A SBX-I-0 -i sbx0123456789 -m comment --comment "sandboxd:0123456789" -j DROP\n' * 2,
    )
    text = "\n".join(line for line in doubled.splitlines() if "MASQUERADE" not in line)
    assert _damage(text) == Damage(("0123456789",))


def test_a_rule_the_host_added_beside_ours_is_no_damage() -> None:
    extra = SAVED.replace("COMMIT", "-A FORWARD -j ACCEPT\n-A INPUT -j DROP\nCOMMIT", 1)
    assert not _damage(extra)
