"""Sandboxes in a backend's name that it has no record of, and their removal.

Two ways a backend's host resources can outlive every record of them:

* **A create killed before its first record.** A create claims the sandbox's user-id range
  (a claim file labelled with its id) and makes its cgroup before it writes
  ``record.jsonl``. A runner killed in between leaves a state directory without a record,
  and nothing would ever give the range back: each such kill would shrink the host's pool
  of ranges for good. No process of that sandbox can exist yet (the zygote is asked only
  after the record is written), so the claim, the empty cgroup and the directory can go.
* **A data directory wiped and made again.** A runner killed, its data directory deleted
  and created anew at the same path, and the runner started again: the new backend has the
  same name (it is derived from the path) but no record of the old sandboxes. They would
  run on for good, unreachable, with their memory, networks (internet egress included)
  and id ranges. Everything in the backend's cgroup group that it has no record of is
  ended when it recovers (every sandbox process is in its cgroup from its first
  instruction), and only then are the ranges and networks of sandboxes it does not know
  given back: one given back while a process of its sandbox still ran could be handed to
  another sandbox beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

from ..base import EgressType
from .cgroups import CgroupError, CgroupManager
from .network import NetworkManager
from .prepared_ids import PREPARED
from .state import SandboxRecord
from .userns import IdRangePool

__all__ = ["end_unknown", "forget_unrecorded", "known_names"]

log = logging.getLogger(__name__)


def forget_unrecorded(state_dir: Path, ids: IdRangePool, cgroups: CgroupManager) -> None:
    """Release the id claim labelled with ``state_dir``'s name, its cgroup, then the dir.

    Only while that cgroup holds no process: a record that cannot be read (damaged, say)
    of a sandbox that runs is left alone, ids and all.
    """
    cgroup = cgroups.existing(state_dir.name)
    if cgroup is not None and cgroup.pids():
        log.warning("%s has no readable record but processes run in it; kept", state_dir)
        return
    for claimed in ids.adopt(state_dir.name):
        ids.release(claimed)
    if cgroup is not None:
        with contextlib.suppress(OSError):
            cgroup.remove()  # empty: nothing ever ran in it
    shutil.rmtree(state_dir, ignore_errors=True)


def known_names(
    records: Mapping[str, SandboxRecord], sandboxes_dir: Path, warm: Collection[str]
) -> set[str]:
    """Every name under which a backend may have a sandbox it must keep.

    Its records' ids, every state directory (a record that cannot be read now may be read
    at the next start), its warm slots, and its records' cgroup names: a claimed warm slot's
    cgroup keeps the slot's name.
    """
    cgroups = {os.path.basename(d) for r in records.values() if r.cgroup
               for d in r.cgroup.dirs.values()}  # fmt: skip
    dirs = {d.name for d in sandboxes_dir.iterdir()} if sandboxes_dir.is_dir() else set()
    return {*records, *dirs, *warm, *cgroups}


async def end_unknown(
    known: Collection[str], cgroups: CgroupManager, ids: IdRangePool, net: NetworkManager
) -> int:
    """End the sandboxes of this backend's group not in ``known``, then free what they held.

    ``known`` names every sandbox the backend has a record of, warm slots and creates in
    progress included. Returns how many were ended. A cgroup that cannot be emptied keeps
    every unknown range and network for the next start.
    """
    try:
        ended = await asyncio.to_thread(cgroups.end_sandboxes, known)
    except CgroupError as exc:
        log.warning("sandboxes of %s nobody has a record of did not end: %s", cgroups.group, exc)
        return 0
    for claimed, label in ids.claims():
        if label != PREPARED and label not in known:
            ids.release(claimed)
    for lease in net.claimed_leases(spare=known):
        with contextlib.suppress(Exception):
            await net.teardown(lease, EgressType.INTERNET, ())
    if ended:
        log.warning(
            "ended %d sandboxes of %s that it had no record of (its data directory was "
            "deleted while they ran); nobody could reach, stop or recover them",
            ended,
            cgroups.group,
        )
    return ended
