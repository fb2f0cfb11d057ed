"""The control plane's database: newer ones refused in one line, old ones upgraded, no drift.

Real databases throughout: SQLite files damaged the ways disks and operators damage them,
and a real PostgreSQL server (``tests/support/postgres.py``). The damaged-file cases run the
real ``sandboxd controlplane`` command and read what an operator would see. The legacy
database is a dump of what sandboxd 29f4169 (before migrations) wrote, made by running that
version's store (``tests/fixtures/legacy-29f4169.sql``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sandboxd.controlplane.sandbox_model import (
    Action,
    Desired,
    Observed,
    SandboxRecord,
    decide,
    now,
)
from sandboxd.store import Store
from sandboxd.store.base import Base
from sandboxd.store.sandbox_store import ListQuery
from sandboxd.store.schema import DatabaseProblem, head_revision
from sandboxd_protocol.v1beta2 import gateway_pb2 as S
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.processes import SANDBOXD, child_env

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-29f4169.sql"
EXIT_DATABASE = 4


def filled_database(path: Path, sandboxes: int = 300) -> None:
    """A real control-plane database with runners' sandboxes in it (several pages)."""
    store = Store.sqlite(path)
    for number in range(sandboxes):
        store.sandboxes.insert(
            SandboxRecord(
                f"sb-{number:06d}",
                "runner-a",
                spec=b"x" * 512,
                tags=["team-a", f"n{number}"],
                observed=Observed.RUNNING,
                observed_generation=1,
            )
        )
    store.sandboxes.cluster_id()
    store.close()


def newer(path: Path) -> None:
    filled_database(path, sandboxes=1)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    # zero-length, garbage, truncated, foreign and broken rows: tests/fault/test_damaged_database.py
    "newer": (newer, "was written by a newer sandboxd (schema revision 9999_from_the_future)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_database_stops_the_control_plane_with_one_line(
    damage: str, tmp_path: Path
) -> None:
    make, problem = DAMAGE[damage]
    data_dir = tmp_path / "cp"
    data_dir.mkdir(mode=0o700)
    database = data_dir / "controlplane.db"
    make(database)
    before = database.read_bytes()
    done = subprocess.run(
        [*SANDBOXD, "controlplane", "--data-dir", str(data_dir),
         "--listen", f"127.0.0.1:{free_port()}"],
        env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == EXIT_DATABASE, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr  # one line, never a traceback
    assert lines[0].startswith(f"sandboxd: database refused: {database}"), lines[0]
    assert problem in lines[0]
    assert any(advice in lines[0] for advice in ("restore", "point", "give", "run")), lines[0]
    assert database.read_bytes() == before  # refused, not "repaired" or started fresh
    assert not (data_dir / "admin-key").exists()  # nothing was set up beside it


def test_a_newer_postgres_database_is_refused(postgres_server: PostgresServer) -> None:
    with postgres_server.database() as url:
        Store(url).close()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'zzzz'"))
        engine.dispose()
        with pytest.raises(DatabaseProblem, match="newer sandboxd") as caught:
            Store(url)
        assert postgres_server.password not in str(caught.value)  # shown without it


def test_an_unreachable_postgres_is_one_clear_problem(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://sandboxd:secret@127.0.0.1:{free_port()}/sandboxd"
    started = datetime.now(UTC)
    with pytest.raises(DatabaseProblem) as caught:
        Store(url)
    assert "cannot open postgresql+psycopg://sandboxd:***@127.0.0.1" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert datetime.now(UTC) - started < timedelta(seconds=30)


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    """What Alembic creates is exactly what the code maps (no drift on either database)."""
    store = Store(database_url)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            assert context.get_current_revision() == head_revision()
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
    finally:
        engine.dispose()
        store.close()


def test_a_database_from_before_migrations_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "controlplane.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(LEGACY.read_text())
    store = Store.sqlite(path)
    try:
        runners = store.load_runners()
        assert [(r.runner_id, r.tags) for r in runners] == [("runner-a", ("gpu",))]
        got = {sid: store.sandboxes.get(sid) for sid in (
            "sb-legacy-creating", "sb-legacy-running", "sb-legacy-terminating",
            "sb-legacy-completed", "sb-legacy-failed", "sb-legacy-terminated",
        )}  # fmt: skip
        records = {sid: record for sid, record in got.items() if record is not None}
        assert len(records) == 6
        status = {sid: r.status for sid, r in records.items()}
        assert status == {
            "sb-legacy-creating": S.SANDBOX_STATUS_CREATING,
            "sb-legacy-running": S.SANDBOX_STATUS_RUNNING,
            "sb-legacy-terminating": S.SANDBOX_STATUS_TERMINATING,
            "sb-legacy-completed": S.SANDBOX_STATUS_COMPLETED,
            "sb-legacy-failed": S.SANDBOX_STATUS_FAILED,
            "sb-legacy-terminated": S.SANDBOX_STATUS_TERMINATED,
        }
        running = records["sb-legacy-running"]
        assert (running.service_address, running.exposed_ports) == ("127.0.0.1:4000", [8080])
        assert (running.tags, running.reserved_cpu_millicores) == (["t1"], 500)
        assert running.owner_org == "admin"  # before organizations: the administrators'
        completed = records["sb-legacy-completed"]
        assert (completed.exit_code, completed.status_reason) == (3, "exited")
        assert records["sb-legacy-failed"].status_reason == "image not found"
        # What may still run is loaded at start-up; ended ones are not.
        live = {r.sandbox_id for r in store.sandboxes.live()}
        assert live == {"sb-legacy-creating", "sb-legacy-running", "sb-legacy-terminating"}
        # The legacy start that never came (no spec to start it from) is given up, the
        # stop that was in progress is carried on, the running one is left alone.
        assert decide(records["sb-legacy-creating"], now()) is Action.GIVE_UP
        assert decide(records["sb-legacy-terminating"], now()) is Action.STOP
        assert records["sb-legacy-terminating"].desired is Desired.STOPPED
        assert decide(running, now()) is Action.NOTHING
        tagged = store.sandboxes.page(ListQuery(tags=("t1",)))
        assert len(tagged) == 6  # tags moved to their own indexed table
    finally:
        store.close()
    # Opening it again changes nothing (the migration ran once).
    again = Store.sqlite(path)
    assert again.sandboxes.get("sb-legacy-running") == running
    again.close()
