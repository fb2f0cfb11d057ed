"""Names and bounds of secret stores, checked before anything is stored or started.

Why bounds: every value is held in the database, decrypted at each start and carried in the
start command to a runner, so an organization must not be able to grow any of them without
limit (DESIGN.md rule 10). The numbers are generous for credentials (API keys, tokens,
certificates) and small next to a database row or a gRPC message.
"""

from __future__ import annotations

import re

__all__ = [
    "ENV_VAR_PATTERN",
    "MAX_SECRETS_PER_START",
    "MAX_SECRETS_PER_STORE",
    "MAX_STORES_PER_ORGANIZATION",
    "MAX_VALUE_BYTES",
    "env_var_problem",
    "field_problem",
    "secret_name_problem",
    "store_name_problem",
    "value_problem",
]

MAX_VALUE_BYTES = 64 * 1024
MAX_SECRETS_PER_STORE = 200  # values (name and field pairs) in one store
MAX_STORES_PER_ORGANIZATION = 50
MAX_SECRETS_PER_START = 100  # environment variables from secrets in one Start

STORE_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?\Z")
SECRET_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9._-])?\Z")
FIELD_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}\Z")
ENV_VAR_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}\Z")


def store_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a store, or None."""
    if not name:
        return "must not be empty"
    if not STORE_NAME_PATTERN.match(name):
        return (
            "must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending "
            f"with a letter or digit (got {name[:80]!r})"
        )
    return None


def secret_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a secret in a store, or None."""
    if not name:
        return "must not be empty"
    if not SECRET_NAME_PATTERN.match(name) or "//" in name or ".." in name.split("/"):
        return (
            "must be 1-253 letters, digits, '_', '.', '-' or '/' (no empty or '..' segment), "
            f"starting with a letter, digit or '_' (got {name[:80]!r})"
        )
    return None


def field_problem(field: str) -> str | None:
    """Why ``field`` cannot name a field of a secret ("" is the secret's own value)."""
    if field and not FIELD_PATTERN.match(field):
        return (
            "must be empty or 1-63 letters, digits, '_', '.' or '-', starting with a letter, "
            f"digit or '_' (got {field[:80]!r})"
        )
    return None


def env_var_problem(name: str) -> str | None:
    """Why ``name`` cannot be an environment variable of a sandbox, or None."""
    if not ENV_VAR_PATTERN.match(name):
        return (
            f"must be 1-255 letters, digits or '_', not starting with a digit (got {name[:80]!r})"
        )
    return None


def value_problem(value: bytes) -> str | None:
    """Why ``value`` cannot be a secret's value; never quotes the value itself."""
    if len(value) > MAX_VALUE_BYTES:
        return f"is {len(value)} bytes, more than the {MAX_VALUE_BYTES} a secret may hold"
    if b"\x00" in value:
        return "must not contain NUL bytes (it becomes an environment variable)"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return "must be UTF-8 text (it becomes an environment variable)"
    return None
