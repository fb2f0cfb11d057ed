"""A dead owner's networks are taken back only from the network namespace it ran in.

Why: ``/run/sandboxd`` is shared by every runner that shares the host's mounts, also by one
in a network namespace of its own (a runner in a container with its own network, the fault
tests' "hosts"). Such a runner's reaper used to tear down a dead host runner's prepared
networks in its own namespace, where their rules never were: every removal said "not
there", the claims were given back, and the rules stayed on the host with nothing left that
named them (found on this machine after a CI run: four networks' rules, no claim).

The claims here are real files in the host-wide claim directory, in a pool no other test
uses; no network is made (the teardown of one that is not there is what the reaper did).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxd.backends.local.network import PREPARED_HOLDER, NetworkManager
from sandboxd.backends.local.orphans import Reaped, reap_orphans
from sandboxd.backends.local.owners import OwnerLock, netns_id

POOL = "10.215.6.0/24"


def _other_namespace() -> str:
    """The id of a network namespace that is not this one (made for the purpose)."""
    code = "from sandboxd.backends.local.owners import netns_id; print(netns_id())"
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", code],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


async def _sweep(owners: Path, idmap: Path) -> Reaped:
    async def none_left(_group: str) -> int:
        return 0

    return await reap_orphans(
        "sweeper0",
        POOL,
        owners_dir=str(owners),
        idmap_dir=str(idmap),
        remove_group=lambda _group: True,
        end_sandboxes=none_left,
    )


@pytest.mark.parametrize("where", ["here", "elsewhere"])
def test_a_dead_owners_networks_are_taken_back_only_in_its_own_network_namespace(
    tmp_path: Path, where: str
) -> None:
    """An abandoned owner (its data directory deleted) with a network made ahead: from its
    own namespace the reaper takes the network back and the lock file goes; from another
    it leaves the claim and the lock file for a reaper there. Without the check, the claim
    went in both cases."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the host-wide claim directory and a network namespace")
    owners, idmap = tmp_path / "owners", tmp_path / "idmap"
    owners.mkdir()
    idmap.mkdir()
    key = f"netns-{where}"
    net = NetworkManager(key, POOL)
    lease = net.allocate("made-ahead")
    net.assign(lease, f"{PREPARED_HOLDER}{lease.tag}")
    recorded = netns_id() if where == "here" else _other_namespace()
    assert recorded is not None and (where == "here") == (recorded == netns_id())
    (owners / key).write_text(json.dumps({"data_dir": str(tmp_path / "gone"), "netns": recorded}))
    try:
        reaped = asyncio.run(_sweep(owners, idmap))
        if where == "here":
            assert net.claims() == {}
            assert reaped.networks == 1 and not (owners / key).exists()
        else:
            assert net.claims() == {lease.index: f"{PREPARED_HOLDER}{lease.tag}"}
            assert reaped.networks == 0 and (owners / key).exists()
            asyncio.run(_sweep(owners, idmap))  # a later sweep from here: still not its
            assert net.claims() == {lease.index: f"{PREPARED_HOLDER}{lease.tag}"}
    finally:
        net.release(lease)


def test_an_owner_records_its_network_namespace(tmp_path: Path) -> None:
    """The lock file names the holder's network namespace beside its data directory."""
    lock = OwnerLock("recorder", str(tmp_path), data_dir=str(tmp_path / "data"))
    asyncio.run(lock.hold())
    try:
        recorded = json.loads((tmp_path / "recorder").read_text())
        assert recorded == {"data_dir": str(tmp_path / "data"), "netns": netns_id()}
    finally:
        lock.release()
