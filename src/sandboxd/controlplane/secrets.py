"""The control plane's secret stores: CRUD, values in and out of encryption, resolution.

Why one class between the APIs and the database: the public ``SecretStoreService``, the
admin ``PutSecret``/``DeleteSecret``/``ListSecrets`` RPCs, Start (which checks references)
and the reconciler (which resolves them into each start command it sends) must all apply the
same organization scoping, the same bounds and the same encryption. A plaintext value exists
only here, on its way in (encrypted before it is written) or out (decrypted into a start
command for the runner); no log line, error message or read API ever carries one.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sqlalchemy.exc import SQLAlchemyError

from sandboxd.controlplane.sandbox_model import now
from sandboxd.controlplane.secret_refs import SecretUse
from sandboxd.controlplane.store_errors import DB_CALL_SECONDS, store_too_slow, store_unavailable
from sandboxd.errors import ApiError, invalid_argument
from sandboxd.secrets.cipher import KeyProblem, SecretCipher, load_or_create_key
from sandboxd.secrets.rules import (
    MAX_SECRETS_PER_STORE,
    MAX_STORES_PER_ORGANIZATION,
    field_problem,
    secret_name_problem,
    store_name_problem,
    value_problem,
)
from sandboxd.store.secret_store import (
    SecretEntryInfo,
    SecretKey,
    SecretStoreInfo,
    SecretStores,
    StoreFull,
    StoreNameTaken,
)
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["Secrets", "open_secrets", "secret_store_not_found"]

R = TypeVar("R")


def secret_store_not_found(name: str) -> ApiError:
    """No store of this name in the caller's organization (another's looks just the same)."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"secret store {name!r} not found",
        reason="CWSANDBOX_SECRET_STORE_NOT_FOUND",
        metadata={"store_name": name},
    )


def _secret_not_found(key: SecretKey, field_path: str) -> ApiError:
    what = f"secret {key.name!r}" + (f" (field {key.field!r})" if key.field else "")
    return invalid_argument(field_path, f"{what} not found in secret store {key.store_name!r}")


def _limit(error: StoreFull) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"at most {error.limit} {error.what}; delete one first",
        reason="CWSANDBOX_SECRET_LIMIT_EXCEEDED",
        metadata={"limit": str(error.limit), "what": error.what},
    )


def check_key(key: SecretKey, prefix: str = "") -> None:
    """Refuse a malformed store, secret or field name, naming the field."""
    for field_path, problem in (
        (f"{prefix}store_name", store_name_problem(key.store_name)),
        (f"{prefix}name", secret_name_problem(key.name)),
        (f"{prefix}field", field_problem(key.field)),
    ):
        if problem:
            raise invalid_argument(field_path, problem)


class Secrets:
    """Secret stores of every organization, over :class:`SecretStores` and one key."""

    def __init__(self, store: SecretStores, cipher: SecretCipher) -> None:
        self._store = store
        self._cipher = cipher

    async def _db(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on a worker thread; a database failure is UNAVAILABLE, never raw."""
        try:
            async with asyncio.timeout(DB_CALL_SECONDS):
                return await asyncio.shield(asyncio.to_thread(fn, *args))
        except TimeoutError:
            raise store_too_slow(getattr(fn, "__name__", "secrets")) from None
        except SQLAlchemyError as exc:
            raise store_unavailable(exc) from None

    # -- stores ------------------------------------------------------------------------------

    async def create_store(
        self, organization: str, name: str, provider_type: int
    ) -> SecretStoreInfo:
        """A new empty store of ``organization``."""
        if problem := store_name_problem(name):
            raise invalid_argument("name", problem)
        at = now()
        info = SecretStoreInfo(uuid.uuid4().hex, organization, name, provider_type, at, at)
        try:
            return await self._db(self._store.create_store, info, MAX_STORES_PER_ORGANIZATION)
        except StoreNameTaken:
            raise ApiError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"secret store {name!r} already exists",
                reason="CWSANDBOX_SECRET_STORE_EXISTS",
                metadata={"store_name": name},
            ) from None
        except StoreFull as full:
            raise _limit(full) from None

    async def get_store(self, organization: str, name: str) -> SecretStoreInfo:
        """The organization's store of this name, else NOT_FOUND."""
        if problem := store_name_problem(name):
            raise invalid_argument("name", problem)
        found = await self._db(self._store.get_store, organization, name)
        if found is None:
            raise secret_store_not_found(name)
        return found

    async def list_stores(self, organization: str, after: str, limit: int) -> list[SecretStoreInfo]:
        """Up to ``limit`` stores after the name ``after``, in name order."""
        return await self._db(self._store.list_stores, organization, after, limit)

    async def delete_store(self, organization: str, name: str) -> None:
        """Remove a store and its values, else NOT_FOUND."""
        if problem := store_name_problem(name):
            raise invalid_argument("name", problem)
        if not await self._db(self._store.delete_store, organization, name):
            raise secret_store_not_found(name)

    # -- values ------------------------------------------------------------------------------

    async def put(self, organization: str, key: SecretKey, value: bytes) -> SecretEntryInfo:
        """Set one value (encrypted before it is written)."""
        check_key(key)
        if problem := value_problem(value):
            raise invalid_argument("value", problem)

        def seal(bound_to: str) -> bytes:
            return self._cipher.encrypt(value, bound_to)

        try:
            entry = await self._db(
                functools.partial(
                    self._store.put_value,
                    organization,
                    key,
                    seal,
                    size_bytes=len(value),
                    at=now(),
                    max_per_store=MAX_SECRETS_PER_STORE,
                )
            )
        except StoreFull as full:
            raise _limit(full) from None
        if entry is None:
            raise secret_store_not_found(key.store_name)
        return entry

    async def delete(self, organization: str, key: SecretKey) -> None:
        """Remove one value, else NOT_FOUND."""
        check_key(key)
        if not await self._db(self._store.delete_value, organization, key):
            what = f"secret {key.name!r}" + (f" (field {key.field!r})" if key.field else "")
            raise ApiError(
                grpc.StatusCode.NOT_FOUND,
                f"{what} not found in secret store {key.store_name!r}",
                reason="CWSANDBOX_SECRET_NOT_FOUND",
                metadata={"store_name": key.store_name, "name": key.name, "field": key.field},
            )

    async def list_values(self, organization: str, store_name: str) -> list[SecretEntryInfo]:
        """The values of one store, without them, else NOT_FOUND."""
        if problem := store_name_problem(store_name):
            raise invalid_argument("store_name", problem)
        entries = await self._db(self._store.list_values, organization, store_name)
        if entries is None:
            raise secret_store_not_found(store_name)
        return entries

    # -- sandboxes ---------------------------------------------------------------------------

    async def check(self, organization: str, uses: Sequence[SecretUse]) -> None:
        """Refuse a Start whose references name a missing store or value.

        A store of another organization is missing like any other. The answer names the
        request field: the store's name when the store is missing, else the mapping's path.
        """
        found = await self._db(self._store.fetch_values, organization, [u.key for u in uses])
        for use in uses:
            if use.key in found:
                continue
            store = await self._db(self._store.get_store, organization, use.key.store_name)
            if store is None:
                raise invalid_argument(
                    use.store_field, f"secret store {use.key.store_name!r} not found"
                )
            raise _secret_not_found(use.key, f"{use.field_path}.path")

    async def resolve(
        self, organization: str, references: Iterable[runner_pb2.SecretReference]
    ) -> list[runner_pb2.SecretEnv]:
        """The values for a start command, read and decrypted now (never cached).

        A value deleted since the sandbox was recorded fails its start: FAILED_PRECONDITION
        naming the secret, never its value.
        """
        refs = list(references)
        keys = [SecretKey(r.store_name, r.name, r.field) for r in refs]
        found = await self._db(self._store.fetch_values, organization, keys)
        resolved: list[runner_pb2.SecretEnv] = []
        for ref, key in zip(refs, keys, strict=True):
            if key not in found:
                what = f"secret {key.name!r}" + (f" (field {key.field!r})" if key.field else "")
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{what} of secret store {key.store_name!r} no longer exists",
                    reason="CWSANDBOX_SECRET_NOT_FOUND",
                    metadata={"store_name": key.store_name, "name": key.name},
                )
            bound, blob = found[key]
            try:
                value = self._cipher.decrypt(blob, bound)
            except KeyProblem as problem:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, str(problem)) from None
            resolved.append(runner_pb2.SecretEnv(env_var=ref.env_var, value=value))
        return resolved


def open_secrets(store: SecretStores, data_dir: Path) -> Secrets:
    """The secrets of this database with the key in ``data_dir``; KeyProblem if unusable.

    The key is created on first start; an existing one must decrypt what is stored, so a
    wrong key is refused now rather than at some sandbox's start.
    """
    key = load_or_create_key(data_dir, store.count_values())
    cipher = SecretCipher(key)
    sample = store.sample_value()
    if sample is not None:
        bound, blob = sample
        try:
            cipher.decrypt(blob, bound)
        except KeyProblem:
            raise KeyProblem(
                f"{data_dir / 'secrets.key'} does not decrypt the secret values in the "
                "database: it is not the key that stored them (restore the right key file)"
            ) from None
    return Secrets(store, cipher)
