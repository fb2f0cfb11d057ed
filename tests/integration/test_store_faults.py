"""The store-failure helpers really fail writes, and really recover (``store_fault`` fixture).

Each fault is a real one: a full filesystem under SQLite, a PostgreSQL server that is down,
a database turned read-only, a server that stops answering. These smoke tests pin what a
write sees, so fault tests built on the helpers know what they are testing against.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy.exc import InternalError, OperationalError, SQLAlchemyError

from sandboxd.store import RunnerRecord, Store
from tests.support.postgres import StoreFault, postgres

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)

# What a write raises while the fault lasts (after, for PostgreSQL, the one
# OperationalError of a pooled session that the fault ended).
EXPECTED: dict[str, tuple[type[Exception], str]] = {
    "sqlite-disk-full": (OperationalError, "database or disk is full"),
    "postgresql-down": (OperationalError, "Connection refused"),
    "postgresql-read-only": (InternalError, "read-only transaction"),
}


def record(runner_id: str) -> RunnerRecord:
    return RunnerRecord(runner_id, "g", (), b"caps", "1", NOW, NOW)


def write(store: Store, runner_id: str) -> SQLAlchemyError | None:
    """Save one runner; the error it raised, if any."""
    try:
        store.save_runners([record(runner_id)])
    except SQLAlchemyError as exc:
        return exc
    return None


def test_writes_fail_while_the_fault_lasts_and_work_after_recovery(
    store_fault: StoreFault,
) -> None:
    store = Store(store_fault.url)
    try:
        assert write(store, "before") is None
        store_fault.fail()
        errors = [write(store, f"during-{i}") for i in range(3)]
        assert all(errors), errors  # not one write got through
        expected_type, expected_text = EXPECTED[store_fault.kind]
        last = errors[-1]
        assert isinstance(last, expected_type) and expected_text in str(last), repr(last)

        store_fault.recover()
        # A PostgreSQL session the fault ended fails once more (as after any real outage).
        deadline = time.monotonic() + 10
        while (error := write(store, "after")) is not None:
            assert isinstance(error, OperationalError), repr(error)
            assert time.monotonic() < deadline, repr(error)
        ids = [r.runner_id for r in store.load_runners()]
        assert ids == ["after", "before"], ids  # nothing lost, nothing half-written
    finally:
        store.close()


def test_frozen_postgres_hangs_writes_until_thawed() -> None:
    """``freeze()``: no error at all, the write just does not return; ``thaw()`` releases it."""
    with postgres() as server:
        store = Store(server.url(server.create_database()))
        try:
            assert write(store, "before") is None
            server.freeze()
            done = threading.Event()
            outcome: list[SQLAlchemyError | None] = []

            def blocked_write() -> None:
                outcome.append(write(store, "during"))
                done.set()

            thread = threading.Thread(target=blocked_write, daemon=True)
            try:
                thread.start()
                assert not done.wait(1.5)  # hung, not failed
            finally:
                server.thaw()
            assert done.wait(30)
            assert outcome == [None]
            assert [r.runner_id for r in store.load_runners()] == ["before", "during"]
        finally:
            store.close()
