"""The administrator's configuration as last applied, kept in the control plane's database.

Why in the database: ``sandboxd config apply`` changes profiles, bindings and quotas without a
restart, and a restart must not quietly bring the old ones back (a control plane started
without ``--config`` uses the last applied text). Each apply is a new revision; the newest
:data:`KEPT_REVISIONS` are kept, so ``config show`` can say which revision is live and an
administrator can see what came before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, String, Text, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.store.base import Base, utc

KEPT_REVISIONS = 50


class ConfigRevisionRow(Base):
    """One applied configuration: its YAML text, where it came from, when."""

    __tablename__ = "platform_config"

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(255))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class AppliedConfig:
    """A configuration revision as stored."""

    revision: int
    text: str
    source: str
    applied_at: datetime


class ConfigStore:
    """Synchronous access to the applied configuration; call it from a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def latest(self) -> AppliedConfig | None:
        """The newest revision, or None when nothing was ever applied."""
        with Session(self._engine) as session:
            row = session.scalars(
                select(ConfigRevisionRow).order_by(ConfigRevisionRow.revision.desc()).limit(1)
            ).first()
            return _applied(row) if row is not None else None

    def save(self, text: str, source: str) -> AppliedConfig:
        """Store ``text`` as the newest revision (and drop revisions past the kept ones)."""
        with Session(self._engine) as session, session.begin():
            row = ConfigRevisionRow(text=text, source=source[:255], applied_at=datetime.now(UTC))
            session.add(row)
            session.flush()
            session.execute(
                delete(ConfigRevisionRow).where(
                    ConfigRevisionRow.revision <= row.revision - KEPT_REVISIONS
                )
            )
            return _applied(row)


def _applied(row: ConfigRevisionRow) -> AppliedConfig:
    return AppliedConfig(row.revision, row.text, row.source, utc(row.applied_at))
