"""Sandbox firewall rules put back when something else changed the host's ruleset.

Why: a sandbox's network is filtered only by its rules on the host (``network.py``), and the
host's own tools may take them away at any time: a firewall reload (``firewalld``, ``ufw``,
``netfilter-persistent``, ``iptables-restore`` of a saved file by configuration management)
flushes every chain, ours included. Before this watch only the backend's next add noticed
(its jump checks failed), and it put back its groups' jumps and its own rules, not those of
the sandboxes already running: they stayed unfiltered for good, free to reach the host's
services, private networks and the cloud's metadata address.

How: the kernel announces every committed change of the ruleset with the pid of the process
that made it (``netlink.RulesetChanges``). A change this process's own commands made (a
create, a teardown: they wrote what they meant to) needs no look. One of another process's
(or notices lost to an overflow) wakes the watch, which waits until the host changed nothing
for :data:`SETTLE_SECONDS` (the rest of a reload: see ``RuleWatch._settle``), reads the
ruleset once (``iptables-save``) and counts, for each of its networks, the rules that must
be there (:func:`find_damage`): the network's hooks (found by their ``sandboxd:<tag>``
comment), its own chain's rules, the jumps of the hook groups it uses, the shared chain.
What is short is written again (``NetworkManager.put_back``): a network's hooks and its
chain as they were written (read back from the kernel for a network this process recovered,
by a look its claim brings about at once), the groups' jumps, the shared chain; the look after
it checks what the repair wrote. So a reload leaves the sandboxes unfiltered for its own
duration and a few hundred milliseconds, not until the next create. The rules are also read
every :data:`FULL_LOOK_SECONDS` in any case. Without the notices (a runner in a pid
namespace of its own, whose pids are not the ones the kernel names) every new ruleset
generation (``netlink.nft_generation``, read every :data:`CHECK_SECONDS`, about 7 µs) leads
to a look; where no generation can be read (``iptables-legacy``) the watch looks every
:data:`LEGACY_CHECK_SECONDS`.

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
from .host_commands import NetworkError, run, started_here
from .netlink import RulesetChanges, nft_generation

if TYPE_CHECKING:
    from .network import Lease, NetworkManager

__all__ = ["Damage", "RuleWatch", "find_damage"]

_log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
"""How often the watch reads the ruleset generation (and reads the rules if it changed)."""
LEGACY_CHECK_SECONDS = 10.0
"""How often it reads the rules where no generation can be read (``iptables-legacy``)."""
SETTLE_SECONDS = 0.2
"""How long the host must have changed no rule before the watch looks (``RuleWatch._settle``):
a reload of several commands is then over, and is put back once, after it."""
MAX_SETTLE_SECONDS = 3.0
"""The longest the watch waits for the host's changes to stop before it looks anyway."""
MIN_LOOK_SECONDS = 0.25
"""The least time between two looks that the host's changes wake: where other backends (or
tools) on the host change rules all the time, each backend reads them at most four times a
second."""
FULL_LOOK_SECONDS = 60.0
"""How often it reads the rules even when the kernel's notices name no change of the host's."""
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
    declared: set[str] = field(default_factory=set)  # every chain there, empty ones too

    @classmethod
    def parse(cls, text: str) -> Saved:
        """Count the ``-A`` lines of every table of ``iptables-save``'s output."""
        saved = cls()
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                continue
            if line.startswith(":"):
                saved.declared.add(line[1:].split(" ", 1)[0])
                continue
            if not line.startswith("-A "):
                continue
            words = line.split()
            if len(words) < 2:
                continue
            chain = words[1]
            saved.chains.setdefault(chain, []).append(line)
            if _HOOKS_MARK in line and "-j" in words[:-1]:
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
        short = any(saved.hooks[(table, lease.tag)] < count for table, count in want.items())
        written = chains.get(lease.tag)
        rules = sum(line.startswith("-A ") for line in written) if written else 1
        if short or len(saved.chains.get(lease.chain, ())) < rules:
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


def _in_first_pid_namespace() -> bool:
    """Whether this process's pids are the ones the kernel's notices name.

    The notices name a committing process by its pid in the first pid namespace; only a
    process in that namespace can tell its own commands' commits from the host's by pid.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        pass
    return False


class RuleWatch:
    """The watch of one ``NetworkManager``'s rules (see the module docstring)."""

    def __init__(self, net: NetworkManager) -> None:
        self._net = net
        self._task: asyncio.Task[None] | None = None
        self._seen: int | None = None  # the generation of the last look that found all
        self._looked_at = -1e9
        self._legacy = _legacy_iptables()
        self._changes: RulesetChanges | None = None
        # Set when the host (not this process) committed a change, or notices were lost;
        # set at first, so the first look reads recovered networks' chains back.
        self._foreign = True
        self._wake = asyncio.Event()
        self.looks = 0  # times the rules were read
        self.repairs = 0  # looks that found something missing and wrote it again

    def start(self) -> None:
        """Watch from now on (once); not before there is a running event loop to watch on."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside the loop: the next add or claim on it starts it
        if self._changes is None and not self._legacy and _in_first_pid_namespace():
            try:
                self._changes = RulesetChanges()
                loop.add_reader(self._changes.fileno(), self._on_notices)
            except OSError as exc:  # no nf_tables notices here: the generation is read instead
                _log.info("firewall rule watch without change notices: %s", exc)
                self._changes = None
        self._wake.set()  # a first look at once: it learns recovered networks' chains
        self._task = loop.create_task(self._watch(), name="rule-watch")

    def look_soon(self) -> None:
        """Look once the host is quiet, also if nothing changed: a network was recovered.

        Its chain is known only from the kernel; the sooner a look reads it back, the
        shorter the time in which a reload would leave it to be closed (``_closed_chain``).
        """
        self._foreign = True
        self._wake.set()

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._changes is not None:
            asyncio.get_running_loop().remove_reader(self._changes.fileno())
            self._changes.close()
            self._changes = None

    def _on_notices(self) -> None:
        """Read the kernel's notices; a commit of the host's wakes the watch at once."""
        if self._changes is not None and self._changes.drain(started_here):
            self._foreign = True
            self._wake.set()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_SECONDS):
                    await self._wake.wait()
            if self._wake.is_set():
                await self._settle()
            try:
                await self.look()
            except Exception:  # one failed look must not end the watch
                _log.exception("firewall rule watch: the look failed; trying again")

    async def _settle(self) -> None:
        """Wait until the host's change is over: no new one for :data:`SETTLE_SECONDS`.

        Why: a firewall manager's reload is often many commands (flush, delete the chains,
        add its rules). Our chains put back between its flush and its ``-X`` would make that
        ``-X`` fail (a chain still referenced), and a script that stops at a failure would
        leave the host's firewall half made. So the watch waits for quiet, at most
        :data:`MAX_SETTLE_SECONDS` (a host that never stops changing rules is looked at
        anyway), and never sooner than :data:`MIN_LOOK_SECONDS` after its last look.
        """
        started = time.monotonic()
        while True:
            self._wake.clear()
            await asyncio.sleep(SETTLE_SECONDS)
            waited = time.monotonic() - started
            if not self._wake.is_set() or waited >= MAX_SETTLE_SECONDS:
                break
        since = time.monotonic() - self._looked_at
        if since < MIN_LOOK_SECONDS:
            await asyncio.sleep(MIN_LOOK_SECONDS - since)
        self._wake.clear()

    def _changed(self, generation: int | None, now: float) -> bool:
        """Whether a look is due: something other than this process changed the ruleset.

        With the kernel's notices, only a commit of another process (or lost notices)
        counts, and once in :data:`FULL_LOOK_SECONDS` a look is due anyway; without them,
        any new generation, or where there is none every :data:`LEGACY_CHECK_SECONDS`.
        """
        if self._changes is not None:
            self._on_notices()  # what queued up to now
            return self._foreign or now - self._looked_at >= FULL_LOOK_SECONDS
        if generation is None:
            return now - self._looked_at >= LEGACY_CHECK_SECONDS
        return generation != self._seen

    async def look(self, *, force: bool = False) -> Damage:
        """Look once, if the ruleset changed since the last look; put back what is missing."""
        generation = None if self._legacy else nft_generation()
        now = time.monotonic()
        if not force and not self._changed(generation, now):
            return Damage()
        self._looked_at = now
        self._foreign = False  # a change from here on is seen by the next look
        net = self._net
        leases = [lease for lease in net.watched_leases() if lease.hooks == CHAINED]
        if not leases:
            self._seen = generation
            return Damage()
        self.looks += 1
        try:
            saved = Saved.parse(await run("iptables-save"))
        except NetworkError as exc:
            _log.warning("firewall rule watch: cannot read the rules: %s", exc)
            self._foreign = True  # look again
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
        try:
            await net.put_back(damage, groups, saved)
        finally:
            self._foreign = True  # the next look checks what the repair wrote
        return damage
