"""Sandbox firewall rules put back when something else changed the host's ruleset.

Why: a sandbox's network is filtered only by its rules on the host (``network.py``), and the
host's own tools may take them away at any time: a firewall reload (``firewalld``, ``ufw``,
``netfilter-persistent``, ``iptables-restore`` of a saved file by configuration management)
flushes every chain, ours included. Before this watch only the backend's next add noticed
(its jump checks failed), and it put back its groups' jumps and its own rules, not those of
the sandboxes already running: they stayed unfiltered for good, free to reach the host's
services, private networks and the cloud's metadata address.

How: every :data:`CHECK_SECONDS` the watch reads the kernel's ruleset generation
(``netlink.nft_generation``, about 7 µs). Unchanged since the last look, nothing changed any
rule and nothing runs. Changed (by anyone, this backend included), it reads the ruleset
once (``iptables-save``) and counts, for each of its networks, the rules that must be there
(:func:`find_damage`): the network's hooks (found by their ``sandboxd:<tag>`` comment),
its own chain's rules, the jumps of the hook groups it uses, the shared chain. What is
short is written again (``NetworkManager.restore``): a network's hooks and its chain as
they were written (read back from the kernel for a network this process recovered, the
first time it looks), the groups' jumps, the shared chain. So a reload leaves the sandboxes
unfiltered for about a second, not until the next create. Where the generation cannot be
read (``iptables-legacy``) the watch looks every :data:`LEGACY_CHECK_SECONDS`.

Networks whose rules are being written or removed right now (``NetworkManager.busy``) are
left to that work, and so are networks of earlier versions (hooks in ``INPUT`` itself). Only
missing rules count as damage: a rule the host added beside ours changes nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .egress import SHARED_CHAIN
from .hook_chains import CHAINED, HOOKS_COMMENT, HookGroup
from .host_commands import NetworkError, run
from .netlink import nft_generation

if TYPE_CHECKING:
    from .network import Lease, NetworkManager

__all__ = ["Damage", "RuleWatch", "find_damage"]

_log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
"""How often the watch reads the ruleset generation (and reads the rules if it changed)."""
LEGACY_CHECK_SECONDS = 10.0
"""How often it reads the rules where no generation can be read (``iptables-legacy``)."""
_HOOKS_MARK = '"' + HOOKS_COMMENT.rsplit(" ", 1)[-1] + '"'  # as iptables-save prints it


@dataclass
class Saved:
    """What ``iptables-save`` printed, counted the way :func:`find_damage` asks."""

    # (table, tag) -> rules carrying the comment ``sandboxd:<tag>``
    hooks: Counter[tuple[str, str]] = field(default_factory=Counter)
    # chain -> its rules (``-A`` lines), in order
    chains: dict[str, list[str]] = field(default_factory=dict)
    # (built-in chain, target) -> jumps commented ``sandboxd:hooks``
    jumps: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Saved:
        """Count the ``-A`` lines of every table of ``iptables-save``'s output."""
        saved = cls()
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                continue
            if not line.startswith("-A "):
                continue
            words = line.split()
            if len(words) < 2:
                continue
            chain = words[1]
            saved.chains.setdefault(chain, []).append(line)
            if _HOOKS_MARK in line and "-j" in words:
                saved.jumps[(chain, words[words.index("-j") + 1])] += 1
                continue
            start = line.find('"sandboxd:')
            if start >= 0:
                end = line.find('"', start + 1)
                saved.hooks[(table, line[start + 10 : end])] += 1
        return saved


@dataclass(frozen=True)
class Damage:
    """What a look found missing: networks by tag, hook groups by key, the shared chain."""

    leases: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    shared_chain: bool = False

    def __bool__(self) -> bool:
        return bool(self.leases or self.groups or self.shared_chain)


def expected_hooks(lease: Lease) -> dict[str, int]:
    """How many rules with ``lease``'s comment each table holds: its hooks (chained layout)."""
    return {"filter": 4 if lease.log_group else 3, "nat": 1}


def find_damage(
    saved: Saved,
    leases: Iterable[Lease],
    chains: Mapping[str, tuple[str, ...]],
    groups: Iterable[HookGroup],
    shared: int | None,
) -> Damage:
    """What of ours is missing from ``saved``.

    ``leases``: the networks to look at (chained hooks, not busy); ``chains``: each one's
    own chain as written (tag -> lines; a tag not there is only required to have rules);
    ``groups``: the hook groups they use; ``shared``: how many rules the shared chain must
    have at least (None: no network of ours needs it).
    """
    damaged = []
    for lease in leases:
        want = expected_hooks(lease)
        have = [saved.hooks[(table, lease.tag)] for table in want]
        written = chains.get(lease.tag)
        rules = sum(line.startswith("-A ") for line in written) if written else 1
        if have < list(want.values()) or len(saved.chains.get(lease.chain, ())) < rules:
            damaged.append(lease.tag)
    broken = []
    for group in groups:
        wanted = Counter((jump.split()[0], jump.split()[-1]) for jump in group.jumps)
        if any(saved.jumps[key] < count for key, count in wanted.items()):
            broken.append(group.key)
    shared_missing = shared is not None and len(saved.chains.get(SHARED_CHAIN, ())) < shared
    return Damage(tuple(damaged), tuple(broken), shared_missing)


def _legacy_iptables() -> bool:
    """Whether ``iptables`` here is the legacy one, whose changes no generation counts."""
    found = shutil.which("iptables")
    return found is None or "legacy" in os.path.realpath(found)


class RuleWatch:
    """The watch of one ``NetworkManager``'s rules (see the module docstring)."""

    def __init__(self, net: NetworkManager) -> None:
        self._net = net
        self._task: asyncio.Task[None] | None = None
        self._seen: int | None = None  # the generation of the last look that found all
        self._looked_at = -1e9
        self._legacy = _legacy_iptables()
        self.repairs = 0  # looks that found something missing and wrote it again

    def start(self) -> None:
        """Watch from now on (once; the caller has a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="rule-watch")

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                await self.look()
            except Exception:  # one failed look must not end the watch
                _log.exception("firewall rule watch: the look failed; trying again")

    async def look(self, *, force: bool = False) -> Damage:
        """Look once, if the ruleset changed since the last look; put back what is missing."""
        generation = None if self._legacy else nft_generation()
        now = time.monotonic()
        if not force:
            if generation is not None and generation == self._seen:
                return Damage()
            if generation is None and now - self._looked_at < LEGACY_CHECK_SECONDS:
                return Damage()
        self._looked_at = now
        net = self._net
        leases = [lease for lease in net.watched_leases() if lease.hooks == CHAINED]
        if not leases:
            self._seen = generation
            return Damage()
        try:
            saved = Saved.parse(await run("iptables-save"))
        except NetworkError as exc:
            _log.warning("firewall rule watch: cannot read the rules: %s", exc)
            return Damage()
        now_watched = {lease.tag for lease in net.watched_leases()}
        leases = [lease for lease in leases if lease.tag in now_watched]  # none went meanwhile
        chains = net.chains_as_written(saved.chains, leases)
        groups = net.groups_of(leases)
        damage = find_damage(saved, leases, chains, groups.values(), net.shared_chain_expected())
        if not damage:
            self._seen = generation
            return damage
        self.repairs += 1
        _log.warning(
            "the host's firewall lost rules of this runner's sandbox networks (a firewall "
            "reload?): putting back %d networks' rules, %d hook groups%s",
            len(damage.leases), len(damage.groups),
            " and the shared egress chain" if damage.shared_chain else "",
        )  # fmt: skip
        await net.put_back(damage, groups)
        return damage  # the next look checks what the repair wrote (its generation is new)
