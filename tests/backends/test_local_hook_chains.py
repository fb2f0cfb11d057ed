"""Sandbox hooks in bucket chains (``hook_chains.py``): shared safely, made again, removed last.

Real rules on this host, made by two network managers (two backends of one host, as two
runners with their own data directories would be) on one pool. Other test workers may have
sandboxes in the same buckets at the same time, so what is checked of a bucket chain is its
lines naming our own leases, and that a chain, when it is gone, is no longer jumped to.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType
from sandboxd.backends.local.hook_chains import filter_group, nat_chain
from sandboxd.backends.local.network import Lease, NetworkManager

POOL = "10.214.8.0/24"
INTERNET = EgressType.INTERNET


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def _chain(name: str, table: str = "filter") -> list[str]:
    """The ``-A`` lines of chain ``name``; empty when the chain does not exist."""
    shown = subprocess.run(["iptables", "-t", table, "-S", name], capture_output=True, text=True)
    return [line for line in shown.stdout.splitlines() if line.startswith("-A ")]


def _jumps_to(chain: str, table: str = "filter") -> list[str]:
    rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
    return [line for line in rules.splitlines() if line.endswith(f"-j {chain}")]


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
    lines = _chain(chain, table)
    assert not [line for line in lines for lease in ours if lease.tag in line]
    if not lines:
        assert _jumps_to(chain, table) == [], f"{chain} is gone but still jumped to"


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
                    assert [r for r in _chain(into) if f"-i {lease.host_if} " in r]
                    assert [r for r in _chain(forward) if f"-j {lease.chain}" in r]
                    assert [r for r in _chain(nat_chain(lease.sandbox_ip), "nat") if lease.tag in r]
                # One jump per hook, however many backends made the group's chains.
                hooks = '-m comment --comment "sandboxd:hooks"'
                assert _jumps_to(into) == [f"-A INPUT -i sbx{bucket}+ {hooks} -j {into}"]
                assert sorted(_jumps_to(forward)) == [
                    f"-A FORWARD -i sbx{bucket}+ {hooks} -j {forward}",
                    f"-A FORWARD -o sbx{bucket}+ {hooks} -j {forward}",
                ]
                await a.teardown(la, INTERNET, ())  # a's last network: it tries to remove
                assert not [r for r in _chain(into) + _chain(forward) if la.tag in r]
                assert [r for r in _chain(into) if lb.tag in r]  # b's hooks stay whole
                assert [r for r in _chain(forward) if f"-j {lb.chain}" in r]
                assert len(_jumps_to(into)) == 1 and len(_jumps_to(forward)) == 2
                assert _chain(lb.chain)  # and b's own chain
            finally:
                await b.teardown(lb, INTERNET, ())
        finally:
            await a.teardown(la, INTERNET, ())  # again if it failed before: tolerated
        for chain in (into, forward):
            _gone_or_unused(chain, [la, lb])
        _gone_or_unused(nat_chain(la.sandbox_ip), [la, lb], "nat")
        assert a.claims() == {} and b.claims() == {}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_hook_chain_removed_under_a_backend_is_made_again(tmp_path: Path) -> None:
    """Backend a made a bucket's chains and still has a network elsewhere; the bucket's
    chains, empty, are removed by another backend's last teardown. a's next network in that
    bucket makes them again instead of failing (a does not know they went)."""
    a = NetworkManager("hookagain", pool=POOL, ipam_dir=str(tmp_path / "ipam"))
    taken: set[str] = set()
    keep_id = f"sb-hooks-{os.getpid()}-keep"
    keep_bucket = a.tag_for(keep_id)[0]

    async def removed_under_us(leases: list[Lease]) -> str:
        """A bucket whose chains a made and that another backend then removed."""
        for bucket in (d for d in "0123456789abcdef" if d != keep_bucket):
            first = a.allocate(_sandbox_in_bucket(a, bucket, taken))
            leases.append(first)
            await a.setup(first, INTERNET, ())
            await a.teardown(first, INTERNET, ())  # a still has `keep`: nothing removed
            assert _jumps_to(f"SBX-I-{bucket}")
            group = filter_group(first.tag)
            removed = subprocess.run(
                ["iptables-restore", "--noflush"],
                input=group.transaction(group.remove),
                text=True,
                capture_output=True,
            )  # what another backend's last teardown does; refused while others use it
            if removed.returncode == 0:  # else another test worker has sandboxes there
                return bucket
        raise AssertionError("every bucket's chains were in use by other sandboxes")

    async def scenario() -> None:
        keep = a.allocate(keep_id)
        leases = [keep]
        await a.setup(keep, INTERNET, ())
        try:
            bucket = await removed_under_us(leases)
            assert _chain(f"SBX-I-{bucket}") == [] and _jumps_to(f"SBX-I-{bucket}") == []
            again = a.allocate(_sandbox_in_bucket(a, bucket, taken))
            leases.append(again)
            await a.setup(again, INTERNET, ())
            assert [r for r in _chain(f"SBX-I-{bucket}") if f"-i {again.host_if} " in r]
            assert [r for r in _chain(f"SBX-F-{bucket}") if f"-j {again.chain}" in r]
            assert len(_jumps_to(f"SBX-I-{bucket}")) == 1
        finally:
            for lease in reversed(leases):
                await a.teardown(lease, INTERNET, ())
        for lease in leases:
            _gone_or_unused(f"SBX-I-{lease.tag[0]}", leases)
            _gone_or_unused(f"SBX-F-{lease.tag[0]}", leases)
        assert a.claims() == {}

    asyncio.run(asyncio.wait_for(scenario(), 60))
