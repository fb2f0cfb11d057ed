"""What a network manager does for its rule watch: say what must be there, put back what is not.

A mixin of ``NetworkManager`` (``network.py``), kept apart so that each module stays small;
``rule_watch.py`` says when and why it is called. Everything here runs on the backend's event
loop, like the rest of the manager, and writes through the same rule writer, so the order
of its writes and the creates' and teardowns' holds as for any other transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from ipaddress import IPv4Network

from . import egress as policy
from .hook_chains import HookGroup
from .host_commands import NetworkError
from .lease import Lease
from .rule_watch import Damage, RuleWatch, Saved
from .rule_writer import RuleWriter
from .shared_rules_lock import SharedRulesLock

__all__ = ["RulesPutBack"]

_log = logging.getLogger(__name__)


class RulesPutBack:
    """The rule watch's side of ``NetworkManager`` (which sets every attribute below)."""

    _watch: RuleWatch | None
    _active: dict[str, Lease]
    busy: Counter[str]
    _restoring: dict[str, asyncio.Future[None]]
    written: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    _shared_written: tuple[str, ...] | None
    _hooks_made: set[str]
    rules: RuleWriter
    _shared_rules: SharedRulesLock

    # Provided by NetworkManager.
    def _host_addresses(self) -> tuple[IPv4Network, ...]:
        raise NotImplementedError

    def sandbox_resolv_conf(self) -> bytes | None:
        """The resolver settings sandboxes get (``NetworkManager`` has them)."""
        raise NotImplementedError

    def _rules(
        self, lease: Lease, add: bool, body: Sequence[str] = (), *, lifted: Collection[str] = ()
    ) -> str:
        raise NotImplementedError

    async def _repair_and_add(
        self, lease: Lease, body: list[str], removal: str, lifted: set[str], nice: bool
    ) -> None:
        raise NotImplementedError

    async def _repair_hook_chains(self, group: HookGroup, nice: bool) -> None:
        raise NotImplementedError

    def _start_watch(self) -> None:
        if self._watch is not None:
            self._watch.start()

    async def close(self) -> None:
        """Stop watching the rules (the backend is closing)."""
        if self._watch is not None:
            await self._watch.close()

    @property
    def watch(self) -> RuleWatch | None:
        """The rule watch, when this manager has one."""
        return self._watch

    def watched_leases(self) -> list[Lease]:
        """The leases whose rules are ours and not being written or removed right now."""
        return [lease for tag, lease in self._active.items() if tag not in self.busy]

    def groups_of(self, leases: Iterable[Lease]) -> dict[str, HookGroup]:
        """The hook groups ``leases`` use, by key."""
        return {group.key: group for lease in leases for group in lease.hook_groups()}

    def shared_chain_expected(self) -> int | None:
        """How many rules the shared chain must have at least (None: nobody of ours needs it).

        One: another backend may write it from its own (as old as a second) view of the
        host's addresses, so only a chain flushed or gone counts as missing.
        """
        return 1 if self._active else None

    def chains_as_written(
        self, saved: Mapping[str, Sequence[str]], leases: Iterable[Lease]
    ) -> dict[str, tuple[str, ...]]:
        """Each lease's own chain as written (tag -> lines), learning unknown ones from ``saved``.

        A lease this process recovered (and never read back) has its chain taken from the
        rules as they are now, the first time the watch looks; with none there it is left
        out, and a put-back writes a chain that refuses everything (``_closed_chain``).
        """
        found: dict[str, tuple[str, ...]] = {}
        for lease in leases:
            known = self.written.get(lease.tag)
            if known is None and saved.get(lease.chain):
                own = (f":{lease.chain} - [0:0]", *saved[lease.chain])
                shared = tuple(saved.get(policy.SHARED_CHAIN, ()))
                known = self.written[lease.tag] = (shared, own)
            if known is not None:
                found[lease.tag] = known[1]
        return found

    async def put_back(self, damage: Damage, groups: Mapping[str, HookGroup], saved: Saved) -> None:
        """Write again what the watch found missing: the shared chain, groups, networks.

        ``saved``: the rules as the look found them. A group none of whose chains is there
        is made whole, chains and jumps in one transaction, all such groups merged into one
        run, and a network with nothing left is written without removing anything first:
        after a reload that is every one of them, and repaired step by step and rule by rule
        (as a group or network partly there is) 20 networks took 0.8 s to come back.
        """
        if damage.shared_chain:
            shared = policy.shared_chain(
                self._host_addresses(), policy.nameservers(self.sandbox_resolv_conf())
            )
            await self.rules.apply("\n".join(["*filter", *shared, "COMMIT", ""]))
            self._shared_written = tuple(shared)
        gone = [groups[k] for k in damage.groups if not set(groups[k].chains) & saved.declared]
        made = [self.rules.apply_quietly(group.transaction(group.create)) for group in gone]
        await asyncio.gather(*made)  # queued together: one transaction when all succeed
        partly = [key for key in damage.groups if groups[key] not in gone]
        if partly:
            async with self._shared_rules.held():
                for key in partly:
                    await self._repair_hook_chains(groups[key], nice=False)
        self._hooks_made.update(damage.groups)
        leases = [self._active[t] for t in damage.leases if t in self._active]
        outcomes = await asyncio.gather(
            *(self._put_back(lease, _anything_left(lease, saved)) for lease in leases),
            return_exceptions=True,
        )
        for lease, outcome in zip(leases, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                _log.warning("putting back the rules of network %s: %s", lease.tag, outcome)

    async def _put_back(self, lease: Lease, left: bool = True) -> None:
        """Remove what is left of ``lease``'s rules and write them again, as they were written.

        Concurrent put-backs queue their removals and then their adds together, so the rule
        writer merges them: a reload's repair of many networks is a few transactions.
        ``left``: whether any of its rules may still be there (else nothing is removed).
        """
        if lease.tag in self.busy or lease.tag not in self._active:
            return  # being written or removed: that work decides
        loop = asyncio.get_running_loop()
        done = self._restoring[lease.tag] = loop.create_future()
        self._busy_begin(lease.tag)
        try:
            known = self.written.get(lease.tag)
            chain = _restorable(known[1], lease.chain) if known else _closed_chain(lease.chain)
            removal = self._rules(lease, False)
            if left:
                await self.rules.remove(removal)
            try:
                await self.rules.apply(self._rules(lease, True, chain), undo=removal)
            except NetworkError:  # a group or the shared chain missing too: repaired first
                async with self._shared_rules.held():
                    await self._repair_and_add(lease, chain, removal, set(), False)
        finally:
            self._busy_end(lease.tag)
            self._restoring.pop(lease.tag, None)
            done.set_result(None)

    async def _after_put_back(self, tag: str) -> None:
        """Wait for a put-back of ``tag``'s rules under way: its writes come first.

        The caller marked ``tag`` busy before, so no other put-back starts meanwhile.
        """
        pending = self._restoring.get(tag)
        if pending is not None:
            await asyncio.shield(pending)

    def _busy_begin(self, tag: str) -> None:
        self.busy[tag] += 1

    def _busy_end(self, tag: str) -> None:
        if self.busy[tag] <= 1:
            self.busy.pop(tag, None)
        else:
            self.busy[tag] -= 1


def _restorable(lines: Iterable[str], chain: str) -> list[str]:
    """A chain's lines as written or read back, as ``iptables-restore`` lines declaring it.

    ``iptables -S`` prints ``-N NAME`` where a transaction declares ``:NAME - [0:0]``.
    """
    body = [line for line in lines if line.startswith("-A ")]
    return [f":{chain} - [0:0]", *body]


def _closed_chain(chain: str) -> list[str]:
    """A chain that refuses everything: for a network whose rules nobody can say any more."""
    return [f":{chain} - [0:0]", f"-A {chain} -j {policy.REJECT}"]


def _anything_left(lease: Lease, saved: Saved) -> bool:
    """Whether a rule of ``lease`` (a hook, or its chain) is still among ``saved``."""
    hooks = saved.hooks[("filter", lease.tag)] or saved.hooks[("nat", lease.tag)]
    return bool(hooks) or lease.chain in saved.declared
