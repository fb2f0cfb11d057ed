"""AES-GCM encryption of secret values, with a key kept in the data directory.

Why the key is a file next to the database and never in it: a copy of the database (a
backup, a dump, a stolen PostgreSQL volume) must not reveal any value. The file is created
0600 on first start; a key readable by others, or a missing key while encrypted rows exist
(a data directory restored without it, a second control plane not given it), is refused at
start with a message that says what to do, instead of failing later at a sandbox's start.

Each value is bound to its row: the associated data is the store id, the secret's name and
field, so a ciphertext copied into another row does not decrypt.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_FILE_NAME", "KeyProblem", "SecretCipher", "load_or_create_key"]

KEY_FILE_NAME = "secrets.key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
VERSION = b"\x01"  # leading byte of every stored ciphertext: the format, for a future rotation


class KeyProblem(Exception):
    """The secrets key cannot be used; the message says why and what to do."""


class SecretCipher:
    """Encrypts and decrypts values under one key (``os.urandom`` nonces)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise KeyProblem(f"the secrets key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def encrypt(self, value: bytes, bound_to: str) -> bytes:
        """``VERSION || nonce || ciphertext+tag`` of ``value``, bound to ``bound_to``."""
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, value, bound_to.encode())

    def decrypt(self, blob: bytes, bound_to: str) -> bytes:
        """The value; :class:`KeyProblem` when this key (or this row) does not fit it."""
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != VERSION:
            raise KeyProblem("a stored secret value is damaged (unknown format)")
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, sealed, bound_to.encode())
        except InvalidTag:
            raise KeyProblem(
                "a stored secret value does not decrypt with this control plane's secrets key"
            ) from None


def _check_mode(path: Path) -> None:
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise KeyProblem(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyProblem(
            f"{path} is readable or writable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"it protects every secret value: run `chmod 600 {path}` and start again"
        )


def load_or_create_key(data_dir: Path, encrypted_rows: int) -> bytes:
    """The key in ``data_dir/secrets.key``, created (0600) when absent and nothing needs it.

    ``encrypted_rows``: how many secret values the database holds; with none, a missing key
    is simply created, with some it is refused (those values could never be read again).
    """
    path = data_dir / KEY_FILE_NAME
    if not path.exists():
        if encrypted_rows:
            raise KeyProblem(
                f"{path} is missing but the database holds {encrypted_rows} encrypted secret "
                "value(s): restore the key file from the data directory that created them "
                "(every control plane sharing a database needs the same one)"
            )
        key = os.urandom(KEY_BYTES)
        # Written whole under a temporary name, then linked into place: a concurrent first
        # start of another control plane never reads a half-written key, and only one wins.
        tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return load_or_create_key(data_dir, encrypted_rows)
        finally:
            tmp.unlink(missing_ok=True)
        return key
    _check_mode(path)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise KeyProblem(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key")
    return key
