"""Secret stores and their encrypted values in the control plane's database.

Why the values are opaque bytes here: this module never sees a plaintext value. The control
plane encrypts before writing (:mod:`sandboxd.secrets.cipher`, with a key that is not in the
database) and decrypts after reading, so nothing that reads or copies these tables, this
module included, can reveal one. Every query is keyed by organization: a store of another
organization is not found, exactly like a store that does not exist.

Counts are checked in the transaction that inserts, so the bounds of
:mod:`sandboxd.secrets.rules` hold before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    DateTime,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.store.base import Base, utc

__all__ = [
    "SecretEntryInfo",
    "SecretKey",
    "SecretStoreInfo",
    "SecretStoreRow",
    "SecretStores",
    "SecretValueRow",
    "StoreFull",
    "StoreNameTaken",
]


class SecretStoreRow(Base):
    """One secret store of one organization."""

    __tablename__ = "secret_stores"
    __table_args__ = (UniqueConstraint("organization", "name", name="uq_secret_stores_org_name"),)

    store_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    organization: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(63))
    provider_type: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def info(self) -> SecretStoreInfo:
        """The row as a value object."""
        return SecretStoreInfo(
            store_id=self.store_id,
            organization=self.organization,
            name=self.name,
            provider_type=self.provider_type,
            created_at=utc(self.created_at),
            updated_at=utc(self.updated_at),
        )


class SecretValueRow(Base):
    """One encrypted value: a secret's own value (``field`` "") or one of its fields."""

    __tablename__ = "secret_values"

    store_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    field: Mapped[str] = mapped_column(String(63), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class SecretStoreInfo:
    """A store as the API shows it (it holds no value)."""

    store_id: str
    organization: str
    name: str
    provider_type: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class SecretEntryInfo:
    """One value as listed: where it is and how long, never what."""

    store_name: str
    name: str
    field: str
    size_bytes: int
    updated_at: datetime


@dataclass(frozen=True)
class SecretKey:
    """Where one value is: store name, secret name, field ("" for the secret's own value)."""

    store_name: str
    name: str
    field: str


class StoreNameTaken(Exception):
    """The organization already has a store of this name."""


class StoreFull(Exception):
    """A bound would be exceeded (``what`` says which); nothing was written."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(what)
        self.what = what
        self.limit = limit


def bound_to(store_id: str, name: str, field: str) -> str:
    """The associated data a value is encrypted with: it decrypts only in its own row."""
    return f"{store_id}\x00{name}\x00{field}"


class SecretStores:
    """Synchronous access to the secret tables; call it from a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- start-up ----------------------------------------------------------------------------

    def count_values(self) -> int:
        """How many encrypted values the database holds (all organizations)."""
        with Session(self._engine) as session:
            return int(session.scalar(select(func.count()).select_from(SecretValueRow)) or 0)

    def sample_value(self) -> tuple[str, bytes] | None:
        """One stored value with what it is bound to, to check the key at start."""
        with Session(self._engine) as session:
            row = session.scalars(select(SecretValueRow).limit(1)).first()
            if row is None:
                return None
            return bound_to(row.store_id, row.name, row.field), row.ciphertext

    # -- stores ------------------------------------------------------------------------------

    def _store_row(self, session: Session, organization: str, name: str) -> SecretStoreRow | None:
        return session.scalars(
            select(SecretStoreRow).where(
                SecretStoreRow.organization == organization, SecretStoreRow.name == name
            )
        ).first()

    def create_store(self, info: SecretStoreInfo, max_per_organization: int) -> SecretStoreInfo:
        """Add a store; :class:`StoreNameTaken` or :class:`StoreFull` write nothing."""
        try:
            with Session(self._engine) as session, session.begin():
                if self._store_row(session, info.organization, info.name) is not None:
                    raise StoreNameTaken(info.name)
                count = session.scalar(
                    select(func.count())
                    .select_from(SecretStoreRow)
                    .where(SecretStoreRow.organization == info.organization)
                )
                if int(count or 0) >= max_per_organization:
                    raise StoreFull("stores per organization", max_per_organization)
                session.add(
                    SecretStoreRow(
                        store_id=info.store_id,
                        organization=info.organization,
                        name=info.name,
                        provider_type=info.provider_type,
                        created_at=info.created_at,
                        updated_at=info.updated_at,
                    )
                )
        except IntegrityError:  # another control plane created it a moment ago
            raise StoreNameTaken(info.name) from None
        return info

    def get_store(self, organization: str, name: str) -> SecretStoreInfo | None:
        """The organization's store of this name, if any."""
        with Session(self._engine) as session:
            row = self._store_row(session, organization, name)
            return row.info() if row is not None else None

    def list_stores(self, organization: str, after: str, limit: int) -> list[SecretStoreInfo]:
        """Up to ``limit`` of the organization's stores after ``after``, in name order."""
        with Session(self._engine) as session:
            rows = session.scalars(
                select(SecretStoreRow)
                .where(SecretStoreRow.organization == organization, SecretStoreRow.name > after)
                .order_by(SecretStoreRow.name)
                .limit(limit)
            ).all()
            return [row.info() for row in rows]

    def delete_store(self, organization: str, name: str) -> bool:
        """Remove a store and every value in it; False when there was none."""
        with Session(self._engine) as session, session.begin():
            row = self._store_row(session, organization, name)
            if row is None:
                return False
            session.execute(delete(SecretValueRow).where(SecretValueRow.store_id == row.store_id))
            session.delete(row)
            return True

    # -- values ------------------------------------------------------------------------------

    def put_value(
        self,
        organization: str,
        key: SecretKey,
        seal: Callable[[str], bytes],
        *,
        size_bytes: int,
        at: datetime,
        max_per_store: int,
    ) -> SecretEntryInfo | None:
        """Set one value (``seal(bound_to)`` encrypts it); None when the store is missing."""
        with Session(self._engine) as session, session.begin():
            store = self._store_row(session, organization, key.store_name)
            if store is None:
                return None
            row = session.get(SecretValueRow, (store.store_id, key.name, key.field))
            if row is None:
                count = session.scalar(
                    select(func.count())
                    .select_from(SecretValueRow)
                    .where(SecretValueRow.store_id == store.store_id)
                )
                if int(count or 0) >= max_per_store:
                    raise StoreFull("secrets per store", max_per_store)
                row = SecretValueRow(store_id=store.store_id, name=key.name, field=key.field)
                session.add(row)
            row.ciphertext = seal(bound_to(store.store_id, key.name, key.field))
            row.size_bytes = size_bytes
            row.updated_at = at
            store.updated_at = at
            return SecretEntryInfo(key.store_name, key.name, key.field, size_bytes, at)

    def delete_value(self, organization: str, key: SecretKey) -> bool:
        """Remove one value; False when the store or the value is missing."""
        with Session(self._engine) as session, session.begin():
            store = self._store_row(session, organization, key.store_name)
            if store is None:
                return False
            result = session.execute(
                delete(SecretValueRow).where(
                    SecretValueRow.store_id == store.store_id,
                    SecretValueRow.name == key.name,
                    SecretValueRow.field == key.field,
                )
            )
            return bool(getattr(result, "rowcount", 0))

    def list_values(self, organization: str, store_name: str) -> list[SecretEntryInfo] | None:
        """The values of one store, without them; None when the store is missing."""
        with Session(self._engine) as session:
            store = self._store_row(session, organization, store_name)
            if store is None:
                return None
            rows = session.scalars(
                select(SecretValueRow)
                .where(SecretValueRow.store_id == store.store_id)
                .order_by(SecretValueRow.name, SecretValueRow.field)
            ).all()
            return [
                SecretEntryInfo(store_name, r.name, r.field, r.size_bytes, utc(r.updated_at))
                for r in rows
            ]

    def fetch_values(
        self, organization: str, keys: Iterable[SecretKey]
    ) -> dict[SecretKey, tuple[str, bytes]]:
        """The stored ciphertext of each key found, with what it is bound to.

        Keys of a missing store or value are simply absent from the answer.
        """
        wanted = list(dict.fromkeys(keys))
        found: dict[SecretKey, tuple[str, bytes]] = {}
        with Session(self._engine) as session:
            stores: dict[str, SecretStoreRow | None] = {}
            for key in wanted:
                if key.store_name not in stores:
                    stores[key.store_name] = self._store_row(session, organization, key.store_name)
                store = stores[key.store_name]
                if store is None:
                    continue
                row = session.get(SecretValueRow, (store.store_id, key.name, key.field))
                if row is not None:
                    found[key] = (bound_to(store.store_id, key.name, key.field), row.ciphertext)
        return found
