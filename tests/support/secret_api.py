"""Raw calls of ``SecretStoreService`` and of the admin secret RPCs, for wire-level tests."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import secrets_pb2 as sp

STORE_SERVICE = "/coreweave.sandbox.v1beta2.SecretStoreService/"
ADMIN_SERVICE = "/sandboxd.admin.v1.AdminService/"


def marker() -> bytes:
    """A secret value no other test (or file on this machine) contains."""
    return f"sbx-secret-{secrets.token_hex(12)}".encode()


class SecretsApi:
    """Store and value RPCs on one channel (whose calls carry some API key)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def _call(self, path: str, request: Message, response_type: type[Message]) -> Any:
        rpc = self.channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return rpc(request, timeout=30)

    def raw(self, method: str, request: Message) -> bytes:
        """A store RPC's response bytes as they came over the wire."""
        rpc = self.channel.unary_unary(
            STORE_SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=lambda raw: raw,
        )
        return bytes(rpc(request, timeout=30))

    def create(self, name: str, **fields: Any) -> sp.SecretStore:
        request = sp.CreateSecretStoreRequest(name=name, **fields)
        response = self._call(
            STORE_SERVICE + "CreateSecretStore", request, sp.CreateSecretStoreResponse
        )
        return response.secret_store

    def get(self, name: str) -> sp.SecretStore:
        request = sp.GetSecretStoreRequest(name=name)
        return self._call(
            STORE_SERVICE + "GetSecretStore", request, sp.GetSecretStoreResponse
        ).secret_store

    def list(self, page_size: int = 0, page_token: str = "") -> sp.ListSecretStoresResponse:
        request = sp.ListSecretStoresRequest(page_size=page_size, page_token=page_token)
        return self._call(STORE_SERVICE + "ListSecretStores", request, sp.ListSecretStoresResponse)

    def names(self) -> list[str]:
        """Every store name, following the pages."""
        names: list[str] = []
        token = ""
        while True:
            page = self.list(page_size=7, page_token=token)
            names += [store.name for store in page.secret_stores]
            token = page.next_page_token
            if not token:
                return names

    def delete(self, name: str) -> None:
        request = sp.DeleteSecretStoreRequest(name=name)
        self._call(STORE_SERVICE + "DeleteSecretStore", request, sp.DeleteSecretStoreResponse)

    def put(self, store: str, name: str, value: bytes, field: str = "") -> admin_pb2.SecretEntry:
        request = admin_pb2.PutSecretRequest(store_name=store, name=name, field=field, value=value)
        return self._call(ADMIN_SERVICE + "PutSecret", request, admin_pb2.PutSecretResponse).secret

    def delete_value(self, store: str, name: str, field: str = "") -> None:
        request = admin_pb2.DeleteSecretRequest(store_name=store, name=name, field=field)
        self._call(ADMIN_SERVICE + "DeleteSecret", request, admin_pb2.DeleteSecretResponse)

    def values(self, store: str) -> list[admin_pb2.SecretEntry]:
        request = admin_pb2.ListSecretsRequest(store_name=store)
        return list(
            self._call(
                ADMIN_SERVICE + "ListSecrets", request, admin_pb2.ListSecretsResponse
            ).secrets
        )


def error_of(call: Any) -> grpc.RpcError:
    """The RpcError ``call()`` raises (it must raise one)."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call succeeded")


def status_of(error: grpc.RpcError) -> tuple[str, str, dict[str, str], list[str]]:
    """(code, message, ErrorInfo reason and metadata folded, BadRequest fields)."""
    reason, metadata, fields = "", {}, []
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                fields = [v.field for v in bad.field_violations]
    metadata = {"reason": reason, **metadata}
    return error.code().name, error.details() or "", metadata, fields


def encodings(value: bytes) -> list[bytes]:
    """The forms a leaked value would take in a file, a dump or a log: raw, hex, base64."""
    return [
        value,
        value.hex().encode(),
        value.hex().upper().encode(),
        base64.b64encode(value).rstrip(b"="),
    ]


def files_containing(
    root: Path, values: Iterable[bytes], skip: Callable[[Path], bool] = lambda _p: False
) -> list[str]:
    """Files under ``root`` that hold any of ``values`` in any of its :func:`encodings`.

    ``skip``: files not to read (e.g. multi-GiB sparse disk images).
    """
    needles = [form for value in values for form in encodings(value)]
    hits: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not skip(p)):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if any(needle in data for needle in needles):
            hits.append(str(path))
    return hits
