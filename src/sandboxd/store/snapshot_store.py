"""Snapshot rows and per-organization bucket configurations in the control plane's database.

Why in the database and not beside the archives: a snapshot's state (creating, ready,
failed), its digest and size, and who owns it must survive a control plane restart and be
the same for every replica; the archives themselves are content, addressed by the row.
Synchronous, like the other stores: the control plane calls it from a worker thread.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, String, delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.snapshots.model import (
    BucketConfig,
    SnapshotRecord,
    SnapshotStatus,
    SnapshotTrigger,
    now,
)
from sandboxd.store.base import Base, utc


class SnapshotRow(Base):
    """One file-system snapshot (migration ``0006_snapshots``)."""

    __tablename__ = "file_system_snapshots"
    __table_args__ = (
        Index("ix_fss_owner_key", "owner_org", "idempotency_key"),
        Index("ix_fss_owner", "owner_org", "snapshot_id"),
    )

    snapshot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_org: Mapped[str] = mapped_column(String(128))
    source_sandbox_id: Mapped[str] = mapped_column(String(64))
    volume_name: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str] = mapped_column(String(1024), default="")
    idempotency_key: Mapped[str] = mapped_column(String(256), default="")
    bucket: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BucketConfigRow(Base):
    """An organization's snapshot destination (absent: the managed one)."""

    __tablename__ = "file_system_snapshot_buckets"

    owner_org: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket_name: Mapped[str] = mapped_column(String(255))
    region: Mapped[str] = mapped_column(String(64), default="")


def _record(row: SnapshotRow) -> SnapshotRecord:
    return SnapshotRecord(
        snapshot_id=row.snapshot_id,
        owner_org=row.owner_org,
        source_sandbox_id=row.source_sandbox_id,
        volume_name=row.volume_name,
        trigger=SnapshotTrigger(row.trigger),
        status=SnapshotStatus(row.status),
        status_reason=row.status_reason,
        idempotency_key=row.idempotency_key,
        bucket=row.bucket,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        completed_at=utc(row.completed_at) if row.completed_at else None,
    )


class SnapshotStore:
    """Rows of snapshots and bucket configurations; every query is scoped by organization."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: SnapshotRecord) -> SnapshotRecord:
        """Insert a new snapshot; with an idempotency key already used, the existing one."""
        with Session(self._engine) as session:
            if record.idempotency_key:
                found = session.scalars(
                    select(SnapshotRow).where(
                        SnapshotRow.owner_org == record.owner_org,
                        SnapshotRow.idempotency_key == record.idempotency_key,
                    )
                ).first()
                if found is not None:
                    return _record(found)
            at = now()
            session.add(
                SnapshotRow(
                    snapshot_id=record.snapshot_id,
                    owner_org=record.owner_org,
                    source_sandbox_id=record.source_sandbox_id,
                    volume_name=record.volume_name,
                    trigger=record.trigger.value,
                    status=record.status.value,
                    status_reason=record.status_reason,
                    idempotency_key=record.idempotency_key,
                    bucket=record.bucket,
                    created_at=at,
                    updated_at=at,
                )
            )
            try:
                session.commit()
            except IntegrityError as exc:  # the id was taken (never, with 96 random bits)
                raise ValueError(f"snapshot {record.snapshot_id} exists") from exc
            row = session.get(SnapshotRow, record.snapshot_id)
            assert row is not None
            return _record(row)

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        """The snapshot with this id, whoever owns it (callers check the owner)."""
        with Session(self._engine) as session:
            row = session.get(SnapshotRow, snapshot_id)
            return _record(row) if row is not None else None

    def page(self, owner_org: str, after: str, limit: int) -> list[SnapshotRecord]:
        """Up to ``limit`` snapshots of ``owner_org`` ("" for every one) after id ``after``."""
        query = select(SnapshotRow).where(SnapshotRow.snapshot_id > after)
        if owner_org:
            query = query.where(SnapshotRow.owner_org == owner_org)
        query = query.order_by(SnapshotRow.snapshot_id).limit(limit)
        with Session(self._engine) as session:
            return [_record(row) for row in session.scalars(query)]

    def finish(
        self,
        snapshot_id: str,
        status: SnapshotStatus,
        *,
        reason: str = "",
        size_bytes: int = 0,
        sha256: str = "",
    ) -> None:
        """Record the end of a creation: READY with its size and digest, or FAILED and why."""
        at = now()
        values = {
            "status": status.value,
            "status_reason": reason[:1024],
            "size_bytes": size_bytes,
            "sha256": sha256,
            "updated_at": at,
            "completed_at": at if status is SnapshotStatus.READY else None,
        }
        with Session(self._engine) as session, session.begin():
            session.execute(
                update(SnapshotRow).where(SnapshotRow.snapshot_id == snapshot_id).values(**values)
            )

    def set_status(self, snapshot_id: str, status: SnapshotStatus) -> None:
        """Change only the status (e.g. DELETING while the content goes)."""
        with Session(self._engine) as session, session.begin():
            session.execute(
                update(SnapshotRow)
                .where(SnapshotRow.snapshot_id == snapshot_id)
                .values(status=status.value, updated_at=now())
            )

    def fail_unfinished(self, reason: str) -> list[SnapshotRecord]:
        """Mark every CREATING snapshot FAILED (nobody is creating it after a restart).

        Returns them as they are now, so the caller can finish what each was taken for (a
        snapshot on stop: the stop).
        """
        at = now()
        with Session(self._engine) as session, session.begin():
            rows = list(
                session.scalars(
                    select(SnapshotRow)
                    .where(SnapshotRow.status == SnapshotStatus.CREATING.value)
                    .with_for_update()
                )
            )
            for row in rows:
                row.status, row.status_reason, row.updated_at = (
                    SnapshotStatus.FAILED.value, reason, at,
                )  # fmt: skip
            session.flush()
            return [_record(row) for row in rows]

    def remove(self, snapshot_id: str) -> None:
        """Forget the snapshot (its content is gone)."""
        with Session(self._engine) as session, session.begin():
            session.execute(delete(SnapshotRow).where(SnapshotRow.snapshot_id == snapshot_id))

    def bucket_config(self, owner_org: str) -> BucketConfig:
        """The organization's destination (the managed one unless it set its own)."""
        with Session(self._engine) as session:
            row = session.get(BucketConfigRow, owner_org)
            if row is None:
                return BucketConfig()
            return BucketConfig(bucket_name=row.bucket_name, region=row.region)

    def set_bucket_config(self, owner_org: str, config: BucketConfig) -> None:
        """Set (or, with an empty bucket name, clear) the organization's destination."""
        with Session(self._engine) as session, session.begin():
            session.execute(delete(BucketConfigRow).where(BucketConfigRow.owner_org == owner_org))
            if config.bucket_name:
                session.add(
                    BucketConfigRow(
                        owner_org=owner_org, bucket_name=config.bucket_name, region=config.region
                    )
                )
