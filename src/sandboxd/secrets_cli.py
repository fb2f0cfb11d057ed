"""``sandboxd secrets``: an organization's secret stores and their values.

Why a value is read from standard input and never from an argument: arguments show in
``ps`` and in shell history. Commands act on the organization of ``$CWSANDBOX_API_KEY``;
creating or deleting a store and setting or removing values need an ``admin`` key of that
organization, listing works with any of its keys. No command ever prints a value.
"""

from __future__ import annotations

import sys

import click

from sandboxd.admin_cli import (
    AdminError,
    _call,
    _connection_options,
    _print,
    _when,
)
from sandboxd.secrets.rules import (
    MAX_VALUE_BYTES,
    field_problem,
    secret_name_problem,
    store_name_problem,
)
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import secrets_pb2

__all__ = ["secrets_group"]

STORES = "/coreweave.sandbox.v1beta2.SecretStoreService/"


def _checked(problem_of: object) -> object:
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        problem = problem_of(value)  # type: ignore[operator]
        if problem:
            raise click.BadParameter(problem)
        return value

    return check


_store_arg = click.argument("store", callback=_checked(store_name_problem))
_field_opt = click.option(
    "--field", default="", callback=_checked(field_problem), help="One field of the secret."
)


@click.group("secrets")
def secrets_group() -> None:
    """Secret stores of your organization; sandboxes get their values as env variables."""


@secrets_group.command("stores")
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def stores_ls(ctx: click.Context, as_json: bool) -> None:
    """List the organization's stores."""
    rows, token = [], ""
    while True:
        request = secrets_pb2.ListSecretStoresRequest(page_size=100, page_token=token)
        page = _call(ctx, "ListSecretStores", request, secrets_pb2.ListSecretStoresResponse, STORES)
        rows += [
            {"name": s.name, "organization": s.organization_id, "id": s.id,
             "updated_at": _when(s.updated_at, s.HasField("updated_at"))}
            for s in page.secret_stores
        ]  # fmt: skip
        token = page.next_page_token
        if not token:
            break
    _print(rows, as_json, ["name", "organization", "id", "updated_at"])


@secrets_group.command("create-store")
@_connection_options
@_store_arg
@click.pass_context
def store_create(ctx: click.Context, store: str) -> None:
    """Create an empty store (admin key)."""
    request = secrets_pb2.CreateSecretStoreRequest(name=store)
    made = _call(ctx, "CreateSecretStore", request, secrets_pb2.CreateSecretStoreResponse, STORES)
    click.echo(f"created secret store {made.secret_store.name!r} ({made.secret_store.id})")


@secrets_group.command("delete-store")
@_connection_options
@_store_arg
@click.pass_context
def store_delete(ctx: click.Context, store: str) -> None:
    """Delete a store and every value in it (admin key)."""
    request = secrets_pb2.DeleteSecretStoreRequest(name=store)
    _call(ctx, "DeleteSecretStore", request, secrets_pb2.DeleteSecretStoreResponse, STORES)
    click.echo(f"deleted secret store {store!r}")


@secrets_group.command("put")
@_connection_options
@_store_arg
@click.argument("name", callback=_checked(secret_name_problem))
@_field_opt
@click.pass_context
def secret_put(ctx: click.Context, store: str, name: str, field: str) -> None:
    """Set a secret to what standard input holds (admin key); one trailing newline is dropped."""
    value = sys.stdin.buffer.read(MAX_VALUE_BYTES + 2)
    if value.endswith(b"\n"):
        value = value[:-1]
    if len(value) > MAX_VALUE_BYTES:
        raise AdminError(f"the value is more than {MAX_VALUE_BYTES} bytes")
    request = admin_pb2.PutSecretRequest(store_name=store, name=name, field=field, value=value)
    entry = _call(ctx, "PutSecret", request, admin_pb2.PutSecretResponse).secret
    what = f"{entry.name}" + (f" field {entry.field}" if entry.field else "")
    click.echo(f"set {what} in {entry.store_name!r} ({entry.size_bytes} bytes)")


@secrets_group.command("rm")
@_connection_options
@_store_arg
@click.argument("name", callback=_checked(secret_name_problem))
@_field_opt
@click.pass_context
def secret_rm(ctx: click.Context, store: str, name: str, field: str) -> None:
    """Remove one secret value (admin key)."""
    request = admin_pb2.DeleteSecretRequest(store_name=store, name=name, field=field)
    _call(ctx, "DeleteSecret", request, admin_pb2.DeleteSecretResponse)
    click.echo(f"removed {name}" + (f" field {field}" if field else "") + f" from {store!r}")


@secrets_group.command("ls")
@_connection_options
@_store_arg
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def secret_ls(ctx: click.Context, store: str, as_json: bool) -> None:
    """List a store's secrets: names, fields and sizes, never values (admin key)."""
    request = admin_pb2.ListSecretsRequest(store_name=store)
    entries = _call(ctx, "ListSecrets", request, admin_pb2.ListSecretsResponse).secrets
    rows = [
        {"name": e.name, "field": e.field, "size_bytes": e.size_bytes,
         "updated_at": _when(e.updated_at, e.HasField("updated_at"))}
        for e in entries
    ]  # fmt: skip
    _print(rows, as_json, ["name", "field", "size_bytes", "updated_at"])
