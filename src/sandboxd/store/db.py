"""Persistent state of the control plane (SQLite embedded; any SQLAlchemy URL works).

Why persist runners: discovery must keep listing a runner after its heartbeats stop — and after
the control plane restarts — so administrators see it as unhealthy instead of having it vanish.
The live registry stays in memory; this store is written behind it in batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime, LargeBinary, String, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.store.base import Base as _Base
from sandboxd.store.base import utc as _utc
from sandboxd.store.identity import IdentityStore


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


class SandboxRow(_Base):
    """One sandbox, live or terminal; terminal rows stay readable until deleted."""

    __tablename__ = "sandboxes"

    sandbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The whole record as JSON; sandboxd.controlplane.sandboxes owns its shape.
    document: Mapped[dict[str, object]] = mapped_column(JSON)


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


class Store:
    """Synchronous store; call it from a worker thread (see :class:`BatchedRunnerWriter`).

    ``identity`` holds API keys, join tokens and runner credentials in the same database.
    """

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url)
        if url.startswith("sqlite"):
            event.listen(self._engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self._engine)
        self.identity = IdentityStore(self._engine)

    @classmethod
    def sqlite(cls, path: Path) -> Store:
        """A store in a SQLite file only its owner can read (it holds credential digests).

        The file is created 0600 before SQLite opens it, and an existing one is narrowed to
        0600; SQLite gives its ``-wal`` and ``-shm`` files the database file's mode.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        for suffix in ("-wal", "-shm"):
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                sidecar.chmod(0o600)
        return cls(f"sqlite:///{path}")

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
                    )
                )

    def load_sandboxes(self) -> list[dict[str, object]]:
        """Every stored sandbox document, in id order."""
        with Session(self._engine) as session:
            rows = session.scalars(select(SandboxRow).order_by(SandboxRow.sandbox_id)).all()
            return [dict(row.document) for row in rows]

    def save_sandbox(self, sandbox_id: str, document: dict[str, object]) -> None:
        """Insert or replace one sandbox document."""
        with Session(self._engine) as session, session.begin():
            session.merge(SandboxRow(sandbox_id=sandbox_id, document=document))

    def delete_sandbox(self, sandbox_id: str) -> None:
        """Forget a sandbox."""
        with Session(self._engine) as session, session.begin():
            row = session.get(SandboxRow, sandbox_id)
            if row is not None:
                session.delete(row)

    def close(self) -> None:
        """Release database connections."""
        self._engine.dispose()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
