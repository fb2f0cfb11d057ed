"""The ``secret_stores`` of a Start (v1beta2) or a container (v1), validated into references.

Why references and not values: the sandbox's record (kept for reconciliation, in the
database) holds the :class:`SecretUse` list as ``SandboxSpec.secret_references``; the
values are read and decrypted only when a start command goes to a runner
(``Secrets.resolve``), so a record, a dump or a log line never carries one.

Field paths in errors follow the request: ``secret_stores[1].secrets[0].env_var`` for
v1beta2, ``sandbox.spec.containers[0].secret_stores[1]...`` for v1 (both protocols give a
reference the same shape: a store name and mappings of path, field and variable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sandboxd.errors import invalid_argument
from sandboxd.secrets.rules import (
    MAX_SECRETS_PER_START,
    env_var_problem,
    field_problem,
    secret_name_problem,
    store_name_problem,
)
from sandboxd.store.secret_store import SecretKey
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["SecretUse", "parse_secret_stores", "references"]


class _Mapping(Protocol):
    path: str
    field: str
    env_var: str


class _Reference(Protocol):
    store_name: str

    @property
    def secrets(self) -> Sequence[_Mapping]: ...


@dataclass(frozen=True)
class SecretUse:
    """One secret a sandbox asked for, and the request field that named it."""

    key: SecretKey
    env_var: str
    field_path: str  # the mapping, e.g. "secret_stores[0].secrets[2]"
    store_field: str  # its store's name, e.g. "secret_stores[0].store_name"


def parse_secret_stores(
    stores: Sequence[_Reference], environment: Mapping[str, str], at: str = "secret_stores"
) -> tuple[SecretUse, ...]:
    """Validate every reference; the first bad one is INVALID_ARGUMENT naming its field.

    ``env_var`` defaults to the secret's name (as the official client documents). Two
    sources for one variable (two secrets, or a secret and ``environment_variables``) are
    refused (admin-model.md §6). ``at`` is the field path of ``stores`` in the request.
    """
    uses: list[SecretUse] = []
    taken: dict[str, str] = {name: "environment_variables" for name in environment}
    total = sum(len(ref.secrets) for ref in stores)
    if total > MAX_SECRETS_PER_START:
        raise invalid_argument(at, f"asks for {total} secrets; at most {MAX_SECRETS_PER_START}")
    for i, ref in enumerate(stores):
        store = f"{at}[{i}]"
        if problem := store_name_problem(ref.store_name):
            raise invalid_argument(f"{store}.store_name", problem)
        if not ref.secrets:
            raise invalid_argument(f"{store}.secrets", "must name at least one secret")
        for j, mapping in enumerate(ref.secrets):
            field_at = f"{store}.secrets[{j}]"
            if problem := secret_name_problem(mapping.path):
                raise invalid_argument(f"{field_at}.path", problem)
            if problem := field_problem(mapping.field):
                raise invalid_argument(f"{field_at}.field", problem)
            env_var = mapping.env_var or mapping.path
            if problem := env_var_problem(env_var):
                hint = "" if mapping.env_var else " (it defaults to the path; set env_var)"
                raise invalid_argument(f"{field_at}.env_var", problem + hint)
            if env_var in taken:
                raise invalid_argument(
                    f"{field_at}.env_var", f"{env_var!r} is already set by {taken[env_var]}"
                )
            taken[env_var] = field_at
            key = SecretKey(ref.store_name, mapping.path, mapping.field)
            uses.append(SecretUse(key, env_var, field_at, f"{store}.store_name"))
    return tuple(uses)


def references(uses: tuple[SecretUse, ...]) -> list[runner_pb2.SecretReference]:
    """What the sandbox's spec keeps: where each value is, never the value."""
    return [
        runner_pb2.SecretReference(
            store_name=use.key.store_name,
            name=use.key.name,
            field=use.key.field,
            env_var=use.env_var,
        )
        for use in uses
    ]
