"""Persistent state of the control plane: SQLite embedded, PostgreSQL for production.

Why persist runners: discovery must keep listing a runner after its heartbeats stop — and after
the control plane restarts — so administrators see it as unhealthy instead of having it vanish.
The live registry stays in memory; this store is written behind it in batches. Sandboxes
(``sandbox_store.py``) and identities (``identity.py``) share the database; the schema is
checked and migrated by ``schema.py`` before anything is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Integer,
    LargeBinary,
    String,
    create_engine,
    event,
    make_url,
    select,
)
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.store.base import Base as _Base
from sandboxd.store.base import utc as _utc
from sandboxd.store.config_store import ConfigStore
from sandboxd.store.event_store import EventStore
from sandboxd.store.identity import IdentityStore
from sandboxd.store.sandbox_store import SandboxStore
from sandboxd.store.schema import DatabaseProblem, check_and_migrate, check_sqlite_file, describe
from sandboxd.store.secret_store import SecretStores
from sandboxd.store.snapshot_store import SnapshotStore
from sandboxd.store.v1_resources import V1ResourceStore
from sandboxd.store.volume_store import VolumeStore


class RunnerRow(_Base):
    """One runner that has registered at least once."""

    __tablename__ = "runners"

    runner_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    runner_group_id: Mapped[str] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(JSON)
    capabilities: Mapped[bytes] = mapped_column(LargeBinary)
    version: Mapped[str] = mapped_column(String(64))
    connected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cordoned: Mapped[bool] = mapped_column(Boolean, default=False)
    drain_deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    drain_grace_seconds: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class RunnerRecord:
    """What the store keeps of a runner; ``capabilities`` is a serialized Capabilities proto."""

    runner_id: str
    runner_group_id: str
    tags: tuple[str, ...]
    capabilities: bytes
    version: str
    connected_at: datetime
    last_heartbeat_at: datetime
    cordoned: bool = False
    drain_deadline: datetime | None = None
    drain_grace_seconds: int = 0


class Store:
    """Synchronous store; call it from a worker thread (see :class:`BatchedRunnerWriter`).

    ``identity`` holds API keys, join tokens and runner credentials in the same database;
    ``secrets`` the secret stores and their (encrypted) values;
    ``config`` the configuration revisions applied with ``sandboxd config apply``;
    ``events`` each sandbox's activity trail.
    """

    def __init__(self, url: str, *, new_file: bool = False) -> None:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and parsed.database and parsed.database != ":memory:" and not new_file:
            check_sqlite_file(Path(parsed.database))
        try:
            self._engine: Engine = create_engine(
                url,
                pool_pre_ping=not sqlite,
                pool_timeout=POOL_TIMEOUT_SECONDS,
                connect_args=_connect_args(parsed.get_backend_name()),
            )
        except ModuleNotFoundError as exc:
            raise DatabaseProblem(
                f"the driver for {describe(parsed)} is not installed ({exc.name}); for "
                "PostgreSQL: pip install 'sandboxd[postgres]'"
            ) from None
        check_and_migrate(self._engine)
        if sqlite:
            # Only now: switching to WAL rewrites the file header, which must not happen to
            # a database that check_and_migrate refuses (another program's, a newer one).
            self._engine.dispose()
            event.listen(self._engine, "connect", _sqlite_pragmas)
        self.identity = IdentityStore(self._engine)
        self.sandboxes = SandboxStore(self._engine)
        self.secrets = SecretStores(self._engine)
        self.config = ConfigStore(self._engine)
        self.events = EventStore(self._engine)
        self.v1 = V1ResourceStore(self._engine)
        self.snapshots = SnapshotStore(self._engine)
        self.volumes = VolumeStore(self._engine)

    @classmethod
    def sqlite(cls, path: Path) -> Store:
        """A store in a SQLite file only its owner can read (it holds credential digests).

        The file is created 0600 before SQLite opens it, and an existing one is narrowed to
        0600; SQLite gives its ``-wal`` and ``-shm`` files the database file's mode. Only a
        file made here may start empty: an existing empty one was truncated and is refused.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not path.exists()
        if not new_file:
            check_sqlite_file(path)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        for suffix in ("-wal", "-shm"):
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                sidecar.chmod(0o600)
        return cls(f"sqlite:///{path}", new_file=True)

    def load_runners(self) -> list[RunnerRecord]:
        """Every runner ever registered, in id order."""
        with Session(self._engine) as session:
            rows = session.scalars(select(RunnerRow).order_by(RunnerRow.runner_id)).all()
            return [
                RunnerRecord(
                    runner_id=row.runner_id,
                    runner_group_id=row.runner_group_id,
                    tags=tuple(row.tags),
                    capabilities=row.capabilities,
                    version=row.version,
                    connected_at=_utc(row.connected_at),
                    last_heartbeat_at=_utc(row.last_heartbeat_at),
                    cordoned=bool(row.cordoned),
                    drain_deadline=(
                        _utc(row.drain_deadline) if row.drain_deadline is not None else None
                    ),
                    drain_grace_seconds=row.drain_grace_seconds or 0,
                )
                for row in rows
            ]

    def save_runners(self, records: Iterable[RunnerRecord]) -> None:
        """Insert or update runners in one transaction."""
        with Session(self._engine) as session, session.begin():
            for record in records:
                session.merge(
                    RunnerRow(
                        runner_id=record.runner_id,
                        runner_group_id=record.runner_group_id,
                        tags=list(record.tags),
                        capabilities=record.capabilities,
                        version=record.version,
                        connected_at=record.connected_at,
                        last_heartbeat_at=record.last_heartbeat_at,
                        cordoned=record.cordoned,
                        drain_deadline=record.drain_deadline,
                        drain_grace_seconds=record.drain_grace_seconds,
                    )
                )

    def delete_runner(self, runner_id: str) -> bool:
        """Forget a runner's row; False if there was none."""
        with Session(self._engine) as session, session.begin():
            row = session.get(RunnerRow, runner_id)
            if row is None:
                return False
            session.delete(row)
            return True

    @property
    def url(self) -> URL:
        """Where the database is (for messages: render it with ``schema.describe``)."""
        return self._engine.url

    def close(self) -> None:
        """Release database connections."""
        self._engine.dispose()


POOL_TIMEOUT_SECONDS = 10
POSTGRES_CONNECT_ARGS = {
    # Why: an unreachable server must fail a call in seconds, not hang the database thread;
    # TCP keepalives notice a server that vanished without closing the connection.
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _connect_args(backend: str) -> dict[str, object]:
    """Driver options: bounded connects and dead-peer detection for PostgreSQL."""
    return dict(POSTGRES_CONNECT_ARGS) if backend == "postgresql" else {}


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
