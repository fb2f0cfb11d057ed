"""A dead owner's networks are taken back only from the network namespace it ran in.

Why: ``/run/sandboxd`` is shared by every runner that shares the host's mounts, also by one
in a network namespace of its own (a runner in a container with its own network, the fault
tests' "hosts"). Such a runner's reaper used to tear down a dead host runner's prepared
networks in its own namespace, where their rules never were: every removal said "not
there", the claims were given back, and the rules stayed on the host with nothing left that
named them (found on this machine after a CI run: four networks' rules, no claim).

The claims here are real files in the host-wide claim directory, in a pool no other test
uses; no network is made (the teardown of one that is not there is what the reaper did).
A namespace that stays is one made with ``ip netns add``, removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.backends.local.network import PREPARED_HOLDER, NetworkManager
from sandboxd.backends.local.orphans import Reaped, reap_orphans
from sandboxd.backends.local.owners import OwnerLock, netns_id, netns_in_use
from tests.support.faults import wait_until

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


@contextlib.contextmanager
def _live_namespace() -> Iterator[str]:
    """A named network namespace (``ip netns add``) that exists until the block ends."""
    name = f"sbxorph{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        found = os.stat(f"/run/netns/{name}")
        yield f"{found.st_dev}:{found.st_ino}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.mark.parametrize("where", ["here", "elsewhere", "gone"])
def test_a_dead_owners_networks_are_taken_back_only_in_its_own_network_namespace(
    tmp_path: Path, where: str
) -> None:
    """An abandoned owner (its data directory deleted) with a network made ahead:
    - from its own namespace the reaper takes the network back and the lock file goes;
    - from another namespace that still exists, the claim and the lock file stay for a
      reaper there (without the check, the claim went and the rules stayed);
    - from a namespace that is gone (its links and rules went with it), the claim is given
      back and the lock file goes (kept, they would stay until the host reboots)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the host-wide claim directory and network namespaces")
    owners, idmap = tmp_path / "owners", tmp_path / "idmap"
    owners.mkdir()
    idmap.mkdir()
    key = f"netns-{where}"
    net = NetworkManager(key, POOL)
    lease = net.allocate("made-ahead")
    net.assign(lease, f"{PREPARED_HOLDER}{lease.tag}")
    claimed = {lease.index: f"{PREPARED_HOLDER}{lease.tag}"}
    with contextlib.ExitStack() as stack:
        stack.callback(net.release, lease)
        if where == "here":
            recorded = netns_id()
        elif where == "elsewhere":
            recorded = stack.enter_context(_live_namespace())
        else:
            recorded = _other_namespace()  # its process has exited: the namespace is gone
        assert recorded is not None and (where == "here") == (recorded == netns_id())
        lock = {"data_dir": str(tmp_path / "gone"), "netns": recorded}
        (owners / key).write_text(json.dumps(lock))
        reaped = asyncio.run(_sweep(owners, idmap))
        if where == "elsewhere":
            assert net.claims() == claimed
            assert reaped.networks == 0 and (owners / key).exists()
            asyncio.run(_sweep(owners, idmap))  # a later sweep from here: still not its
            assert net.claims() == claimed
        else:
            assert net.claims() == {}
            assert reaped.networks == 1 and not (owners / key).exists()


def test_an_owner_records_its_network_namespace(tmp_path: Path) -> None:
    """The lock file names the holder's network namespace beside its data directory."""
    lock = OwnerLock("recorder", str(tmp_path), data_dir=str(tmp_path / "data"))
    asyncio.run(lock.hold())
    try:
        recorded = json.loads((tmp_path / "recorder").read_text())
        assert recorded == {"data_dir": str(tmp_path / "data"), "netns": netns_id()}
    finally:
        lock.release()


@pytest.mark.parametrize("hold", ["mount", "descriptor"])
def test_a_namespace_held_only_by_a_mount_or_a_descriptor_still_exists(
    tmp_path: Path, hold: str
) -> None:
    """A namespace with no process left in it lives on while a bind mount anywhere (not only
    under ``/run/netns``) or an open descriptor holds it, with its links and rules: an
    owner from it is not gone. Once the last hold goes, it is. (Before, both holds were
    missed, and such an owner's claims were given back while its rules stayed.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and mounts")
    ours = netns_id()
    proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])
    place = f"/proc/{proc.pid}/ns/net"
    held = tmp_path / "held net"  # a space: mountinfo writes it as \040
    fd = -1
    try:
        wait_until("the process to be in a namespace of its own",
                   lambda: netns_id(place) not in (None, ours), 30)  # fmt: skip
        wanted = netns_id(place)
        assert wanted is not None
        if hold == "mount":
            held.touch()
            subprocess.run(["mount", "--bind", place, str(held)], check=True)
        else:
            fd = os.open(place, os.O_RDONLY | os.O_CLOEXEC)
        proc.kill()
        proc.wait()
        assert netns_in_use(wanted)
    finally:
        proc.kill()
        proc.wait()
        if hold == "mount":
            subprocess.run(["umount", str(held)], check=False, capture_output=True)
        elif fd >= 0:
            os.close(fd)
    assert not netns_in_use(wanted)
