"""API keys, join tokens and runner credentials in the control plane's database.

Why digests only: a copy of the database (a backup, a stolen file) must not let anyone call
the API or join a runner, so the store keeps the SHA-256 of each secret and never the secret.
Why a conditional UPDATE to count join-token uses: two runners joining with a single-use token
at the same moment, even through two control planes sharing one PostgreSQL, must not both
succeed; the database decides, not a read-then-write in Python.
"""

from __future__ import annotations

import hmac
from datetime import datetime

from sqlalchemy import DateTime, Integer, String, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from sandboxd.identity.model import (
    ApiKeyInfo,
    JoinRefused,
    JoinTokenInfo,
    Role,
    RunnerCredentialInfo,
)
from sandboxd.store.base import Base, utc


def _maybe_utc(value: datetime | None) -> datetime | None:
    return utc(value) if value is not None else None


class ApiKeyRow(Base):
    """One API key: who it belongs to and what it may do."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    organization: Mapped[str] = mapped_column(String(63), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def info(self) -> ApiKeyInfo:
        """The record without its digest."""
        return ApiKeyInfo(
            key_id=self.key_id,
            organization=self.organization,
            role=Role(self.role),
            name=self.name,
            created_at=utc(self.created_at),
            revoked_at=_maybe_utc(self.revoked_at),
        )


class JoinTokenRow(Base):
    """One runner join token with its use count and expiry."""

    __tablename__ = "join_tokens"

    token_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    runner_group_id: Mapped[str] = mapped_column(String(255))
    runner_id: Mapped[str] = mapped_column(String(255))
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def info(self) -> JoinTokenInfo:
        """The record without its digest."""
        return JoinTokenInfo(
            token_id=self.token_id,
            runner_group_id=self.runner_group_id,
            runner_id=self.runner_id,
            max_uses=self.max_uses,
            uses=self.uses,
            created_at=utc(self.created_at),
            expires_at=utc(self.expires_at),
            revoked_at=_maybe_utc(self.revoked_at),
        )


class RunnerCredentialRow(Base):
    """The credential bound to one runner id; a revoked row keeps the id blocked."""

    __tablename__ = "runner_credentials"

    runner_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    credential_id: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    runner_group_id: Mapped[str] = mapped_column(String(255))
    token_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def info(self) -> RunnerCredentialInfo:
        """The record without its digest."""
        return RunnerCredentialInfo(
            runner_id=self.runner_id,
            credential_id=self.credential_id,
            runner_group_id=self.runner_group_id,
            token_id=self.token_id,
            created_at=utc(self.created_at),
            revoked_at=_maybe_utc(self.revoked_at),
        )


class IdentityStore:
    """Synchronous access to the identity tables; call it from a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- API keys -------------------------------------------------------------------------

    def add_api_key(self, key: ApiKeyInfo, digest: str) -> None:
        """Store a new key."""
        with Session(self._engine) as session, session.begin():
            session.add(
                ApiKeyRow(
                    key_id=key.key_id,
                    organization=key.organization,
                    role=key.role.value,
                    name=key.name,
                    digest=digest,
                    created_at=key.created_at,
                    revoked_at=key.revoked_at,
                )
            )

    def api_key(self, key_id: str) -> tuple[ApiKeyInfo, str] | None:
        """A key and its digest, revoked or not."""
        with Session(self._engine) as session:
            row = session.get(ApiKeyRow, key_id)
            return (row.info(), row.digest) if row is not None else None

    def api_keys(self, organization: str = "", include_revoked: bool = False) -> list[ApiKeyInfo]:
        """Keys, oldest first, optionally of one organization."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        if organization:
            query = query.where(ApiKeyRow.organization == organization)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        with Session(self._engine) as session:
            return [row.info() for row in session.scalars(query)]

    def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyInfo | None:
        """Mark a key revoked (idempotent: a second revoke keeps the first time)."""
        with Session(self._engine) as session, session.begin():
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = at
            return row.info()

    # -- join tokens ----------------------------------------------------------------------

    def add_join_token(self, token: JoinTokenInfo, digest: str) -> None:
        """Store a new join token."""
        with Session(self._engine) as session, session.begin():
            session.add(
                JoinTokenRow(
                    token_id=token.token_id,
                    digest=digest,
                    runner_group_id=token.runner_group_id,
                    runner_id=token.runner_id,
                    max_uses=token.max_uses,
                    uses=token.uses,
                    created_at=token.created_at,
                    expires_at=token.expires_at,
                    revoked_at=token.revoked_at,
                )
            )

    def join_token(self, token_id: str) -> tuple[JoinTokenInfo, str] | None:
        """A token and its digest."""
        with Session(self._engine) as session:
            row = session.get(JoinTokenRow, token_id)
            return (row.info(), row.digest) if row is not None else None

    def join_tokens(self, now: datetime, include_spent: bool = False) -> list[JoinTokenInfo]:
        """Tokens, oldest first; without ``include_spent`` only those still usable."""
        query = select(JoinTokenRow).order_by(JoinTokenRow.created_at, JoinTokenRow.token_id)
        with Session(self._engine) as session:
            tokens = [row.info() for row in session.scalars(query)]
        return [t for t in tokens if include_spent or t.problem(now) is None]

    def revoke_join_token(self, token_id: str, at: datetime) -> JoinTokenInfo | None:
        """Mark a token revoked (idempotent)."""
        with Session(self._engine) as session, session.begin():
            row = session.get(JoinTokenRow, token_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = at
            return row.info()

    def join_runner(
        self, token_id: str, credential: RunnerCredentialInfo, digest: str, now: datetime
    ) -> RunnerCredentialInfo:
        """Spend one use of a token and bind ``credential`` to its runner id, atomically.

        A join that repeats the credential already bound to the id (the runner proposed it
        and never heard the answer) returns that binding unchanged and spends nothing.

        Raises :class:`JoinRefused` when the token is not usable, is pinned to another id, or
        the id already holds a credential the token may not replace. Nothing changes then.
        """
        runner_id = credential.runner_id
        try:
            with Session(self._engine) as session, session.begin():
                row = session.get(JoinTokenRow, token_id)
                if row is None:
                    raise JoinRefused("token", "join token is not known to this control plane")
                token = row.info()
                problem = token.problem(now)
                if problem is not None:
                    raise JoinRefused("token", f"join token {token_id} {problem}")
                if token.runner_id and token.runner_id != runner_id:
                    raise JoinRefused(
                        "pinned",
                        f"join token {token_id} is for runner {token.runner_id!r}, "
                        f"not {runner_id!r}",
                    )
                existing = session.get(RunnerCredentialRow, runner_id)
                if existing is not None and _repeated(existing, credential, digest):
                    return existing.info()  # its answer was lost; nothing spent again
                if existing is not None and not token.runner_id:
                    raise JoinRefused("bound", _bound_message(runner_id, existing))
                spent = session.execute(
                    update(JoinTokenRow)
                    .where(
                        JoinTokenRow.token_id == token_id,
                        JoinTokenRow.uses < JoinTokenRow.max_uses,
                        JoinTokenRow.revoked_at.is_(None),
                    )
                    .values(uses=JoinTokenRow.uses + 1)
                )
                if spent.rowcount != 1:  # type: ignore[attr-defined]
                    raise JoinRefused("token", f"join token {token_id} is used up")
                if existing is not None:
                    session.delete(existing)
                    session.flush()
                session.add(
                    RunnerCredentialRow(
                        runner_id=runner_id,
                        credential_id=credential.credential_id,
                        digest=digest,
                        runner_group_id=credential.runner_group_id,
                        token_id=credential.token_id,
                        created_at=credential.created_at,
                        revoked_at=None,
                    )
                )
        except IntegrityError as exc:  # another runner claimed the id at the same moment
            raise JoinRefused(
                "bound", f"runner id {runner_id!r} was just claimed by another runner"
            ) from exc
        return credential

    # -- runner credentials ---------------------------------------------------------------

    def runner_credential_by_id(
        self, credential_id: str
    ) -> tuple[RunnerCredentialInfo, str] | None:
        """A credential (by its public id) and its digest."""
        query = select(RunnerCredentialRow).where(
            RunnerCredentialRow.credential_id == credential_id
        )
        with Session(self._engine) as session:
            row = session.scalars(query).first()
            return (row.info(), row.digest) if row is not None else None

    def runner_credentials(self, include_revoked: bool = False) -> list[RunnerCredentialInfo]:
        """Credentials in runner-id order."""
        query = select(RunnerCredentialRow).order_by(RunnerCredentialRow.runner_id)
        if not include_revoked:
            query = query.where(RunnerCredentialRow.revoked_at.is_(None))
        with Session(self._engine) as session:
            return [row.info() for row in session.scalars(query)]

    def revoke_runner(self, runner_id: str, at: datetime) -> RunnerCredentialInfo | None:
        """Mark a runner's credential revoked; the id stays bound, so nobody else takes it."""
        with Session(self._engine) as session, session.begin():
            row = session.get(RunnerCredentialRow, runner_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = at
            return row.info()


def _bound_message(runner_id: str, existing: RunnerCredentialRow) -> str:
    state = "a revoked credential" if existing.revoked_at is not None else "a credential"
    return (
        f"runner id {runner_id!r} already holds {state} ({existing.credential_id}); only that "
        "runner may register under it. A new host needs its own runner id; to re-admit this "
        f"id, create a token pinned to it (sandboxd tokens create --runner-id {runner_id})"
    )


def _repeated(existing: RunnerCredentialRow, credential: RunnerCredentialInfo, digest: str) -> bool:
    """Whether ``existing`` is ``credential`` itself, live: a join sent again."""
    return (
        existing.revoked_at is None
        and existing.credential_id == credential.credential_id
        and hmac.compare_digest(existing.digest, digest)
    )
