"""The secret-value RPCs of ``sandboxd.admin.v1.AdminService``: put, delete, list.

Why in the admin API: the public protocol has no RPC that carries a value (its stores are
fronts for an external provider), and setting one is configuration, which
``admin-model.md`` leaves to administrators. The interceptor lets only ``admin`` keys reach
these, and each acts on the caller's own organization, like ``SecretStoreService``. A value
goes in once and never comes back out: listings carry names, fields and sizes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from sandboxd.controlplane.caller import current_caller
from sandboxd.controlplane.secrets import Secrets
from sandboxd.errors import ApiError
from sandboxd.store.secret_store import SecretEntryInfo, SecretKey
from sandboxd_protocol.sandboxd_v1 import admin_pb2

__all__ = ["SecretAdmin", "entry_message"]

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")


def entry_message(entry: SecretEntryInfo) -> admin_pb2.SecretEntry:
    """The wire form of a listed value: never the value."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(entry.updated_at)
    return admin_pb2.SecretEntry(
        store_name=entry.store_name,
        name=entry.name,
        field=entry.field,
        size_bytes=entry.size_bytes,
        updated_at=stamp,
    )


class SecretAdmin:
    """Mixed into ``AdminService``: the three secret-value RPCs."""

    _secrets: Secrets | None

    async def _run(self, context: Context, work: Callable[[], Awaitable[R]]) -> R:
        raise NotImplementedError  # AdminService's

    def _require_secrets(self) -> Secrets:
        if self._secrets is None:
            raise ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                "this control plane has no secret stores",
                reason="CWSANDBOX_NOT_IMPLEMENTED",
            )
        return self._secrets

    async def PutSecret(
        self, request: admin_pb2.PutSecretRequest, context: Context
    ) -> admin_pb2.PutSecretResponse:
        """Set one value of a store of the caller's organization (encrypted at rest)."""

        async def work() -> admin_pb2.PutSecretResponse:
            organization = current_caller().organization
            key = SecretKey(request.store_name, request.name, request.field)
            entry = await self._require_secrets().put(organization, key, request.value)
            log.info(
                "secret %r (field %r) of store %r of %s set (%d bytes)",
                key.name, key.field, key.store_name, organization, entry.size_bytes,
            )  # fmt: skip
            return admin_pb2.PutSecretResponse(secret=entry_message(entry))

        return await self._run(context, work)

    async def DeleteSecret(
        self, request: admin_pb2.DeleteSecretRequest, context: Context
    ) -> admin_pb2.DeleteSecretResponse:
        """Remove one value of a store of the caller's organization."""

        async def work() -> admin_pb2.DeleteSecretResponse:
            organization = current_caller().organization
            key = SecretKey(request.store_name, request.name, request.field)
            await self._require_secrets().delete(organization, key)
            return admin_pb2.DeleteSecretResponse()

        return await self._run(context, work)

    async def ListSecrets(
        self, request: admin_pb2.ListSecretsRequest, context: Context
    ) -> admin_pb2.ListSecretsResponse:
        """Names, fields and sizes of one store's values."""

        async def work() -> admin_pb2.ListSecretsResponse:
            organization = current_caller().organization
            entries = await self._require_secrets().list_values(organization, request.store_name)
            return admin_pb2.ListSecretsResponse(secrets=[entry_message(e) for e in entries])

        return await self._run(context, work)
