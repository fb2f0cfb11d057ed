"""The control plane's sandbox records: the database is the truth, memory a cache.

Why this order: every change is committed first and only then applied in memory
("persistence first, memory second"), so a failed write leaves both as they were and the
caller gets UNAVAILABLE (``CWSANDBOX_STORE_UNAVAILABLE``); a crash after the commit loses
nothing, because a restarted control plane rebuilds memory from the database. One change is
shown while it is written: a runner's report that a sandbox runs (:meth:`observe_running`
says why that is safe), so a create waits for one database write, not two. Memory holds
only sandboxes that may still run (bounded by the runners' capacity) plus those that ended
in the last few minutes (clients poll them); the rest are read from the database when
asked, and ``List`` pages from it by index.

All writes to one sandbox go through :meth:`SandboxRecords.update`, which reads the newest
record and applies a pure change function under a per-sandbox lock, so concurrent callers
(a client's stop, the runner's report, the reconciler) compose instead of overwriting each
other. Waiters wake only for the sandbox they wait on. Database calls run on one worker
thread, in order.

A database that hangs (a frozen server, a full disk that blocks) must not hang callers: a
call that takes longer than ``DB_CALL_SECONDS`` answers UNAVAILABLE at once, and if the
write commits later anyway, memory follows the database then (``landed`` callbacks run on
completion, not on the caller's return); a sandbox whose Start was answered UNAVAILABLE but
whose row landed late is given up (FAILED, never started), so a retried Start cannot leave
a second, unseen sandbox running.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import ParamSpec, TypeVar

import grpc
from sqlalchemy.exc import SQLAlchemyError

from sandboxd.controlplane.quotas import Usage
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_model import Desired, SandboxRecord, give_up, now
from sandboxd.controlplane.store_errors import DB_CALL_SECONDS, store_too_slow, store_unavailable
from sandboxd.controlplane.usage_tally import UsageTally
from sandboxd.errors import ApiError
from sandboxd.store.sandbox_store import ListQuery, Orphan, SandboxStore, StaleRecord
from sandboxd.store.schema import DatabaseProblem
from sandboxd.wakeups import Wakeups

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
LATE_START_REASON = (
    "its Start was answered UNAVAILABLE (the database was too slow) before the record landed"
)
RECENT_SECONDS = 300.0
"""How long an ended sandbox stays in memory (clients poll a stopped sandbox's status)."""
Change = Callable[[SandboxRecord], SandboxRecord | None]


class SandboxRecords:
    """Sandbox records over a :class:`SandboxStore`, with live ones cached in memory."""

    def __init__(self, store: SandboxStore, registry: RunnerRegistry) -> None:
        self._store = store
        self._registry = registry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-store")
        # Changed only by _put and _drop, which keep the quota tally with it.
        self._records: dict[str, SandboxRecord] = {}
        self._usage = UsageTally()
        self._recent: deque[tuple[float, str]] = deque()
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: Wakeups[str] = Wakeups()
        self._tasks: set[asyncio.Future[None]] = set()
        #: Sandboxes whose RUNNING is shown but could not be stored yet (observe_running).
        self._unsaved: set[str] = set()
        self.on_change: Callable[[SandboxRecord], None] = lambda _record: None
        #: Called with a record shown before it is stored (:meth:`observe_running`), for
        #: observers of what happened (the event trail) rather than of what is stored.
        self.on_show: Callable[[SandboxRecord], None] = lambda _record: None

    # -- database ---------------------------------------------------------------------------
    async def _db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._call(lambda: fn(*args, **kwargs), fn.__name__)

    async def _call(
        self,
        work: Callable[[], T],
        what: str,
        landed: Callable[[T, bool], None] | None = None,
    ) -> T:
        """Run ``work`` on the database thread; UNAVAILABLE if it fails or is too slow.

        ``landed(result, abandoned)`` runs (on the event loop) when ``work`` succeeds, before
        the caller resumes, and also when the caller stopped waiting (``abandoned``): memory
        follows every commit, including a late one.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, work)
        abandoned = False

        def done(finished: asyncio.Future[T]) -> None:
            if landed is not None and not finished.cancelled() and finished.exception() is None:
                landed(finished.result(), abandoned)

        future.add_done_callback(done)
        try:
            async with asyncio.timeout(DB_CALL_SECONDS):
                return await asyncio.shield(future)
        except TimeoutError:
            abandoned = True
            log.warning("database call %s is taking longer than %.0f s", what, DB_CALL_SECONDS)
            raise store_too_slow(what, DB_CALL_SECONDS) from None
        except SQLAlchemyError as exc:
            log.warning("database call %s failed: %s", what, exc)
            raise store_unavailable(exc) from exc
        except DatabaseProblem as exc:  # a damaged row: say which, keep serving the rest
            log.error("database call %s: %s", what, exc)
            raise ApiError(
                grpc.StatusCode.DATA_LOSS, str(exc), reason="CWSANDBOX_DATA_LOSS"
            ) from None
        except BaseException:
            abandoned = True  # cancelled: the caller is gone, the call goes on
            raise

    async def load(self) -> int:
        """At start-up: every sandbox that may still run, with its reservation."""
        loop = asyncio.get_running_loop()
        # Not through _call: a damaged row must stop start-up as a DatabaseProblem.
        for record in await loop.run_in_executor(self._executor, self._store.live):
            self._remember(record)
        return len(self._records)

    async def cluster_id(self) -> str:
        """The cluster id kept in the database."""
        return await self._db(self._store.cluster_id)

    def close(self) -> None:
        """Finish pending database calls."""
        self._executor.shutdown(wait=True)

    # -- reading --------------------------------------------------------------------------
    def cached(self, sandbox_id: str) -> SandboxRecord | None:
        """The record if memory has it (every live sandbox is in memory)."""
        return self._records.get(sandbox_id)

    async def get(self, sandbox_id: str) -> SandboxRecord | None:
        """The record with this id, from memory or the database."""
        record = self._records.get(sandbox_id)
        if record is not None:
            return record
        return await self._db(self._store.get, sandbox_id)

    def live_on(self, runner_id: str) -> list[SandboxRecord]:
        """What the reconciler of ``runner_id`` looks after: sandboxes not yet settled there."""
        return [
            r
            for r in self._records.values()
            if r.runner_id == runner_id and (r.live or r.desired is Desired.DELETED)
        ]

    def live(self) -> list[SandboxRecord]:
        """Every sandbox that may still run."""
        return [r for r in self._records.values() if r.live]

    def usage(self, organization: str) -> Usage:
        """What ``organization``'s unfinished sandboxes take, for its quotas (O(1): a tally)."""
        return self._usage.usage(organization)

    async def page(self, query: ListQuery) -> list[SandboxRecord]:
        """One page of ``List`` from the database (memory may hold newer copies of a row)."""
        rows = await self._db(self._store.page, query)
        return [self._records.get(r.sandbox_id, r) for r in rows]

    # -- writing --------------------------------------------------------------------------
    async def add(self, record: SandboxRecord) -> None:
        """Record a newly placed sandbox (one database write) and reserve its resources."""

        def landed(_: None, abandoned: bool) -> None:
            self._remember(record)
            if not abandoned:
                self._changed(record)
            else:  # its caller was told UNAVAILABLE and may have retried: never start it
                self._background(
                    self.update(record.sandbox_id, lambda r: give_up(r, LATE_START_REASON)),
                    f"giving up late sandbox {record.sandbox_id}",
                )

        await self._call(lambda: self._store.insert(record), "insert", landed)

    def _background(self, work: Awaitable[object], what: str) -> None:
        task = asyncio.ensure_future(call_quietly(work, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = self._locks[sandbox_id] = asyncio.Lock()
        return lock

    async def update(
        self, sandbox_id: str, change: Change, *, shown_first: bool = False
    ) -> SandboxRecord | None:
        """Apply ``change`` to the newest record and store it; the stored record.

        ``change`` is pure and may return None (nothing to do). None is returned when the
        sandbox does not exist. Raises UNAVAILABLE when the database refuses the write;
        memory is then unchanged.

        ``shown_first`` (only for a runner's report that a sandbox runs, see
        :meth:`observe_running`) shows the change in memory while it is being written. A
        write that fails leaves it shown (the runner said so) and marked unsaved; the next
        report (the command or snapshot that brought it is retried) stores it then, and so
        does any other write of the sandbox, which carries everything memory shows.
        """
        async with self._lock(sandbox_id):
            for attempt in range(3):
                current = await self.get(sandbox_id)
                if current is None:
                    return None
                changed = change(current)
                if changed is None or changed == current:
                    if not (shown_first and sandbox_id in self._unsaved):
                        return current
                    changed = current  # shown but not yet stored: store it now
                if shown_first:
                    self._show(changed)
                try:
                    stored = await self._call(
                        functools.partial(self._store.save, changed), "save", self._stored
                    )
                except StaleRecord:
                    self._unsaved.discard(sandbox_id)
                    # Another writer (another control plane on the same database) came first.
                    self._drop(sandbox_id)
                    if attempt == 2:
                        raise ApiError(
                            grpc.StatusCode.ABORTED,
                            f"sandbox {sandbox_id!r} kept changing; try again",
                            reason="CWSANDBOX_CONFLICT",
                        ) from None
                    continue
                except BaseException:  # refused, too slow, or the caller cancelled
                    if shown_first:
                        self._unsaved.add(sandbox_id)  # until a write of it lands
                    raise
                return stored
        return None  # pragma: no cover - the loop returns or raises

    async def observe_running(self, sandbox_id: str, change: Change) -> SandboxRecord | None:
        """A runner's report that a sandbox runs: shown at once, stored right after.

        Why this one write may trail memory, against the rule above: it is the second
        database write of every create (the first, Start's insert, must land before the
        client gets an id), and a client waits on it before its first exec. What it records
        is not ours to decide but the runner's to report, and the runner reports it again:
        a control plane killed before the write landed reloads the sandbox as not yet
        reported, sends its start again (the runner answers a start of a sandbox it runs
        with "started"), and takes the runner's snapshot when it registers; either stores
        RUNNING. Nothing is lost or destroyed. A write the database refuses leaves RUNNING
        shown (it is true) and is made again with the next report. The price: a client that
        saw RUNNING may see the sandbox as starting again for the moment between a killed
        control plane's restart and its runner's return
        (``tests/fault/test_running_not_yet_stored.py``).
        """
        return await self.update(sandbox_id, change, shown_first=True)

    def _stored(self, stored: SandboxRecord, _abandoned: bool) -> None:
        self._unsaved.discard(stored.sandbox_id)
        self._remember(stored)
        self._changed(stored)

    async def remove(self, record: SandboxRecord) -> None:
        """Forget a deleted sandbox, leaving a tombstone (one transaction)."""

        def landed(_: None, _abandoned: bool) -> None:
            self._drop(record.sandbox_id)
            self._unsaved.discard(record.sandbox_id)
            lock = self._locks.get(record.sandbox_id)
            if lock is not None and not lock.locked():
                del self._locks[record.sandbox_id]
            self._registry.release(record.runner_id, record.sandbox_id)
            self._changed(record, gone=True)

        await self._call(lambda: self._store.remove(record, now()), "remove", landed)

    def _put(self, record: SandboxRecord) -> None:
        self._usage.replace(self._records.get(record.sandbox_id), record)
        self._records[record.sandbox_id] = record

    def _drop(self, sandbox_id: str) -> None:
        self._usage.replace(self._records.pop(sandbox_id, None), None)

    def _remember(self, record: SandboxRecord) -> None:
        before = self._records.get(record.sandbox_id)
        if before is not None and before.runner_id != record.runner_id:
            # A start moved to another runner (start_moves.py): the first one holds nothing.
            self._registry.release(before.runner_id, record.sandbox_id)
        self._put(record)
        if record.live:
            self._registry.reserve(record.runner_id, record.sandbox_id, record.reservation())
        else:
            self._registry.release(record.runner_id, record.sandbox_id)
            if record.desired is not Desired.DELETED:
                self._recent.append((time.monotonic() + RECENT_SECONDS, record.sandbox_id))
        self._evict()

    def _evict(self) -> None:
        """Drop ended sandboxes from memory a while after they ended (the database keeps them)."""
        clock = time.monotonic()
        while self._recent and self._recent[0][0] <= clock:
            _, sandbox_id = self._recent.popleft()
            record = self._records.get(sandbox_id)
            if record is not None and not record.live and record.desired is not Desired.DELETED:
                self._drop(sandbox_id)
                lock = self._locks.get(sandbox_id)
                if lock is not None and not lock.locked():
                    del self._locks[sandbox_id]

    def _show(self, record: SandboxRecord) -> None:
        """Put ``record`` in memory and wake its waiters, before storing it.

        The reconciler is not kicked: it acts on what is stored (a failed write is retried
        by the command or the snapshot that brought it, after their pause). ``on_show`` is
        told: the event trail must say "running" before the exec that a client sends once
        it saw RUNNING here, however slow the write.
        """
        self._remember(record)
        self._wake(record.sandbox_id)
        self.on_show(record)

    # -- waiting --------------------------------------------------------------------------
    def _wake(self, sandbox_id: str) -> None:
        self._waiters.wake(sandbox_id)

    def _changed(self, record: SandboxRecord, gone: bool = False) -> None:
        self._wake(record.sandbox_id)
        if not gone:
            self.on_change(record)

    async def wait_change(self, sandbox_id: str, timeout: float) -> None:
        """Return when this sandbox's record changes, or after ``timeout`` seconds."""
        await self._waiters.wait(sandbox_id, timeout)

    async def wait_for(
        self, sandbox_id: str, done: Callable[[SandboxRecord | None], bool], timeout: float
    ) -> SandboxRecord | None:
        """Wait until ``done(record)`` holds (None: the sandbox is gone) or the timeout ends."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            record = await self.get(sandbox_id)
            left = deadline - asyncio.get_running_loop().time()
            if done(record) or left <= 0:
                return record
            await self.wait_change(sandbox_id, left)

    # -- orphans and retention -----------------------------------------------------------
    async def tombstoned(self, sandbox_ids: list[str]) -> set[str]:
        """Which of these sandboxes this control plane deleted."""
        return await self._db(self._store.tombstoned, sandbox_ids)

    async def note_orphans(self, runner_id: str, orphans: list[Orphan]) -> None:
        """Record the sandboxes a runner holds that no record here owns."""
        await self._db(self._store.note_orphans, runner_id, orphans)

    async def orphans(self) -> list[Orphan]:
        """Every orphan the runners reported."""
        return await self._db(self._store.orphans)

    async def adopt(self, record: SandboxRecord) -> bool:
        """Make the orphan ``record.sandbox_id`` this sandbox; False if there is no such orphan."""

        def landed(adopted: bool, _abandoned: bool) -> None:
            if adopted:
                self._stored(record, False)

        return await self._call(
            lambda: self._store.adopt(record.sandbox_id, record), "adopt", landed
        )

    async def forget_orphan(self, orphan_id: str) -> Orphan | None:
        """Drop an orphan an administrator deleted, leaving a tombstone; the orphan, if any."""
        return await self._db(self._store.forget_orphan, orphan_id, now())

    async def collect(self, retention: timedelta, at: datetime | None = None) -> int:
        """Delete sandboxes that ended more than ``retention`` ago; how many."""
        before = (at or now()) - retention
        total = 0
        while True:
            removed = await self._db(self._store.collect, before)
            total += removed
            if removed == 0:
                return total


async def call_quietly(work: Awaitable[object], what: str) -> None:
    """Await ``work``; a database or runner error is logged, not raised (background work)."""
    try:
        await work
    except ApiError as error:
        log.warning("%s: %s", what, error.message)
