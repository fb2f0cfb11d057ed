"""Today's store on SQLite and on a real PostgreSQL server (``database_url`` fixture).

The same tests run against both: ``Store`` itself in this process, and a real
``sandboxd controlplane --database-url ...`` whose runner stays listed across a restart.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sandboxd.controlplane.sandbox_model import Observed, SandboxRecord
from sandboxd.store import RunnerRecord, Store
from sandboxd.store.event_store import SandboxEvent
from sandboxd.store.sandbox_store import ListQuery, StaleRecord
from tests.support.processes import ControlPlaneProcess, RunnerProcess

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def runner(runner_id: str, *, seen: datetime = T0, tags: tuple[str, ...] = ()) -> RunnerRecord:
    return RunnerRecord(
        runner_id=runner_id,
        runner_group_id="group-a",
        tags=tags,
        capabilities=b"\x08\x01\x12\x00\xff",  # bytes round-trip, not text
        version="1.2.3",
        connected_at=T0,
        last_heartbeat_at=seen,
    )


def test_runners_and_sandboxes_are_saved_and_loaded(database_url: str) -> None:
    store = Store(database_url)
    try:
        assert store.load_runners() == []
        store.save_runners([runner("b", tags=("gpu", "ssd")), runner("a")])
        later = T0 + timedelta(seconds=90)
        store.save_runners([runner("a", seen=later, tags=("x",))])  # an update, not a copy
        sandboxes = store.sandboxes
        first = SandboxRecord("sbx-1", "a", tags=["t1", "t2"], spec=b"\x00\x01")
        sandboxes.insert(first)
        sandboxes.insert(SandboxRecord("sbx-2", "a"))
        running = sandboxes.save(replace(first, observed=Observed.RUNNING, observed_generation=1))
        with pytest.raises(StaleRecord):  # a write based on an old read is refused
            sandboxes.save(replace(first, reason="lost update"))
        sandboxes.save(replace(running, observed=Observed.COMPLETED, exit_code=0))
        sandboxes.remove(SandboxRecord("sbx-2", "a"), T0)
        cluster = sandboxes.cluster_id()
    finally:
        store.close()

    reopened = Store(database_url)  # a new engine: what is there is what was committed
    try:
        assert reopened.load_runners() == [
            runner("a", seen=later, tags=("x",)),
            runner("b", tags=("gpu", "ssd")),
        ]
        loaded = reopened.load_runners()[0]
        assert loaded.last_heartbeat_at.tzinfo is not None
        kept = reopened.sandboxes.get("sbx-1")
        assert kept is not None and (kept.observed, kept.exit_code, kept.version) == (
            Observed.COMPLETED,
            0,
            3,
        )
        assert kept.spec == b"\x00\x01" and kept.created_at.tzinfo is not None
        assert reopened.sandboxes.get("sbx-2") is None
        assert reopened.sandboxes.tombstoned(["sbx-2", "sbx-1"]) == {"sbx-2"}
        assert reopened.sandboxes.live() == []  # it ended: not loaded at start-up
        assert [r.sandbox_id for r in reopened.sandboxes.page(ListQuery(tags=("t2",)))] == ["sbx-1"]
        assert reopened.sandboxes.page(ListQuery(tags=("t2", "nope"))) == []
        assert reopened.sandboxes.cluster_id() == cluster  # the same cluster, for good
    finally:
        reopened.close()


def test_control_plane_keeps_its_runners_across_a_restart(
    database_url: str, tmp_path: Path
) -> None:
    cp = ControlPlaneProcess(tmp_path / "cp", extra_args=["--database-url", database_url])
    cp.start()
    runner = RunnerProcess(
        cp,
        tmp_path / "r",
        runner_id="kept",
        group="g",
        tags=["t"],
        extra_args=["--backend", "none"],  # registration only; no sandboxes here
    )
    try:
        runner.start()
        with cp.discovery() as client:
            client.wait_for("kept", healthy=True)
        runner.stop()
        cp.stop()
        # Same database (and data directory, for the admin key file), no runner running.
        cp = ControlPlaneProcess(
            tmp_path / "cp", port=cp.port, extra_args=["--database-url", database_url]
        ).start()
        with cp.discovery() as client:
            kept = client.get_runner("kept")
            assert not kept.healthy
            assert (kept.runner_group_id, list(kept.tags)) == ("g", ["t"])
            runner.start()  # its stored credential is still valid against that database
            client.wait_for("kept", healthy=True)
    finally:
        if runner.proc is not None:
            runner.stop()
        cp.stop()
    store = Store(database_url)  # it really used that database, not DATA_DIR's SQLite file
    try:
        assert [r.runner_id for r in store.load_runners()] == ["kept"]
    finally:
        store.close()


def test_events_are_stored_in_order_with_their_journal_position(database_url: str) -> None:
    store = Store(database_url, new_file=True)
    try:
        at = datetime(2026, 12, 3, 4, 5, 6, tzinfo=UTC)
        made = [
            SandboxEvent("sb-1", "acme", at, "exec", "user:a", {"argv": ["true"], "n": n})
            for n in range(5)
        ]
        first = store.events.append(made[:3], journal_through=3)
        assert [e.seq for e in first] == sorted({e.seq for e in first}) and first[0].seq > 0
        assert [e.data["n"] for e in first] == [0, 1, 2] and first[0].at == at
        assert store.events.journal_position() == 3
        later = store.events.append(made[3:], journal_through=2)  # never moves back
        assert store.events.journal_position() == 3 and later[0].seq > first[-1].seq
        assert store.events.append([], journal_through=9) == []
        assert store.events.journal_position() == 9
        read = store.events.page("sb-1", 0, 10)
        assert [(e.seq, e.data, e.at) for e in read] == [
            (e.seq, e.data, e.at) for e in first + later
        ]
    finally:
        store.close()
