"""Opening the control plane's database: refuse a damaged or foreign one, then migrate.

Why refuse loudly: a control plane that quietly starts on an empty, truncated or wrong
database looks healthy while it has forgotten every sandbox its runners hold. So before
anything else the database is checked, and a problem stops the control plane with one line
that says which database, what is wrong and what to do (``DatabaseProblem``), never a
traceback:

* a SQLite file of zero bytes (truncated by a crash or a full disk), or one that is not a
  SQLite database at all, or whose pages fail SQLite's ``quick_check``;
* a database with tables but none of ours (another program's database, a wrong URL);
* a schema written by a newer sandboxd than this one.

Then Alembic brings the schema to the current revision (``migrations/``), in one
transaction; a database from before migrations existed is upgraded in place.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
OUR_TABLES = frozenset({"runners", "sandboxes", "api_keys", "join_tokens", "runner_credentials"})


class DatabaseProblem(Exception):
    """The database cannot be used; the message is one line for the operator."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def describe(url: sa.engine.URL) -> str:
    """The database as an operator knows it (a file path, or the URL without password)."""
    if url.get_backend_name() == "sqlite":
        return str(url.database or ":memory:")
    return url.render_as_string(hide_password=True)


def check_sqlite_file(path: Path) -> None:
    """Refuse a truncated file or one that is not SQLite, before SQLAlchemy touches it."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        raise DatabaseProblem(
            f"{path} is empty (0 bytes): it was truncated (a crash or a full disk?). Restore "
            "it from a backup; to start a new cluster instead, move it away (the sandboxes "
            "runners hold are then reported as orphans, never destroyed)"
        )
    with path.open("rb") as fh:
        header = fh.read(16)
    if header != b"SQLite format 3\x00":
        raise DatabaseProblem(
            f"{path} is not a SQLite database (its first bytes are {header[:8]!r}): point "
            "--data-dir or --database-url at the control plane's database, or restore it"
        )
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            result = conn.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseProblem(f"{path} is damaged ({exc}): restore it from a backup") from None
    if result is None or result[0] != "ok":
        detail = result[0] if result else "no answer"
        raise DatabaseProblem(
            f"{path} is damaged (SQLite quick_check: {detail}): restore it from a backup"
        )


def check_and_migrate(engine: Engine) -> None:
    """Refuse a foreign or newer database, then upgrade the schema to the current revision."""
    where = describe(engine.url)
    script = ScriptDirectory.from_config(_config())
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            current = MigrationContext.configure(conn).get_current_revision()
    except (DBAPIError, SQLAlchemyError) as exc:
        raise DatabaseProblem(f"cannot open {where}: {_first_line(exc)}") from None
    if tables and "alembic_version" not in tables and not tables & OUR_TABLES:
        shown = ", ".join(sorted(tables)[:5])
        raise DatabaseProblem(
            f"{where} is not a sandboxd database (it has tables {shown}): give the control "
            "plane its own database"
        )
    if current is not None and current not in {s.revision for s in script.walk_revisions()}:
        raise DatabaseProblem(
            f"{where} was written by a newer sandboxd (schema revision {current}); run that "
            "version or a later one"
        )
    config = _config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except (DBAPIError, SQLAlchemyError) as exc:
        raise DatabaseProblem(f"cannot migrate {where}: {_first_line(exc)}") from None


def head_revision() -> str:
    """The schema revision this sandboxd writes."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
