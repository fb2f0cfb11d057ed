"""Reaping what dead backends on this host made ahead of need and nobody will take back.

Why: see ``owners.py``. A backend reaps its own key's leftovers when it starts
(:meth:`PreparedNetworks.reap`, :meth:`PreparedIdRanges._adopt`); this module does the same
for every other key whose owner is provably gone (its lock is free), so that a runner
killed for good, its data directory deleted, leaks nothing for longer than it takes the
next backend on the host to start. Only claims marked as made ahead are touched: those of
sandboxes stay until their own runner comes back for them.

Unless none can come back: an owner whose data directory no longer exists at all
(``Orphan.abandoned`` in ``owners.py``) left sandboxes nobody can reach, stop, read or
recover (their records, agent sockets and logs were in that directory), that would
otherwise run until the host reboots, holding memory, their networks and id ranges. Those
are ended: every process in the owner's cgroup group is killed and its cgroups removed,
and all of the owner's networks and id ranges are taken back, not only those made ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..base import EgressType
from .connection_trail import group_for
from .network import IPAM_DIR, PREPARED_HOLDER, NetworkManager
from .network_pool import PreparedNetworks
from .owners import OWNERS_DIR, orphaned, other_keys
from .prepared_ids import PREPARED
from .userns import IDMAP_DIR, IdRangePool

log = logging.getLogger(__name__)

ORPHAN_SWEEP_SECONDS = 300.0
"""How often a running backend looks again for what dead ones left (:class:`OrphanSweeper`)."""


@dataclass
class Reaped:
    """What one sweep took back: owners found gone, networks torn down, ranges released.

    ``sandboxes``: sandboxes of abandoned owners (data directory gone too) that were ended.
    """

    owners: int = 0
    networks: int = 0
    ranges: int = 0
    sandboxes: int = 0


def backend_group(key: str) -> str:
    """A backend's name on the host: its cgroup group and the owner of its id-range claims."""
    return f"sandboxd-{key}"


async def reap_orphans(
    own_key: str,
    network_pool: str,
    *,
    owners_dir: str = OWNERS_DIR,
    idmap_dir: str = IDMAP_DIR,
    remove_group: Callable[[str], bool] | None = None,
    end_sandboxes: Callable[[str], Awaitable[int]] | None = None,
) -> Reaped:
    """Tear down the prepared networks and release the prepared ranges of dead owners.

    ``remove_group`` is given each dead owner's cgroup group name, to remove it if empty
    (its sandboxes' groups keep it while any is left); it says whether the group is gone.
    ``end_sandboxes`` is given the group of each abandoned owner, to kill its sandboxes and
    remove their cgroups (how many); the owner's networks and ranges are then all taken
    back. Without it nothing is ended.
    """
    reaped = Reaped()
    for key in other_keys(own_key, owners_dir):
        with orphaned(key, owners_dir) as orphan:
            if orphan is None:
                continue
            reaped.owners += 1
            everything = end_sandboxes is not None and orphan.abandoned
            if everything and end_sandboxes is not None:
                # First, and all of them: a range or network taken back while a process of
                # its sandbox still ran could be handed to another sandbox beside it.
                try:
                    reaped.sandboxes += await end_sandboxes(backend_group(key))
                except OSError as exc:
                    log.warning("abandoned backend %s: %s; trying again next start", key, exc)
                    orphan.keep = True
                    continue
            nets = [NetworkManager(key, pool) for pool in pools_on_host(network_pool)]
            # An owner from another network namespace: while that namespace exists its
            # networks are there, that namespace's reaper's to take back, and stay claimed
            # (``Orphan.foreign_and_alive``); once it is gone they went with it, and only
            # their claims are left to give back.
            # (The look for that namespace may read every descriptor on the host: in a
            # thread, and only for an owner from elsewhere that has networks.)
            elsewhere = (
                orphan.foreign
                and any(net.claims() for net in nets)
                and await asyncio.to_thread(lambda: orphan.foreign_and_alive)
            )
            for net in [] if elsewhere else nets:
                net.log_group = group_for(key)  # its rules may log there: removed with them
                if orphan.foreign:
                    reaped.networks += _release_claims(net, everything)
                elif everything:
                    reaped.networks += await _tear_down_all(net)
                else:
                    reaped.networks += await PreparedNetworks(net, 0).reap()
            ids = IdRangePool(backend_group(key), claim_dir=idmap_dir)
            for ids_range in ids.claimed() if everything else ids.adopt(PREPARED):
                ids.release(ids_range)
                reaped.ranges += 1
            group_gone = remove_group is None or remove_group(backend_group(key))
            # Sandboxes of it run on, or their ranges and networks are still claimed (it
            # was killed while it tore one down): a later reaper looks again. Its runner may
            # come back for them, or its data directory be deleted after all; the claims
            # go then, not now: a runner that comes back releases what its records name.
            left = bool(ids.claimed() or any(net.claims() for net in nets))
            orphan.keep = elsewhere or (
                orphan.data_dir is not None and not everything and (not group_gone or left)
            )
    if reaped.sandboxes:
        log.warning(
            "ended %d sandboxes of backends whose data directory was deleted after they died "
            "(nobody could reach or recover them)",
            reaped.sandboxes,
        )
    if reaped.networks or reaped.ranges:
        log.info(
            "took back %d networks and %d id ranges that %d dead backends left",
            reaped.networks,
            reaped.ranges,
            reaped.owners,
        )
    return reaped


def pools_on_host(own: str, ipam_dir: str = IPAM_DIR) -> list[str]:
    """``own`` and every other sandbox network pool that has claims on this host.

    Why every one: a backend files its claims under its own pool (``NetworkManager.ipam``),
    so a dead backend that used another pool than the sweeper left them where a sweep of
    the sweeper's pool alone never looked, and its owner's lock file then went with
    nothing to name them: its networks stayed for good.
    """
    found = [own]
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(ipam_dir)):
            with contextlib.suppress(ValueError):
                pool = ipaddress.IPv4Network(name.replace("_", "/"))
                known = pool.prefixlen > 29 or str(pool) in found  # NetworkManager takes /29+
                if not known and os.path.isdir(os.path.join(ipam_dir, name)):
                    found.append(str(pool))
    return found


def _release_claims(net: NetworkManager, everything: bool) -> int:
    """Give back the claims of networks whose namespace is gone (their parts went with it).

    ``everything``: its sandboxes' too (they were ended); else only those made ahead.
    """
    holders = net.claims()
    leases = [
        lease
        for lease in net.claimed_leases()
        if everything or holders.get(lease.index, "").startswith(PREPARED_HOLDER)
    ]
    for lease in leases:
        net.release(lease)
    return len(leases)


async def _tear_down_all(net: NetworkManager) -> int:
    """Every network ``net``'s (abandoned) owner claims, its sandboxes' as well; how many."""
    gone = 0
    for lease in net.claimed_leases():
        with contextlib.suppress(Exception):
            await net.teardown(lease, EgressType.INTERNET, ())
            gone += 1
    return gone


class OrphanSweeper:
    """:func:`reap_orphans` when a backend starts, then every ``interval`` seconds.

    Why again while it runs: a dead runner's data directory may be deleted while the other
    runners on the host keep running for weeks, and its sandboxes would run on until one of
    them restarted. A sweep tries one lock per other backend's lock file (a live backend's
    refuses at once), so it costs next to nothing on a host where nothing died. A sweep that
    is cancelled part-way leaves the owner's lock file for the next one.
    """

    def __init__(
        self,
        own_key: str,
        network_pool: str,
        *,
        remove_group: Callable[[str], bool],
        end_sandboxes: Callable[[str], Awaitable[int]],
        interval: float = ORPHAN_SWEEP_SECONDS,
    ) -> None:
        self._own_key = own_key
        self._network_pool = network_pool
        self._remove_group = remove_group
        self._end_sandboxes = end_sandboxes
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> Reaped:
        """One sweep of every dead owner on the host."""
        return await reap_orphans(
            self._own_key,
            self._network_pool,
            remove_group=self._remove_group,
            end_sandboxes=self._end_sandboxes,
        )

    def start(self) -> None:
        """Sweep every ``interval`` seconds from now on (once; until :meth:`close`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._every_interval(), name="orphan-sweeper")

    async def close(self) -> None:
        """Stop sweeping (a sweep in progress is cancelled; what it did is done)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Exception:  # a sweep that failed is tried again next time
                log.exception("sweeping what dead backends left failed")
