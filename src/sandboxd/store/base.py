"""The one SQLAlchemy declarative base, so every table is created by :class:`Store`.

Why its own module: the runner/sandbox tables (:mod:`sandboxd.store.db`) and the identity
tables (:mod:`sandboxd.store.identity`) live in separate modules but one database, and
``create_all`` must see both.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every control-plane table."""


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite drops the tzinfo on the way back)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
