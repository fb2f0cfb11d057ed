"""``coreweave.sandbox.v1beta2.SecretStoreService``: an organization's secret stores.

Who may do what (``shared/protocol/admin-model.md`` §3: ``SANDBOX_ADMIN`` manages the
organization's configuration, ``SANDBOX_USER`` reads it and creates sandboxes): any key of
an organization may get and list its stores and use them at Start; only a key of role
``admin`` may create or delete one (and set values, in ``AdminService``). Every call acts on
the caller's own organization, so another organization's store answers exactly like a
store that does not exist.

Providers: sandboxd keeps the values itself, encrypted in its database. A store is created
with ``provider_type`` UNSPECIFIED (the built-in store); ``SECRET_STORE_PROVIDER_TYPE_WANDB``
would fetch values from Weights & Biases, which this server does not do, so it answers
UNIMPLEMENTED naming the field instead of creating a store that could never resolve.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from sandboxd.controlplane.caller import Caller, current_caller
from sandboxd.controlplane.pagination import (
    decode_token,
    encode_token,
    filter_fingerprint,
    page_size_of,
)
from sandboxd.controlplane.secrets import Secrets
from sandboxd.controlplane.start_request import not_implemented
from sandboxd.errors import ApiError, abort_with, invalid_argument, permission_denied
from sandboxd.store.secret_store import SecretStoreInfo
from sandboxd_protocol.v1beta2 import secrets_pb2, secrets_pb2_grpc

__all__ = ["SecretStoreService", "require_admin", "store_message"]

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
P = secrets_pb2


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def store_message(info: SecretStoreInfo) -> secrets_pb2.SecretStore:
    """The wire form of a store (it carries no value)."""
    return secrets_pb2.SecretStore(
        id=info.store_id,
        organization_id=info.organization,
        name=info.name,
        provider_type=info.provider_type,  # type: ignore[arg-type]
        created_at=_stamp(info.created_at),
        updated_at=_stamp(info.updated_at),
    )


def require_admin(caller: Caller, what: str) -> None:
    """Refuse a member key: managing stores and values is for the organization's admins."""
    if not caller.is_admin:
        raise permission_denied(
            f"{what} needs an API key of role admin; key {caller.key_id} is a "
            f"{caller.role.value} key of {caller.organization!r}",
            "CWSANDBOX_ADMIN_ROLE_REQUIRED",
            key_id=caller.key_id,
        )


def _provider(request: secrets_pb2.CreateSecretStoreRequest) -> int:
    if request.provider_type == P.SECRET_STORE_PROVIDER_TYPE_WANDB:
        raise not_implemented(
            "provider_type",
            "W&B secret stores (sandboxd keeps values itself: use "
            "SECRET_STORE_PROVIDER_TYPE_UNSPECIFIED and `sandboxd secrets put`)",
        )
    if request.provider_type != P.SECRET_STORE_PROVIDER_TYPE_UNSPECIFIED:
        raise invalid_argument(
            "provider_type", f"unknown provider type {int(request.provider_type)}"
        )
    if request.HasField("wandb"):
        raise invalid_argument("wandb", "is only for SECRET_STORE_PROVIDER_TYPE_WANDB stores")
    return int(request.provider_type)


class SecretStoreService(secrets_pb2_grpc.SecretStoreServiceServicer):
    """The public store RPCs over :class:`Secrets`, scoped to the caller's organization."""

    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets

    async def _run(self, context: Context, work: Callable[[], Awaitable[R]]) -> R:
        try:
            return await work()
        except ApiError as error:
            await abort_with(context, error)
        except Exception:  # a bug of ours: log it, answer INTERNAL, keep serving
            log.exception("secret store call failed")
            await abort_with(
                context, ApiError(grpc.StatusCode.INTERNAL, "internal error in sandboxd")
            )

    async def CreateSecretStore(
        self, request: secrets_pb2.CreateSecretStoreRequest, context: Context
    ) -> secrets_pb2.CreateSecretStoreResponse:
        """A new empty store of the caller's organization (admins only)."""

        async def work() -> secrets_pb2.CreateSecretStoreResponse:
            caller = current_caller()
            require_admin(caller, "CreateSecretStore")
            provider = _provider(request)
            info = await self._secrets.create_store(caller.organization, request.name, provider)
            log.info("secret store %r created for %s", info.name, info.organization)
            return P.CreateSecretStoreResponse(secret_store=store_message(info))

        return await self._run(context, work)

    async def GetSecretStore(
        self, request: secrets_pb2.GetSecretStoreRequest, context: Context
    ) -> secrets_pb2.GetSecretStoreResponse:
        """One store of the caller's organization."""

        async def work() -> secrets_pb2.GetSecretStoreResponse:
            info = await self._secrets.get_store(current_caller().organization, request.name)
            return P.GetSecretStoreResponse(secret_store=store_message(info))

        return await self._run(context, work)

    async def ListSecretStores(
        self, request: secrets_pb2.ListSecretStoresRequest, context: Context
    ) -> secrets_pb2.ListSecretStoresResponse:
        """The caller's organization's stores in name order, a page at a time."""

        async def work() -> secrets_pb2.ListSecretStoresResponse:
            organization = current_caller().organization
            size = page_size_of(request.page_size)
            fingerprint = filter_fingerprint(["secret_stores", organization])
            after = decode_token(request.page_token, fingerprint)
            found = await self._secrets.list_stores(organization, after, size + 1)
            page = found[:size]
            token = encode_token(page[-1].name, fingerprint) if len(found) > size else ""
            return P.ListSecretStoresResponse(
                secret_stores=[store_message(info) for info in page], next_page_token=token
            )

        return await self._run(context, work)

    async def DeleteSecretStore(
        self, request: secrets_pb2.DeleteSecretStoreRequest, context: Context
    ) -> secrets_pb2.DeleteSecretStoreResponse:
        """Remove a store and every value in it (admins only).

        Sandboxes already running keep the values they started with; one that is started
        again later (after its runner lost it before it ran) fails, naming the secret.
        """

        async def work() -> secrets_pb2.DeleteSecretStoreResponse:
            caller = current_caller()
            require_admin(caller, "DeleteSecretStore")
            await self._secrets.delete_store(caller.organization, request.name)
            log.info("secret store %r of %s deleted", request.name, caller.organization)
            return P.DeleteSecretStoreResponse()

        return await self._run(context, work)
