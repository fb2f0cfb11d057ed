"""Roles, names and the records kept for API keys, join tokens and runner credentials.

Why plain frozen dataclasses: the store, the admin API and the interceptor's cache pass these
around; none of them may change a record in place (a revocation is a new record).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

# The organization of the administrator key ``sandboxd`` creates on first start, and the owner
# of sandboxes recorded before sandboxes had owners.
ADMIN_ORG = "admin"

ORG_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?\Z")
MAX_KEY_NAME_CHARS = 100
MAX_TOKEN_USES = 10_000
MAX_TOKEN_TTL_SECONDS = 366 * 24 * 3600
DEFAULT_TOKEN_TTL_SECONDS = 3600


class Role(StrEnum):
    """What an API key may do."""

    ADMIN = "admin"  # every organization's sandboxes, and the admin API
    MEMBER = "member"  # its own organization's sandboxes


def organization_problem(name: str) -> str | None:
    """Why ``name`` is not a valid organization name, or None when it is."""
    if not name:
        return "must not be empty"
    if not ORG_PATTERN.match(name):
        return (
            "must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending "
            f"with a letter or digit (got {name!r})"
        )
    return None


def key_name_problem(name: str) -> str | None:
    """Why ``name`` is not a usable key name, or None when it is."""
    if len(name) > MAX_KEY_NAME_CHARS:
        return f"must be at most {MAX_KEY_NAME_CHARS} characters"
    if any(not ch.isprintable() for ch in name):
        return "must be printable text (no control characters or newlines)"
    return None


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key, without its secret."""

    key_id: str
    organization: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class JoinTokenInfo:
    """A runner join token, without its secret."""

    token_id: str
    runner_group_id: str
    runner_id: str
    max_uses: int
    uses: int
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None

    def problem(self, now: datetime) -> str | None:
        """Why the token cannot be used now, or None when it can."""
        if self.revoked_at is not None:
            return "was revoked"
        if now >= self.expires_at:
            return f"expired at {self.expires_at.isoformat(timespec='seconds')}"
        if self.uses >= self.max_uses:
            return f"is used up ({self.uses} of {self.max_uses} uses)"
        return None


@dataclass(frozen=True)
class RunnerCredentialInfo:
    """The credential bound to one runner id, without its secret."""

    runner_id: str
    credential_id: str
    runner_group_id: str
    token_id: str
    created_at: datetime
    revoked_at: datetime | None = None


class JoinRefused(Exception):
    """A runner may not join with this token under this id; ``kind`` says which rule failed.

    ``token``: the token is unknown, revoked, expired or used up. ``pinned``: the token names
    another runner id. ``bound``: the runner id already holds a credential and the token is
    not pinned to it (so it cannot take the id over).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


RUNNER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
RUNNER_ID_RULE = "must be 1-253 letters, digits, '.', '_' or '-', starting with a letter or digit"
