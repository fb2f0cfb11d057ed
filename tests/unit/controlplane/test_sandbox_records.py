"""Sandbox records over a real SQLite store when the database fails or hangs.

The store is real; the only injected fault is a gate that holds the database thread inside
a call (as a frozen PostgreSQL server or a blocked disk would), wrapped around the real
store method. Persistence first: a caller gets UNAVAILABLE quickly, memory follows the
database whenever a write commits, and a Start whose row lands after its caller gave up
is never started.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandboxd.config import load_config
from sandboxd.controlplane import sandbox_records
from sandboxd.controlplane.events import EventLog
from sandboxd.controlplane.lifecycle import want_stopped
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.sandbox_model import Desired, Observed, SandboxRecord, now
from sandboxd.controlplane.sandbox_records import LATE_START_REASON, SandboxRecords
from sandboxd.errors import ApiError
from sandboxd.store import Store


def gated(method: Callable[..., Any], gate: threading.Event) -> Callable[..., Any]:
    """``method`` that first waits for ``gate`` (on the database thread)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        assert gate.wait(10), "the test never opened the gate"
        return method(*args, **kwargs)

    return wrapper


def new_record(sandbox_id: str = "sb-1") -> SandboxRecord:
    return SandboxRecord(sandbox_id, "r1", spec=b"spec", created_at=now())


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def short_database_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_records, "DB_CALL_SECONDS", 0.3)


def test_a_start_whose_row_lands_late_is_given_up_not_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        gate = threading.Event()
        monkeypatch.setattr(store.sandboxes, "insert", gated(store.sandboxes.insert, gate))
        started = asyncio.get_running_loop().time()
        with pytest.raises(ApiError) as caught:
            await records.add(new_record())
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert "did not answer within" in caught.value.message
        assert asyncio.get_running_loop().time() - started < 2
        assert records.cached("sb-1") is None  # nothing committed yet, nothing in memory
        gate.set()  # the database comes back and commits the row after all
        await eventually(lambda: (records.cached("sb-1") or new_record()).verdict != "")
        late = records.cached("sb-1")
        assert late is not None and late.desired is Desired.STOPPED
        assert late.status_reason == LATE_START_REASON
        stored = store.sandboxes.get("sb-1")
        assert stored is not None and stored == late  # memory and database agree
        records.close()
        store.close()

    asyncio.run(scenario())


def test_a_slow_update_answers_unavailable_and_memory_follows_the_late_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        await records.add(new_record())
        gate = threading.Event()
        monkeypatch.setattr(store.sandboxes, "save", gated(store.sandboxes.save, gate))

        def running(record: SandboxRecord) -> SandboxRecord:
            return replace(record, observed=Observed.RUNNING, observed_generation=1)

        with pytest.raises(ApiError) as caught:
            await records.update("sb-1", running)
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        # Reads still answer while the write hangs... from memory, which is unchanged.
        cached = records.cached("sb-1")
        assert cached is not None and cached.observed is Observed.NONE
        gate.set()
        await eventually(lambda: records.cached("sb-1").observed is Observed.RUNNING)  # type: ignore[union-attr]
        assert store.sandboxes.get("sb-1") == records.cached("sb-1")
        # And the next change composes with the late one instead of overwriting it.
        stopped = await records.update("sb-1", lambda r: want_stopped(r, 5))
        assert stopped is not None and stopped.observed is Observed.RUNNING
        assert store.sandboxes.get("sb-1") == stopped
        records.close()
        store.close()

    asyncio.run(scenario())


def running(record: SandboxRecord) -> SandboxRecord:
    return replace(record, observed=Observed.RUNNING, observed_generation=1)


def test_running_is_shown_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create's client waits for one write (Start's), not for the RUNNING report's too."""
    # The write is held open on purpose while the checks below run; on a loaded CI host
    # they took longer than the file's 0.3 s deadline (UNAVAILABLE), which is not what
    # this test is about (the deadline has its own tests above).
    monkeypatch.setattr(sandbox_records, "DB_CALL_SECONDS", 10.0)

    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        kicked: list[str] = []
        records.on_change = lambda record: kicked.append(record.sandbox_id)
        await records.add(new_record())
        kicked.clear()
        gate = threading.Event()
        monkeypatch.setattr(store.sandboxes, "save", gated(store.sandboxes.save, gate))
        waiter = asyncio.ensure_future(records.wait_change("sb-1", 5))
        writing = asyncio.ensure_future(records.observe_running("sb-1", running))
        await asyncio.wait_for(waiter, 2)  # woken while the write still hangs
        shown = records.cached("sb-1")
        assert shown is not None and shown.observed is Observed.RUNNING
        stored = store.sandboxes.get("sb-1")
        assert stored is not None and stored.observed is Observed.NONE
        assert kicked == []  # the reconciler acts on what is stored, not on what is shown
        gate.set()
        result = await writing
        assert result is not None and result.observed is Observed.RUNNING
        assert store.sandboxes.get("sb-1") == records.cached("sb-1") == result
        assert kicked == ["sb-1"]
        records.close()
        store.close()

    asyncio.run(scenario())


def test_the_trail_says_running_while_the_write_hangs_and_only_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that saw RUNNING may exec at once: "running" must come before that exec in
    the trail, however slow the write (CI saw ``placed, exec, running``), and the stored
    record must not note it again."""

    # The write hangs only until the test opens the gate: not the short deadline of this
    # file's other tests, which a loaded CI machine passed before the gate opened.
    monkeypatch.setattr(sandbox_records, "DB_CALL_SECONDS", 10.0)

    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        events = EventLog(store.events, records)
        records.on_change = events.observe_record
        records.on_show = events.observe_shown
        await records.add(new_record())
        gate = threading.Event()
        monkeypatch.setattr(store.sandboxes, "save", gated(store.sandboxes.save, gate))
        waiter = asyncio.ensure_future(records.wait_change("sb-1", 5))
        writing = asyncio.ensure_future(records.observe_running("sb-1", running))
        await asyncio.wait_for(waiter, 2)  # shown; the write still hangs
        shown = records.cached("sb-1")
        assert shown is not None
        events.note(shown, "exec", "api-key:k", argv=["true"], exit_code=0)
        gate.set()
        await writing
        await events.flush()
        kinds = [event.kind for event in await events.page("sb-1", 0, 100)]
        assert kinds == ["placed", "running", "exec"]
        records.close()
        store.close()

    asyncio.run(scenario())


def test_a_record_reloaded_after_a_restart_is_not_placed_again_when_it_runs(
    tmp_path: Path,
) -> None:
    """After a restart the trail has not seen the sandbox; its RUNNING report, shown before
    it is stored, notes "running" but not a second "placed"."""

    async def scenario() -> None:
        store = Store.sqlite(tmp_path / "cp.db")
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        await records.add(new_record())  # placed by the control plane before the restart
        events = EventLog(store.events, records)  # the new process's trail
        records.on_change = events.observe_record
        records.on_show = events.observe_shown
        await records.observe_running("sb-1", running)
        await events.flush()
        assert [event.kind for event in await events.page("sb-1", 0, 100)] == ["running"]
        records.close()
        store.close()

    asyncio.run(scenario())


def test_running_that_the_database_refuses_stays_shown_and_is_stored_with_the_next_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program holds the database past SQLite's busy timeout (5 s): the write fails.

    The caller hears UNAVAILABLE (its command or snapshot is retried); RUNNING stays shown,
    since the runner said so and a sandbox must not look as if it stopped running, and the
    next report, which changes nothing in memory, stores it.
    """
    monkeypatch.setattr(sandbox_records, "DB_CALL_SECONDS", 10.0)  # let SQLite give up first

    async def scenario() -> None:
        db = tmp_path / "cp.db"
        store = Store.sqlite(db)
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        await records.add(new_record())
        locker = sqlite3.connect(db, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(ApiError) as caught:
                await records.observe_running("sb-1", running)
        finally:
            locker.rollback()
            locker.close()
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert caught.value.reason == "CWSANDBOX_STORE_UNAVAILABLE"
        cached = records.cached("sb-1")
        assert cached is not None and cached.observed is Observed.RUNNING
        stored = store.sandboxes.get("sb-1")
        assert stored is not None and stored.observed is Observed.NONE
        again = await records.observe_running("sb-1", running)  # the report, once more
        assert again is not None and again.observed is Observed.RUNNING
        assert store.sandboxes.get("sb-1") == again == records.cached("sb-1")
        # And a later change composes with it (versions agree: no conflict).
        stopped = await records.update("sb-1", lambda r: want_stopped(r, 5))
        assert stopped is not None and stopped.observed is Observed.RUNNING
        assert store.sandboxes.get("sb-1") == stopped
        records.close()
        store.close()

    asyncio.run(scenario())


def test_running_whose_write_hangs_stays_shown_and_memory_follows_the_late_commit(
    tmp_path: Path,
) -> None:
    """Past the call's deadline the caller hears UNAVAILABLE; RUNNING stays shown, and when
    the write commits after all, memory is the stored record (as for every late write)."""

    async def scenario() -> None:
        db = tmp_path / "cp.db"
        store = Store.sqlite(db)
        records = SandboxRecords(store.sandboxes, RunnerRegistry(load_config(None)))
        await records.add(new_record())
        locker = sqlite3.connect(db, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(ApiError) as caught:
                await records.observe_running("sb-1", running)
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
            cached = records.cached("sb-1")
            assert cached is not None and cached.observed is Observed.RUNNING
        finally:
            locker.rollback()
            locker.close()
        await eventually(lambda: records.cached("sb-1").version == 2)  # type: ignore[union-attr]
        assert store.sandboxes.get("sb-1") == records.cached("sb-1")
        records.close()
        store.close()

    asyncio.run(scenario())
