"""Reaping what dead backends on this host made ahead of need and nobody will take back.

Why: see ``owners.py``. A backend reaps its own key's leftovers when it starts
(:meth:`PreparedNetworks.reap`, :meth:`PreparedIdRanges._adopt`); this module does the same
for every other key whose owner is provably gone (its lock is free), so that a runner
killed for good, its data directory deleted, leaks nothing for longer than it takes the
next backend on the host to start. Only claims marked as made ahead are touched: those of
sandboxes stay until their own runner comes back for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .connection_trail import group_for
from .network import NetworkManager
from .network_pool import PreparedNetworks
from .owners import OWNERS_DIR, orphaned, other_keys
from .prepared_ids import PREPARED
from .userns import IDMAP_DIR, IdRangePool

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    """What one sweep took back: owners found gone, networks torn down, ranges released."""

    owners: int = 0
    networks: int = 0
    ranges: int = 0


def backend_group(key: str) -> str:
    """A backend's name on the host: its cgroup group and the owner of its id-range claims."""
    return f"sandboxd-{key}"


async def reap_orphans(
    own_key: str,
    network_pool: str,
    *,
    owners_dir: str = OWNERS_DIR,
    idmap_dir: str = IDMAP_DIR,
    remove_group: Callable[[str], None] | None = None,
) -> Reaped:
    """Tear down the prepared networks and release the prepared ranges of dead owners.

    ``remove_group`` is given each dead owner's cgroup group name, to remove it if empty
    (its sandboxes' groups keep it while any is left).
    """
    reaped = Reaped()
    for key in other_keys(own_key, owners_dir):
        with orphaned(key, owners_dir) as gone:
            if not gone:
                continue
            reaped.owners += 1
            net = NetworkManager(key, network_pool)
            net.log_group = group_for(key)  # its rules may log there: removed with them
            reaped.networks += await PreparedNetworks(net, 0).reap()
            ids = IdRangePool(backend_group(key), claim_dir=idmap_dir)
            for ids_range in ids.adopt(PREPARED):
                ids.release(ids_range)
                reaped.ranges += 1
            if remove_group is not None:
                remove_group(backend_group(key))
    if reaped.networks or reaped.ranges:
        log.info(
            "took back %d networks and %d id ranges that %d dead backends made ahead",
            reaped.networks,
            reaped.ranges,
            reaped.owners,
        )
    return reaped
