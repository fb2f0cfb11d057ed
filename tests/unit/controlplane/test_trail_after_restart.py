"""The activity trail of a restarted control plane notes changes, not what it already said.

A trail notes transitions from what it saw last; a new process has seen nothing. These run
the real trail over a real SQLite store and records, "restarting" by building a new
``SandboxRecords`` and ``EventLog`` over the same database, as ``server.py`` does at start-up
(load, ``seed``, ``recover``). The SIGKILL versions of the same stories are in
``tests/fault/test_trail_survives_kill.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from sandboxd.config import load_config
from sandboxd.controlplane.events import EventLog
from sandboxd.controlplane.lifecycle import want_deleted, want_stopped
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_model import Observed, SandboxRecord, now
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.store import Store

RUNNING = 2


def new_record(sandbox_id: str = "sb-1") -> SandboxRecord:
    return SandboxRecord(sandbox_id, "r1", spec=b"spec", created_at=now())


def running(record: SandboxRecord) -> SandboxRecord:
    return replace(record, observed=Observed.RUNNING, observed_generation=1)


def ended(record: SandboxRecord) -> SandboxRecord:
    return replace(record, observed=Observed.COMPLETED, exit_code=0)


class Process:
    """One control plane's records and trail over the shared database."""

    def __init__(self, store: Store) -> None:
        self.records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        self.events = EventLog(store.events, self.records)
        self.records.on_change = self.events.observe_record
        self.records.on_show = self.events.observe_shown

    async def start(self) -> None:
        """What ``server.py`` does with them at start-up."""
        await self.records.load()
        self.events.seed(self.records.live())
        await self.events.recover()

    async def kinds(self, sandbox_id: str = "sb-1") -> list[str]:
        await self.events.flush()
        return [event.kind for event in await self.events.page(sandbox_id, 0, 100)]


async def first_life(store: Store, *, end: bool = False) -> list[str]:
    """sb-1 placed and running (and ended) in a first process; its trail then."""
    first = Process(store)
    await first.records.add(new_record())
    await first.records.observe_running("sb-1", running)
    if end:
        await first.records.update("sb-1", ended)
    try:
        return await first.kinds()
    finally:
        first.records.close()


def test_a_stop_after_a_restart_is_noted_as_stopping_not_as_running_again(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        assert await first_life(store) == ["placed", "running"]

        second = Process(store)
        await second.start()
        await second.records.update("sb-1", lambda r: want_stopped(r, 5))
        await second.records.update("sb-1", ended)
        assert await second.kinds() == ["placed", "running", "stopping", "ended"]
        second.records.close()
        store.close()

    asyncio.run(scenario())


def test_running_in_the_trail_but_not_in_the_record_is_not_noted_again(tmp_path: Path) -> None:
    """Killed between showing RUNNING (noted) and storing it: the record still says starting."""

    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        first = Process(store)
        await first.records.add(new_record())
        shown = first.records.cached("sb-1")
        assert shown is not None
        first.events.observe_shown(running(shown))  # noted when shown; the write never lands
        assert await first.kinds() == ["placed", "running"]
        first.records.close()

        second = Process(store)
        await second.start()
        loaded = second.records.cached("sb-1")
        assert loaded is not None and loaded.status != RUNNING
        await second.records.observe_running("sb-1", running)  # the runner reports again
        await second.records.update("sb-1", lambda r: want_stopped(r, 5))
        assert await second.kinds() == ["placed", "running", "stopping"]
        second.records.close()
        store.close()

    asyncio.run(scenario())


def test_deleting_a_sandbox_that_ended_before_the_restart_notes_only_the_delete(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        assert await first_life(store, end=True) == ["placed", "running", "ended"]

        second = Process(store)
        await second.start()
        await second.records.update("sb-1", want_deleted)
        assert await second.kinds() == ["placed", "running", "ended", "deleted"]
        second.records.close()
        store.close()

    asyncio.run(scenario())


def test_a_read_while_a_flush_is_writing_sees_the_events_of_that_flush(tmp_path: Path) -> None:
    """The writer takes pending events out of the queue and then waits for the database; a
    read in that moment found nothing pending and read the database before the batch was
    in it (a CI run lost a snapshot's event this way). Here the batch's write is held open
    until the read has started: the read must still return the event."""

    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        process = Process(store)
        await process.records.add(new_record())
        entered, release = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        write = store.events.append

        def held_append(*args: object) -> object:
            loop.call_soon_threadsafe(entered.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
            return write(*args)  # type: ignore[arg-type]

        store.events.append = held_append  # type: ignore[method-assign]
        try:
            flushing = asyncio.ensure_future(process.events.flush())
            await asyncio.wait_for(entered.wait(), 10)
            reading = asyncio.ensure_future(process.events.page("sb-1", 0, 100))
            await asyncio.sleep(0)  # the read has looked at the queue: nothing pending
            release.set()
            await flushing
            assert [e.kind for e in await reading] == ["placed"]
        finally:
            store.events.append = write  # type: ignore[method-assign]
            process.records.close()

    asyncio.run(scenario())
