"""Persistent volume rows in the control plane's database (migration ``0008_volumes``).

Why rows: a volume's registration (which runner, which directory, its state) must survive
a control plane restart and read the same from every replica. The key is (organization,
volume id): ids are names that each organization chooses, so two organizations may both
have a ``data`` volume and neither learns of the other's. ``(owner_org, request_id)`` is
indexed for idempotent creates. Synchronous, like the other stores: the control plane calls
it from a worker thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, String, delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.store.base import Base, utc
from sandboxd.volumes.model import VolumeRecord, VolumeState, now


class VolumeRow(Base):
    """One registered volume."""

    __tablename__ = "volumes"
    __table_args__ = (Index("ix_volumes_request", "owner_org", "request_id"),)

    owner_org: Mapped[str] = mapped_column(String(128), primary_key=True)
    volume_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    runner_id: Mapped[str] = mapped_column(String(255))
    namespace: Mapped[str] = mapped_column(String(63))
    claim_name: Mapped[str] = mapped_column(String(63))
    sub_path: Mapped[str] = mapped_column(String(1024), default="")
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(1024), default="")
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(String(1024), default="")
    request_id: Mapped[str] = mapped_column(String(128), default="")
    request_digest: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    validated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VolumeExists(Exception):
    """The organization has a volume with this id already."""


_FIELDS = [f.name for f in dataclasses.fields(VolumeRecord)]


def _record(row: VolumeRow) -> VolumeRecord:
    values = {name: getattr(row, name) for name in _FIELDS}
    values["state"] = VolumeState(row.state)
    values["created_at"] = utc(row.created_at)
    values["updated_at"] = utc(row.updated_at)
    values["validated_at"] = utc(row.validated_at) if row.validated_at else None
    return VolumeRecord(**values)


class VolumeStore:
    """Rows of :class:`VolumeRow`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: VolumeRecord) -> None:
        """Insert; :class:`VolumeExists` when the organization has this id already."""
        values = {name: getattr(record, name) for name in _FIELDS}
        values["state"] = record.state.value
        try:
            with Session(self._engine) as session, session.begin():
                session.add(VolumeRow(**values))
        except IntegrityError:
            raise VolumeExists(record.volume_id) from None

    def get(self, owner_org: str, volume_id: str) -> VolumeRecord | None:
        """The organization's volume with this id."""
        with Session(self._engine) as session:
            row = session.get(VolumeRow, (owner_org, volume_id))
            return _record(row) if row is not None else None

    def by_request(self, owner_org: str, request_id: str) -> VolumeRecord | None:
        """The organization's volume created with ``request_id``, if it still exists."""
        with Session(self._engine) as session:
            row = session.scalars(
                select(VolumeRow).where(
                    VolumeRow.owner_org == owner_org, VolumeRow.request_id == request_id
                )
            ).first()
            return _record(row) if row is not None else None

    def page(
        self,
        owner_org: str,
        after: str,
        limit: int,
        states: Sequence[VolumeState] = (),
        runner_ids: Sequence[str] = (),
    ) -> list[VolumeRecord]:
        """The organization's volumes after id ``after``, by id, narrowed by the filters."""
        query = select(VolumeRow).where(VolumeRow.owner_org == owner_org)
        if after:
            query = query.where(VolumeRow.volume_id > after)
        if states:
            query = query.where(VolumeRow.state.in_([s.value for s in states]))
        if runner_ids:
            query = query.where(VolumeRow.runner_id.in_(list(runner_ids)))
        with Session(self._engine) as session:
            rows = session.scalars(query.order_by(VolumeRow.volume_id).limit(limit)).all()
            return [_record(row) for row in rows]

    def update(self, owner_org: str, volume_id: str, **changes: object) -> VolumeRecord | None:
        """Change some columns (``state`` as a :class:`VolumeState`); the new record."""
        with Session(self._engine) as session, session.begin():
            row = session.get(VolumeRow, (owner_org, volume_id), with_for_update=True)
            if row is None:
                return None
            for name, value in changes.items():
                setattr(row, name, value.value if isinstance(value, VolumeState) else value)
            row.updated_at = now()
            session.flush()
            return _record(row)

    def fail_validating(self, reason: str) -> int:
        """Every volume left VALIDATING (its check died with a control plane): ERROR."""
        with Session(self._engine) as session, session.begin():
            gone = session.execute(
                update(VolumeRow)
                .where(VolumeRow.state == VolumeState.VALIDATING.value)
                .values(state=VolumeState.ERROR.value, state_reason=reason, updated_at=now())
            )
            return int(getattr(gone, "rowcount", 0))

    def remove(self, owner_org: str, volume_id: str) -> bool:
        """Forget the volume; whether there was one."""
        with Session(self._engine) as session, session.begin():
            gone = session.execute(
                delete(VolumeRow).where(
                    VolumeRow.owner_org == owner_org, VolumeRow.volume_id == volume_id
                )
            )
            return bool(getattr(gone, "rowcount", 0))
