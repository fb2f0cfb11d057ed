"""The three kinds of secret sandboxd hands out, and how they are stored (as digests only).

Every secret reads ``<prefix>_<public id>_<random part>``:

* ``sbxk_…`` an API key (organization + role), sent by clients as ``authorization: Bearer``;
* ``sbxj_…`` a runner join token, presented once by a new runner;
* ``sbxr_…`` a runner credential, issued to one runner id when it joins.

Why this shape: the public id lets an administrator name a key (``sandboxd keys revoke ID``)
and lets the control plane find the stored digest without scanning, while the random part
(256 bits) is never stored, only its SHA-256 digest, compared in constant time. A high-entropy
secret needs no slow password hash: nothing can be guessed from a digest of 256 random bits.
The prefix makes a leaked secret recognisable to secret scanners and to us (a join token
pasted where an API key belongs gets a clear error).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum


class SecretKind(StrEnum):
    """The prefix of each kind of secret."""

    API_KEY = "sbxk"
    JOIN_TOKEN = "sbxj"
    RUNNER_CREDENTIAL = "sbxr"


DESCRIPTIONS = {
    SecretKind.API_KEY: "API key",
    SecretKind.JOIN_TOKEN: "join token",
    SecretKind.RUNNER_CREDENTIAL: "runner credential",
}

PUBLIC_ID_PATTERN = re.compile(r"^[0-9a-f]{16}\Z")
_SECRET_PATTERN = re.compile(r"^(sbxk|sbxj|sbxr)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
# Longest string worth parsing; anything longer is refused before any regex runs.
MAX_SECRET_CHARS = 128


@dataclass(frozen=True)
class ParsedSecret:
    """A well-formed secret: its kind, public id and the whole string (for the digest)."""

    kind: SecretKind
    public_id: str
    text: str

    def __repr__(self) -> str:  # never print the secret part
        return f"ParsedSecret({self.kind.value}_{self.public_id}_…)"


def mint(kind: SecretKind) -> ParsedSecret:
    """A fresh secret of ``kind``: 64-bit public id, 256-bit random part."""
    public_id = secrets.token_hex(8)
    text = f"{kind.value}_{public_id}_{secrets.token_urlsafe(32)}"
    return ParsedSecret(kind, public_id, text)


def parse(text: str) -> ParsedSecret | None:
    """The secret in ``text`` (surrounding blanks ignored), or None if it is not one."""
    text = text.strip()
    if len(text) > MAX_SECRET_CHARS:
        return None
    match = _SECRET_PATTERN.match(text)
    if match is None:
        return None
    return ParsedSecret(SecretKind(match.group(1)), match.group(2), text)


def digest(secret: ParsedSecret) -> str:
    """What the store keeps: the SHA-256 of the whole secret, hex."""
    return hashlib.sha256(secret.text.encode()).hexdigest()


def matches(secret: ParsedSecret, stored_digest: str) -> bool:
    """Whether ``secret`` is the one ``stored_digest`` was made from (constant time)."""
    return hmac.compare_digest(digest(secret), stored_digest)
