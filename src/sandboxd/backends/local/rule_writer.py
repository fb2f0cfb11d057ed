"""One backend's firewall transactions: in the order asked, merged while others run.

Why: an ``iptables-restore`` transaction makes iptables fetch and search the rules of the
chains it touches, and the xtables lock lets one writer in at a time. With hundreds of
sandboxes one removal costs ~0.3 s (measured with ~18,000 rules), and a burst of stops run
as parallel processes queued on the lock, timed out after ``-w 5``, fell back to one command
per rule and so made the queue longer still (at ~860 sandboxes a runner had 168 of them
waiting, a load average of 130, and creates failed). Creates queued the same way: in a burst
of 100 concurrent creates on 2 cores, each waited a median 0.84 s for its turn to add its
rules, and the adds ran one after another for 2.3 s of the burst's 3.5 s.

So a backend has one writer task and one queue. Whatever was asked while a transaction ran
goes out together next: consecutive adds as one transaction, consecutive removals as one.
Order is kept between kinds, so a create's rollback (a removal queued after its add) never
runs before the add. When a merged transaction fails, each part is run on its own, so one
bad part fails only its own caller; an add's part is undone first, as ``iptables-restore``
commits each table on its own and a failed transaction may have committed some. Adds asked
for by a caller that was cancelled before its turn are dropped; a removal always runs, even
when its caller is cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .host_commands import NetworkError, run

_log = logging.getLogger(__name__)

ADD, REMOVE, QUIET = "add", "remove", "quiet"


@dataclass
class _Asked:
    kind: str
    rules: str
    nice: bool
    undo: str = ""  # an add's removal: run before the add is tried again on its own
    # Its result: whether it ran (False: a removal whose command could not be started).
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def finish(self, error: BaseException | None = None, *, ran: bool = True) -> None:
        if self.done.done():  # its caller was cancelled meanwhile
            return
        if error is None:
            self.done.set_result(ran)
        elif isinstance(error, Exception):
            self.done.set_exception(error)
        else:  # the writer itself was cancelled (the loop is closing)
            self.done.cancel()


class RuleWriter:
    """Runs one backend's ``iptables-restore`` transactions (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: list[_Asked] = []
        self._writer: asyncio.Task[None] | None = None

    async def apply(self, rules: str, *, nice: bool = False, undo: str = "") -> None:
        """Add rules (one transaction, maybe merged with others); ``NetworkError`` if it fails.

        ``nice``: at the lowest CPU priority, for networks made ahead (a merged transaction
        is niced only when every part of it is). ``undo``: the transaction that removes what
        ``rules`` adds. ``iptables-restore`` commits each table on its own, so a transaction
        that failed in its ``nat`` part may have added its ``filter`` part; before a part of
        a failed merged transaction is tried again on its own, its undo runs (tolerant of
        what is not there), so nothing is added twice. A caller that tries again after a
        failure undoes the same way first.
        """
        await self._queued(_Asked(ADD, rules, nice, undo))

    async def apply_quietly(self, rules: str, *, nice: bool = False) -> None:
        """A transaction whose failure is expected at times (and ignored).

        Merged with the quiet ones queued with it only when that whole succeeds; otherwise
        each runs alone, so a part that fails never takes another with it (``_quietly``).

        ``nice`` as for :meth:`apply`.
        """
        await asyncio.shield(self._queued(_Asked(QUIET, rules, nice)))

    async def remove(self, rules: str) -> bool:
        """Remove rules (a transaction of deletions), merged with the removals queued with it.

        What cannot be removed in one transaction is removed rule by rule, and what is gone
        already is skipped. Runs even if the caller is cancelled meanwhile. False when some
        may still be there: the command could not be started at all (no memory or process
        left for it, say), or a rule failed to go for another reason than being gone
        already; the caller must then not forget them.
        """
        return await asyncio.shield(self._queued(_Asked(REMOVE, rules, False)))

    def _queued(self, asked: _Asked) -> asyncio.Future[bool]:
        """Queue ``asked`` now, before the caller yields; its ``done`` future.

        Now, not in a task of its own: the order of the queue is the order of the calls.
        A hook group's chains asked for by one create (``apply_quietly``, shielded) were
        queued one step later than another create's add that needs them, which then ran
        first and failed (``Chain 'SBX-I-4' does not exist``); in a burst of creates each
        such failure retried its parts alone and repaired the group, a second of one
        transaction after another while every other create waited for its rules.
        """
        self._queue.append(asked)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return asked.done

    async def _write(self) -> None:
        taken: list[_Asked] = []
        try:
            while self._queue:
                taken, self._queue = self._queue, []
                for kind, run_of in itertools.groupby(taken, key=lambda a: a.kind):
                    # An add whose caller is gone (cancelled) before its turn is dropped.
                    batch = [a for a in run_of if kind != ADD or not a.done.done()]
                    try:
                        await _BATCHES[kind](batch)
                    except Exception as exc:  # not a command's failure: spawning it failed
                        _log.warning("firewall transactions (%s, %d) could not be started: %r",
                                     kind, len(batch), exc)  # fmt: skip
                        for asked in batch:
                            asked.finish(exc if kind == ADD else None, ran=False)
                    for asked in batch:
                        asked.finish()
        except BaseException as exc:  # the writer is cancelled: the loop is closing
            for asked in (*taken, *self._queue):
                asked.finish(exc)
            raise


RESTORE = ("iptables-restore", "--noflush", "-w", "5")


async def _add(batch: list[_Asked]) -> None:
    async def failed(asked: _Asked, error: NetworkError) -> None:
        asked.finish(error)

    if batch:
        await _in_one_or_each(batch, failed)


async def _remove(batch: list[_Asked]) -> None:
    async def failed(asked: _Asked, _error: NetworkError) -> None:
        if not await _remove_one_by_one(asked.rules):  # what is gone already is skipped
            asked.finish(ran=False)  # some are still there: the caller must keep them

    await _in_one_or_each(batch, failed)


async def _in_one_or_each(
    batch: list[_Asked], failed: Callable[[_Asked, NetworkError], Awaitable[None]]
) -> None:
    """``batch`` as one transaction; if that fails, each part on its own.

    ``failed`` is called for each part that fails alone. Niced only when every part is.
    """
    try:
        await run(*RESTORE, stdin=merge([a.rules for a in batch]), nice=all(a.nice for a in batch))
        return
    except NetworkError as exc:
        if len(batch) == 1:
            await failed(batch[0], exc)
            return
    for asked in batch:
        if asked.undo:  # what of it the failed transaction committed (see ``apply``)
            await undo(asked.undo)
        try:
            await run(*RESTORE, stdin=asked.rules.encode(), nice=asked.nice)
        except NetworkError as exc:
            await failed(asked, exc)


async def undo(rules: str) -> None:
    """Remove ``rules`` (deletions) in one transaction, or one by one skipping what is gone."""
    try:
        await run(*RESTORE, stdin=rules.encode())
    except NetworkError:
        await _remove_one_by_one(rules)


async def _quietly(batch: list[_Asked]) -> None:
    """Transactions whose failure is ignored: as one when that succeeds, else each alone.

    Why merged first: a burst of creates on a fresh runner asks for a dozen hook groups at
    once (``hook_chains.py``), each its own transaction that fails when the group exists;
    one after another they held every create's rules back by a few hundred milliseconds.
    Together they are one run when none exists, the common case. When the merged one
    fails, each runs alone from what it left (a table it committed before another failed
    makes those parts fail alone, as they would have after a transaction that made the
    same), so every part ends as it would have alone.
    """
    if len(batch) > 1:
        try:
            await run(
                *RESTORE, stdin=merge([a.rules for a in batch]), nice=all(a.nice for a in batch)
            )
            return
        except NetworkError:
            pass
    for asked in batch:
        await run(*RESTORE, stdin=asked.rules.encode(), check=False, nice=asked.nice)


_BATCHES = {ADD: _add, REMOVE: _remove, QUIET: _quietly}


def merge(transactions: Sequence[str]) -> bytes:
    """``iptables-restore`` transactions as one: each table's lines in order, one COMMIT."""
    tables: dict[str, list[str]] = {}
    table = "filter"
    for rules in transactions:
        for line in rules.splitlines():
            if line.startswith("*"):
                table = line[1:]
                tables.setdefault(table, [])
            elif line and line != "COMMIT":
                tables.setdefault(table, []).append(line)
    out = [part for name, lines in tables.items() for part in (f"*{name}", *lines, "COMMIT")]
    return ("\n".join(out) + "\n").encode()


GONE_ALREADY = (
    "Bad rule (does a matching rule exist",  # the rule
    "No chain/target/match by that name",  # the chain it is in, or the chain itself
    "does not exist",  # the chain it jumps to (nf_tables: "Chain 'SBX-…' does not exist")
    "Couldn't load target",  # the same, from the legacy iptables
)
"""What ``iptables`` says of a rule or chain that is not there: removed already."""
ONE_BY_ONE_TRIES = 2
ONE_BY_ONE_RETRY_SECONDS = 0.05
"""A deletion that failed for another reason is tried again once, this much later: a
failure that passes (the kernel's tables busy a moment) then costs no kept network."""


async def _remove_one_by_one(rules: str) -> bool:
    """Each deletion of ``rules`` on its own; False when one failed but for being gone.

    Why the difference matters: a failure for any other reason (the kernel refused, no
    memory, a chain still referenced) leaves a rule on the host, and a caller told that
    all went would forget the network, its claim with it, and nothing would name the rule
    again. A CI run found the rules of four networks left so, with no claim and no link.
    """
    table = "filter"
    removed = True
    for line in rules.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-"):
            removed = await _remove_line(table, line) and removed
    return removed


async def _remove_line(table: str, line: str) -> bool:
    """One deletion; tried once more a moment later when it fails but for being gone."""
    for attempt in range(ONE_BY_ONE_TRIES):
        try:
            await run("iptables", "-w", "5", "-t", table, *line.split())
            return True
        except NetworkError as exc:
            if any(gone in str(exc) for gone in GONE_ALREADY):
                return True
            if attempt + 1 == ONE_BY_ONE_TRIES:
                _log.warning("a firewall rule could not be removed: %s", exc)
                return False
            await asyncio.sleep(ONE_BY_ONE_RETRY_SECONDS)
    return False
