"""API keys, join tokens and runner credentials as the control plane uses them.

Why a cache in front of the store: every call is authenticated, and a database round trip per
call (in a worker thread) would cost more than the call. A successful lookup is kept for
``cache_seconds``; a revocation made through this control plane evicts it at once, so it takes
effect for the very next call. The expiry only bounds how long a revocation made by *another*
control plane sharing the database takes to arrive. Failed lookups are never cached (they are
rare for honest callers, and caching them would let a flood of made-up ids grow memory).

Inputs are validated here, once, for the admin API and for ``sandboxd up``'s own use; errors
name the request field (``organization``, ``ttl_seconds``...).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from sandboxd.controlplane.caller import Caller, JoiningRunner, RunnerCaller
from sandboxd.controlplane.store_errors import DB_CALL_SECONDS, store_too_slow, store_unavailable
from sandboxd.errors import (
    ApiError,
    invalid_argument,
    not_found,
    permission_denied,
    unauthenticated,
)
from sandboxd.identity.keyformat import (
    DESCRIPTIONS,
    PUBLIC_ID_PATTERN,
    ParsedSecret,
    SecretKind,
    digest,
    matches,
    mint,
    parse,
)
from sandboxd.identity.model import (
    ADMIN_ORG,
    DEFAULT_TOKEN_TTL_SECONDS,
    MAX_TOKEN_TTL_SECONDS,
    MAX_TOKEN_USES,
    RUNNER_ID_PATTERN,
    RUNNER_ID_RULE,
    ApiKeyInfo,
    JoinRefused,
    JoinTokenInfo,
    Role,
    RunnerCredentialInfo,
    key_name_problem,
    organization_problem,
)
from sandboxd.store.identity import IdentityStore

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
STALE_SECONDS = 600.0
"""While the database is down, a credential looked up within this long still authenticates.

Why: an outage must fail writes, not every call of every client and runner that was working a
moment ago. The cost: a key revoked in the database by another control plane during the
outage keeps working here until the database answers again (revocations made here take effect
at once, whatever the database does).
"""
ADMIN_KEY_FILE = "admin-key"
KEY_HINT = "set CWSANDBOX_API_KEY to a key of this control plane (sandboxd keys create)"
Info = TypeVar("Info")
R = TypeVar("R")


def utcnow() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Entry(Generic[Info]):
    info: Info
    digest: str
    fetched_at: float


class _Cache(Generic[Info]):
    """Successful lookups by public id, each for ``seconds``; ids revoked here, for good.

    The revoked set closes a race: a lookup that read the row just before a revocation could
    put the old record back after :meth:`revoke` evicted it. It holds at most one id per
    revoked key or credential.
    """

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self._seconds = seconds
        self._clock = clock
        self._entries: dict[str, _Entry[Info]] = {}
        self._revoked: set[str] = set()

    def get(self, public_id: str) -> _Entry[Info] | None:
        """A fresh entry (looked up within ``seconds``), or None."""
        entry = self._entries.get(public_id)
        if entry is not None and self._clock() - entry.fetched_at > self._seconds:
            return None
        return entry

    def stale(self, public_id: str) -> _Entry[Info] | None:
        """An entry looked up within ``STALE_SECONDS``, for when the database is down."""
        entry = self._entries.get(public_id)
        if entry is not None and self._clock() - entry.fetched_at > STALE_SECONDS:
            del self._entries[public_id]
            return None
        return entry

    def put(self, public_id: str, info: Info, stored_digest: str) -> _Entry[Info]:
        entry = _Entry(info, stored_digest, self._clock())
        self._entries[public_id] = entry
        return entry

    def revoke(self, public_id: str) -> None:
        self._revoked.add(public_id)
        self._entries.pop(public_id, None)

    def revoked_here(self, public_id: str) -> bool:
        return public_id in self._revoked


def _parse_as(bearer: str | None, what: str, *kinds: SecretKind) -> ParsedSecret:
    """The bearer secret, which must be of one of ``kinds``; ``what`` names it in errors."""
    hint = KEY_HINT if SecretKind.API_KEY in kinds else "see sandboxd tokens create"
    if not bearer or not bearer.strip():
        raise unauthenticated(f"missing {what}: {hint}")
    parsed = parse(bearer)
    if parsed is None:
        shapes = " or ".join(f"{k.value}_<16 hex digits>_<43 characters>" for k in kinds)
        raise unauthenticated(f"malformed {what}: expected {shapes}; {hint}")
    if parsed.kind not in kinds:
        article = "an" if what[0] in "aeiouAEIOU" else "a"
        raise unauthenticated(
            f"that is a {DESCRIPTIONS[parsed.kind]}, not {article} {what}; {hint}"
        )
    return parsed


class IdentityService:
    """Authenticates callers and manages their credentials, over an :class:`IdentityStore`."""

    def __init__(
        self,
        store: IdentityStore,
        *,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._keys: _Cache[ApiKeyInfo] = _Cache(cache_seconds, clock)
        self._runners: _Cache[RunnerCredentialInfo] = _Cache(cache_seconds, clock)

    async def _db(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on a worker thread; a database failure is UNAVAILABLE, never raw."""
        try:
            async with asyncio.timeout(DB_CALL_SECONDS):
                return await asyncio.shield(asyncio.to_thread(fn, *args))
        except TimeoutError:
            raise store_too_slow(fn.__name__) from None
        except SQLAlchemyError as exc:
            raise store_unavailable(exc) from None

    async def _lookup(
        self,
        cache: _Cache[Info],
        public_id: str,
        fetch: Callable[[str], tuple[Info, str] | None],
    ) -> _Entry[Info] | None:
        """The cached entry, refreshed from the database; a stale one while it is down."""
        entry = cache.get(public_id)
        if entry is not None:
            return entry
        try:
            found = await self._db(fetch, public_id)
        except ApiError:
            stale = cache.stale(public_id)
            if stale is None:
                raise
            log.warning("database down: %s authenticated from the cache", public_id)
            return stale
        return cache.put(public_id, *found) if found is not None else None

    # -- authentication -------------------------------------------------------------------

    async def authenticate_key(self, bearer: str | None) -> Caller:
        """The caller an API key stands for; UNAUTHENTICATED saying what is wrong otherwise."""
        parsed = _parse_as(bearer, "API key", SecretKind.API_KEY)
        entry = await self._lookup(self._keys, parsed.public_id, self._store.api_key)
        if entry is None or not matches(parsed, entry.digest):
            raise unauthenticated(f"API key not recognised; {KEY_HINT}")
        key = entry.info
        if key.revoked_at is not None or self._keys.revoked_here(key.key_id):
            raise unauthenticated(f"API key {key.key_id} was revoked; {KEY_HINT}")
        return Caller(key_id=key.key_id, organization=key.organization, role=key.role)

    async def authenticate_runner(
        self, bearer: str | None, *, allow_join: bool, proposed: str = ""
    ) -> RunnerCaller | JoiningRunner:
        """A runner's credential, or (only when ``allow_join``) a usable join token.

        ``proposed`` (a joining runner's own credential, see :meth:`join`) is carried along.
        """
        if allow_join:
            parsed = _parse_as(
                bearer,
                "join token or runner credential",
                SecretKind.JOIN_TOKEN,
                SecretKind.RUNNER_CREDENTIAL,
            )
        else:
            parsed = _parse_as(bearer, "runner credential", SecretKind.RUNNER_CREDENTIAL)
        if parsed.kind is SecretKind.JOIN_TOKEN:
            return JoiningRunner(await self._usable_token(parsed), proposed)
        entry = await self._lookup(
            self._runners, parsed.public_id, self._store.runner_credential_by_id
        )
        if entry is None or not matches(parsed, entry.digest):
            raise unauthenticated(
                "runner credential not recognised by this control plane; if its database was "
                "reset, delete the runner's credential file and join again with a join token"
            )
        credential = entry.info
        if credential.revoked_at is not None or self._runners.revoked_here(parsed.public_id):
            raise unauthenticated(
                f"the credential of runner {credential.runner_id!r} was revoked "
                "(sandboxd runners revoke)"
            )
        return RunnerCaller(
            runner_id=credential.runner_id,
            credential_id=credential.credential_id,
            runner_group_id=credential.runner_group_id,
        )

    async def _usable_token(self, parsed: ParsedSecret) -> JoinTokenInfo:
        found = await self._db(self._store.join_token, parsed.public_id)
        if found is None or not matches(parsed, found[1]):
            raise unauthenticated("join token not recognised by this control plane")
        token = found[0]
        problem = token.problem(utcnow())
        if problem is not None:
            raise unauthenticated(f"join token {token.token_id} {problem}")
        return token

    async def join(
        self, token: JoinTokenInfo, runner_id: str, requested_group: str, proposed: str = ""
    ) -> tuple[RunnerCredentialInfo, str]:
        """Spend a use of ``token`` and issue the credential bound to ``runner_id``.

        A token that fixes a runner group fixes it for the credential's whole life; otherwise
        the credential records no group and the runner keeps choosing its own. A runner id
        that already holds a credential is refused (PERMISSION_DENIED) unless the token is
        pinned to it. ``requested_group`` is only logged.

        ``proposed``: the credential the runner made and stored before asking (its
        ``sandboxd-proposed-credential`` metadata: a secret, so never in a message), bound
        instead of a minted one, so that a runner that dies before it hears the answer
        already holds it. A join repeating the proposal already bound to the id gets it
        again without spending a use (the store's ``join_runner``).
        """
        secret = _proposed_credential(proposed) if proposed else mint(SecretKind.RUNNER_CREDENTIAL)
        now = utcnow()
        credential = RunnerCredentialInfo(
            runner_id=runner_id,
            credential_id=secret.public_id,
            runner_group_id=token.runner_group_id,
            token_id=token.token_id,
            created_at=now,
        )
        try:
            await self._db(self._store.join_runner, token.token_id, credential, digest(secret), now)
        except JoinRefused as refused:
            if refused.kind == "token":
                raise unauthenticated(refused.message) from None
            raise permission_denied(
                refused.message, "CWSANDBOX_RUNNER_ID_TAKEN", runner_id=runner_id
            ) from None
        # Known from now on without the database: the runner's first exec dial (its first
        # use of the credential) may come during an outage.
        self._runners.put(credential.credential_id, credential, digest(secret))
        group = token.runner_group_id or requested_group
        log.info("runner %s joined with token %s (group %s)", runner_id, token.token_id, group)
        return credential, secret.text

    # -- API keys -------------------------------------------------------------------------

    async def create_key(
        self, organization: str, role: Role, name: str = ""
    ) -> tuple[ApiKeyInfo, str]:
        """A new key of ``organization`` with ``role``; returns it and its secret."""
        problem = organization_problem(organization)
        if problem:
            raise invalid_argument("organization", problem)
        problem = key_name_problem(name)
        if problem:
            raise invalid_argument("name", problem)
        secret = mint(SecretKind.API_KEY)
        key = ApiKeyInfo(secret.public_id, organization, role, name, utcnow())
        await self._db(self._store.add_api_key, key, digest(secret))
        self._keys.put(key.key_id, key, digest(secret))
        return key, secret.text

    async def list_keys(self, organization: str, include_revoked: bool) -> list[ApiKeyInfo]:
        """Keys, oldest first."""
        if organization and (problem := organization_problem(organization)):
            raise invalid_argument("organization", problem)
        return await self._db(self._store.api_keys, organization, include_revoked)

    async def revoke_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key; calls with it fail from the next one on."""
        _check_public_id("key_id", key_id, "sandboxd keys ls")
        key = await self._db(self._store.revoke_api_key, key_id, utcnow())
        if key is None:
            raise not_found("API key", key_id)
        self._keys.revoke(key_id)
        return key

    # -- join tokens ----------------------------------------------------------------------

    async def create_join_token(
        self,
        *,
        runner_group_id: str = "",
        runner_id: str = "",
        max_uses: int = 1,
        ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS,
    ) -> tuple[JoinTokenInfo, str]:
        """A new join token; returns it and its secret."""
        if not 1 <= max_uses <= MAX_TOKEN_USES:
            raise invalid_argument("max_uses", f"must be between 1 and {MAX_TOKEN_USES}")
        if not 1 <= ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
            raise invalid_argument(
                "ttl_seconds", f"must be between 1 and {MAX_TOKEN_TTL_SECONDS} seconds"
            )
        if runner_id and not RUNNER_ID_PATTERN.match(runner_id):
            raise invalid_argument("runner_id", RUNNER_ID_RULE)
        if runner_group_id and not RUNNER_ID_PATTERN.match(runner_group_id):
            raise invalid_argument("runner_group_id", RUNNER_ID_RULE)
        secret = mint(SecretKind.JOIN_TOKEN)
        now = utcnow()
        token = JoinTokenInfo(
            token_id=secret.public_id,
            runner_group_id=runner_group_id,
            runner_id=runner_id,
            max_uses=max_uses,
            uses=0,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        await self._db(self._store.add_join_token, token, digest(secret))
        return token, secret.text

    async def list_join_tokens(self, include_spent: bool) -> list[JoinTokenInfo]:
        """Tokens, oldest first; only usable ones unless ``include_spent``."""
        return await self._db(self._store.join_tokens, utcnow(), include_spent)

    async def revoke_join_token(self, token_id: str) -> JoinTokenInfo:
        """Revoke a token; runners that already joined with it keep their credentials."""
        _check_public_id("token_id", token_id, "sandboxd tokens ls")
        token = await self._db(self._store.revoke_join_token, token_id, utcnow())
        if token is None:
            raise not_found("join token", token_id)
        return token

    # -- runner credentials ---------------------------------------------------------------

    async def list_runner_credentials(self, include_revoked: bool) -> list[RunnerCredentialInfo]:
        """Credentials in runner-id order."""
        return await self._db(self._store.runner_credentials, include_revoked)

    async def revoke_runner(self, runner_id: str) -> RunnerCredentialInfo:
        """Revoke a runner's credential; its next call (and every later one) is refused."""
        if not RUNNER_ID_PATTERN.match(runner_id):
            raise invalid_argument("runner_id", RUNNER_ID_RULE)
        credential = await self._db(self._store.revoke_runner, runner_id, utcnow())
        if credential is None:
            raise not_found("runner credential", runner_id, reason="CWSANDBOX_RUNNER_NOT_FOUND")
        self._runners.revoke(credential.credential_id)
        return credential

    # -- the first administrator key ------------------------------------------------------

    def ensure_admin_key(self, data_dir: Path) -> str:
        """The administrator key in ``<data_dir>/admin-key`` (0600), created when needed.

        Called once at start-up, before serving. A key file whose key this database does not
        know, or knows as revoked, is replaced with a new key (with a warning): whoever can
        read the data directory can read the database too, so the file is no weaker.
        """
        path = data_dir / ADMIN_KEY_FILE
        existing = path.read_text().strip() if path.exists() else ""
        parsed = parse(existing) if existing else None
        if parsed is not None and parsed.kind is SecretKind.API_KEY:
            found = self._store.api_key(parsed.public_id)
            if found is not None and matches(parsed, found[1]) and found[0].revoked_at is None:
                path.chmod(0o600)
                return parsed.text
        if existing:
            log.warning("%s holds no valid key of this database; creating a new one", path)
        secret = mint(SecretKind.API_KEY)
        key = ApiKeyInfo(
            secret.public_id, ADMIN_ORG, Role.ADMIN, "first administrator key", utcnow()
        )
        self._store.add_api_key(key, digest(secret))
        write_secret_file(path, secret.text)
        return secret.text


def _check_public_id(field: str, value: str, listing: str) -> None:
    if not PUBLIC_ID_PATTERN.match(value):
        raise invalid_argument(
            field, f"must be 16 hex digits as shown by {listing} (got {value!r})"
        )


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp creates the file 0600
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


PROPOSED_CREDENTIAL_HEADER = "sandboxd-proposed-credential"
"""The metadata in which a joining runner proposes its own credential (see ``join``)."""


def _proposed_credential(text: str) -> ParsedSecret:
    """A runner's proposed credential, if it is a well-formed one (INVALID_ARGUMENT if not)."""
    parsed = parse(text)
    if parsed is None or parsed.kind is not SecretKind.RUNNER_CREDENTIAL:
        raise invalid_argument(
            PROPOSED_CREDENTIAL_HEADER,
            "must be a runner credential, sbxr_<16 hex digits>_<43 characters>",
        )
    return parsed
