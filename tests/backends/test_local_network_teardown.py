"""A network's rules whose removal could not be started: kept, claimed, and removed later.

Removing a network's rules is an ``iptables-restore`` run; starting it can fail (no memory
or no process left on a host in trouble). Those rules are all still there, so the network
must not be forgotten: before, its claim went, the rules stayed on the host for good, and
nothing left named them. Run in a network namespace of its own (its own, empty firewall).
The failure is made by replacing the function that starts the command (said here): the
conditions that make a real start fail would hurt the rest of the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.host_network import in_own_network_namespace

UNREMOVED = r"""
import asyncio, errno, os, signal, subprocess, sys
from sandboxd.backends.base import EgressType
from sandboxd.backends.local import rule_writer
from sandboxd.backends.local.network import NetworkManager
from sandboxd.backends.local.network_pool import PreparedNetworks
from tests.support.host_network import link_exists, table_rules as rules

INTERNET = EgressType.INTERNET
ipam = sys.argv[1]

def check(ok, what):
    if not ok:
        sys.exit(f"{what}\n" + "\n".join(rules() + rules("nat")))

def manager():
    return NetworkManager("unremoved", pool="10.214.10.0/24", ipam_dir=ipam)

def ours(lease):
    return [r for r in rules() + rules("nat") if lease.tag in r]

async def cannot_start(*argv, **kwargs):
    raise OSError(errno.EAGAIN, "Resource temporarily unavailable", argv[0])

async def fail_then_die(write):
    net = manager()
    gone = net.allocate("sb-gone")
    await net.setup(gone, INTERNET, ())
    rule_writer.run = cannot_start
    await net.teardown(gone, INTERNET, ())  # returns: the sandbox is gone either way
    os.write(write, gone.to_json().encode())
    os.kill(os.getpid(), signal.SIGKILL)  # the runner dies with the rules left

async def main(gone):
    check(not link_exists(gone.host_if), "the veth stayed")
    check(len(ours(gone)) >= 5, "the rules went although their removal never ran")
    net = manager()
    claims = net.claims()
    check(claims.get(gone.index) == f"prepared:{gone.tag}", f"claim not kept to reap: {claims}")

    # The next start of the backend reaps it.
    check(await PreparedNetworks(net).reap() == 1, "the restarted backend reaped nothing")
    check(ours(gone) == [], f"left after the reap: {ours(gone)}")
    check(gone.index not in net.claims(), "the claim stayed after the reap")

    # In a process that lives on, the next teardown tries the removal again first.
    other, third = net.allocate("sb-other"), net.allocate("sb-third")
    await net.setup(other, INTERNET, ())
    await net.setup(third, INTERNET, ())
    started = rule_writer.run
    rule_writer.run = cannot_start
    await net.teardown(third, INTERNET, ())
    rule_writer.run = started
    check(ours(third), "the third network's rules went although their removal never ran")
    await net.teardown(other, INTERNET, ())
    check(ours(third) == [] and ours(other) == [], "left after the next teardown")
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the last teardown: {left}")
    check(net.claims() == {}, f"claims left: {net.claims()}")

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    asyncio.run(asyncio.wait_for(fail_then_die(write), 60))
    os._exit(3)  # not reached: it was killed
os.close(write)
_, status = os.waitpid(child, 0)
check(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child ended {status}")
from sandboxd.backends.local.network import Lease
gone = Lease.from_json(os.read(read, 4096).decode())
asyncio.run(asyncio.wait_for(main(gone), 90))
"""


def test_rules_whose_removal_could_not_start_stay_claimed_and_go_later(tmp_path: Path) -> None:
    """A teardown whose rule removal cannot be started still removes the veth and returns,
    but keeps the network's rules counted and its claim, marked as one to reap. Its process
    is then killed with SIGKILL; the backend's next start (a new manager of the same name)
    reaps them. In a process that lives on, the next teardown removes them first. At the
    end nothing of any of them is left."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    in_own_network_namespace(UNREMOVED, str(tmp_path / "ipam"))


HELD = r"""
import asyncio, subprocess, sys
from sandboxd.backends.base import EgressType
from sandboxd.backends.local.network import NetworkManager
from tests.support.host_network import table_rules as rules

INTERNET = EgressType.INTERNET

def check(ok, what):
    if not ok:
        sys.exit(f"{what}\n" + "\n".join(rules() + rules("nat")))

async def main():
    net = NetworkManager("held", pool="10.214.11.0/24", ipam_dir=sys.argv[1])
    held, other = net.allocate("sb-held"), net.allocate("sb-other")
    await net.setup(held, INTERNET, ())
    await net.setup(other, INTERNET, ())
    # A jump sandboxd does not know of (another tool's): the kernel refuses to delete the
    # chain while it is there, so the removal fails for a reason other than "gone".
    stray = ["INPUT", "-p", "udp", "--dport", "9", "-j", held.chain]
    subprocess.run(["iptables", "-A", *stray], check=True)
    await net.teardown(held, INTERNET, ())
    check(any(f":{held.chain} " in r for r in rules()), "the chain went although it is referenced")
    claims = net.claims()
    check(claims.get(held.index) == f"prepared:{held.tag}", f"claim not kept to reap: {claims}")
    subprocess.run(["iptables", "-D", *stray], check=True)
    await net.teardown(other, INTERNET, ())  # tries the kept one again first
    left = [r for r in rules() + rules("nat") if "SBX-" in r or "sandboxd" in r]
    check(left == [], f"left after the next teardown: {left}")
    check(net.claims() == {}, f"claims left: {net.claims()}")

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
asyncio.run(asyncio.wait_for(main(), 90))
"""


def test_rules_that_failed_to_go_for_another_reason_than_being_gone_stay_claimed(
    tmp_path: Path,
) -> None:
    """A removal that fails rule by rule for a reason other than "not there" (here the
    kernel refuses to delete a chain another rule still jumps to) keeps the network's claim,
    marked as one to reap, and is tried again at the next teardown. Before, each failure of
    the rule-by-rule fallback was taken for a rule gone already: the claim went and the
    rules stayed with nothing to name them (a CI run left four networks' rules so)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    in_own_network_namespace(HELD, str(tmp_path / "ipam"))
