"""What the ``coreweave.sandbox.v1`` front end keeps beside a sandbox's record.

Why a table of its own: a v1 sandbox is a resource whose ``spec`` GetSandbox and
ListSandboxes must echo back (protocol/v1.md §0.2 item 5: the client rebuilds tags,
containers and volume names from it), and creates are idempotent per ``request_id``
(§4.2.4). Neither exists in v1beta2, so the shared ``sandboxes`` row stays as it is and this
row holds the v1 superset, keyed by the same id. ``(owner_org, request_id)`` is unique, so
two creates with one request id cannot both be recorded, even from racing calls.

Rows of sandboxes that no longer exist are ignored when read and pruned in small batches.
Synchronous, like the other stores: the control plane calls it from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import DateTime, Index, LargeBinary, String, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.store.base import Base, utc
from sandboxd.store.sandbox_store import SandboxRow

PRUNE_BATCH = 200


class V1ResourceRow(Base):
    """The v1 spec of one sandbox (as echoed to clients) and the create's request id."""

    __tablename__ = "v1_sandboxes"

    sandbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_org: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    spec: Mapped[bytes] = mapped_column(LargeBinary)
    # SHA-256 of the whole create request (file bytes included), to tell a replay from a
    # different request that reuses the id.
    request_digest: Mapped[str] = mapped_column(String(64), default="")
    display_name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_v1_sandboxes_request", "owner_org", "request_id", unique=True),)


@dataclass(frozen=True)
class V1Resource:
    """A v1 sandbox's echoed spec (serialized ``SandboxSpec``) and create request id."""

    sandbox_id: str
    owner_org: str
    request_id: str
    spec: bytes
    request_digest: str
    display_name: str
    created_at: datetime


class RequestIdTaken(Exception):
    """Another sandbox of this organization was already created with this request id."""


def _resource(row: V1ResourceRow) -> V1Resource:
    return V1Resource(
        sandbox_id=row.sandbox_id,
        owner_org=row.owner_org,
        request_id=row.request_id or "",
        spec=row.spec,
        request_digest=row.request_digest,
        display_name=row.display_name,
        created_at=utc(row.created_at),
    )


class V1ResourceStore:
    """Rows of :class:`V1ResourceRow`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, resource: V1Resource) -> None:
        """Insert; :class:`RequestIdTaken` if the organization used the request id already."""
        row = V1ResourceRow(
            sandbox_id=resource.sandbox_id,
            owner_org=resource.owner_org,
            request_id=resource.request_id or None,
            spec=resource.spec,
            request_digest=resource.request_digest,
            display_name=resource.display_name,
            created_at=resource.created_at,
        )
        try:
            with Session(self._engine) as session, session.begin():
                session.add(row)
        except IntegrityError:
            raise RequestIdTaken(resource.request_id) from None

    def get(self, sandbox_id: str) -> V1Resource | None:
        """The row of this sandbox, if it has one."""
        with Session(self._engine) as session:
            row = session.get(V1ResourceRow, sandbox_id)
            return _resource(row) if row is not None else None

    def get_many(self, sandbox_ids: list[str]) -> dict[str, V1Resource]:
        """The rows of these sandboxes, by id (sandboxes without one are left out)."""
        if not sandbox_ids:
            return {}
        with Session(self._engine) as session:
            rows = session.scalars(
                select(V1ResourceRow).where(V1ResourceRow.sandbox_id.in_(sandbox_ids))
            ).all()
            return {row.sandbox_id: _resource(row) for row in rows}

    def by_request(self, owner_org: str, request_id: str) -> V1Resource | None:
        """The sandbox an organization created with ``request_id``, if its record still exists.

        A row whose sandbox record is gone (deleted, collected) is removed, so the request
        id can be used again.
        """
        with Session(self._engine) as session, session.begin():
            row = session.scalars(
                select(V1ResourceRow).where(
                    V1ResourceRow.owner_org == owner_org, V1ResourceRow.request_id == request_id
                )
            ).first()
            if row is None:
                return None
            if session.get(SandboxRow, row.sandbox_id) is None:
                session.delete(row)
                return None
            return _resource(row)

    def prune(self) -> int:
        """Remove up to a batch of rows whose sandbox record no longer exists."""
        with Session(self._engine) as session, session.begin():
            known = select(SandboxRow.sandbox_id)
            stale = session.scalars(
                select(V1ResourceRow.sandbox_id)
                .where(V1ResourceRow.sandbox_id.not_in(known))
                .limit(PRUNE_BATCH)
            ).all()
            if stale:
                session.execute(delete(V1ResourceRow).where(V1ResourceRow.sandbox_id.in_(stale)))
            return len(stale)
