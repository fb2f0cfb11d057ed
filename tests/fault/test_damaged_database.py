"""A damaged or foreign database stops the control plane with one clear line.

A control plane that starts on a damaged database, or on another program's, must not look
healthy while it has forgotten every sandbox its runners hold; nor may it greet the operator
with a traceback. ``sandboxd controlplane`` must exit with a status other than 0 and print
exactly one line on stderr that names the database (the file, or the URL without its
password) and says what to do.

Cases: the SQLite file in the data directory is empty (a crash or a full disk truncated it),
holds garbage, or is a real database cut short; a row's JSON or values are broken; the
database belongs to another application. The last two also on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.store import Store
from tests.support.processes import SANDBOXD, child_env

START_TIMEOUT = 60.0
EXIT_DATABASE = 4  # sandboxd's exit status for a refused database


@dataclass(frozen=True)
class Damaged:
    """A database prepared for a control plane, and how the refusal must name it."""

    data_dir: Path
    database_url: str  # empty: the SQLite file in the data directory
    names: str  # the refusal names this (a file path, a database name)
    secret: str = ""  # and never this (a password)


def run_control_plane(damaged: Damaged) -> subprocess.CompletedProcess[str]:
    args = [
        *SANDBOXD, "controlplane", "--listen", "127.0.0.1:0", "--data-dir", str(damaged.data_dir),
    ]  # fmt: skip
    if damaged.database_url:
        args += ["--database-url", damaged.database_url]
    return subprocess.run(
        args, env=child_env(), capture_output=True, text=True, timeout=START_TIMEOUT, check=False
    )


def a_sandbox(sandbox_id: str = "sb-00000000001aaaaaaaa") -> SandboxRecord:
    now = datetime.now(UTC)
    return SandboxRecord(sandbox_id=sandbox_id, runner_id="east", created_at=now, tags=["t"])


def with_a_sandbox(url: str) -> None:
    """A real control-plane database (schema at head) holding one sandbox."""
    store = Store(url)
    try:
        store.sandboxes.insert(a_sandbox())
    finally:
        store.close()


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


# -- SQLite files in the data directory ------------------------------------------------------------


def sqlite_file(tmp_path: Path) -> tuple[Path, Path]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    return data_dir, data_dir / "controlplane.db"


def zero_length(tmp_path: Path) -> Damaged:
    data_dir, db = sqlite_file(tmp_path)
    db.touch(mode=0o600)
    return Damaged(data_dir, "", str(db))


def garbage(tmp_path: Path) -> Damaged:
    data_dir, db = sqlite_file(tmp_path)
    db.write_bytes(b"this is not a database\n" * 500)
    return Damaged(data_dir, "", str(db))


def truncated(tmp_path: Path) -> Damaged:
    data_dir, db = sqlite_file(tmp_path)
    with_a_sandbox(f"sqlite:///{db}")
    size = db.stat().st_size
    page = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
    assert size > 4 * page, size  # enough pages that losing half of them shows
    with db.open("r+b") as fh:
        fh.truncate(size // 2)
    return Damaged(data_dir, "", str(db))


def broken_json_row(tmp_path: Path) -> Damaged:
    data_dir, db = sqlite_file(tmp_path)
    url = f"sqlite:///{db}"
    with_a_sandbox(url)
    execute(url, "UPDATE sandboxes SET tags = '[\"t\", oops' ")
    return Damaged(data_dir, "", str(db))


SQLITE_CASES: dict[str, Callable[[Path], Damaged]] = {
    "zero-length": zero_length,
    "garbage": garbage,
    "truncated": truncated,
    "broken-json-row": broken_json_row,
}


@pytest.mark.parametrize(
    "prepare", [pytest.param(prepare, id=name) for name, prepare in SQLITE_CASES.items()]
)
def test_damaged_sqlite_file_is_refused_in_one_line(
    prepare: Callable[[Path], Damaged], tmp_path: Path
) -> None:
    damaged = prepare(tmp_path)
    before = Path(damaged.names).read_bytes()
    assert_refused(damaged, run_control_plane(damaged))
    assert Path(damaged.names).read_bytes() == before  # and left as it was, for a backup


# -- on SQLite and PostgreSQL --------------------------------------------------------------------


def on(database_url: str, tmp_path: Path) -> Damaged:
    url = make_url(database_url)
    names = str(url.database) if url.get_backend_name() == "sqlite" else f"/{url.database}"
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    return Damaged(data_dir, database_url, names, secret=url.password or "")


def test_row_with_broken_values_is_refused_in_one_line(database_url: str, tmp_path: Path) -> None:
    with_a_sandbox(database_url)
    execute(database_url, "UPDATE sandboxes SET observed = 'exploded'")
    damaged = on(database_url, tmp_path)
    assert_refused(damaged, run_control_plane(damaged))


def test_foreign_database_is_refused_in_one_line(database_url: str, tmp_path: Path) -> None:
    execute(
        database_url,
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, total INTEGER)",
        "INSERT INTO customers (id, name) VALUES (1, 'ada')",
    )
    damaged = on(database_url, tmp_path)
    done = run_control_plane(damaged)
    assert_refused(damaged, done)
    assert "customers" in done.stderr  # it says what it found
    # Nothing was added to the other application's database.
    engine = sa.create_engine(database_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) == {"customers", "orders"}
    finally:
        engine.dispose()


def assert_refused(damaged: Damaged, done: subprocess.CompletedProcess[str]) -> None:
    """Exit status ≠ 0, no traceback, exactly one line on stderr naming the database."""
    report = f"exit {done.returncode}; stderr:\n{done.stderr}"
    assert done.returncode == EXIT_DATABASE, report
    assert not (damaged.data_dir / "admin-key").exists(), report  # nothing set up beside it
    assert "CWSANDBOX_BASE_URL=" not in done.stdout, report  # it never served
    assert "Traceback" not in done.stderr, report
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, report
    line = lines[0]
    assert damaged.names in line, report
    if damaged.secret:
        assert damaged.secret not in line, report
    # It says what to do, not only what is wrong.
    assert any(
        verb in line.lower() for verb in ("restore", "move it away", "point", "give", "run ")
    ), report
