"""The secrets key and AES-GCM values: created 0600, refused when unsafe, bound to rows.

Real files and a real SQLite database; nothing is mocked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandboxd.controlplane.sandbox_model import now
from sandboxd.controlplane.secrets import open_secrets
from sandboxd.secrets.cipher import KEY_FILE_NAME, KeyProblem, SecretCipher, load_or_create_key
from sandboxd.store import Store
from sandboxd.store.secret_store import SecretKey, SecretStoreInfo, bound_to

VALUE = b"hunter2-very-secret-value"


def test_the_key_is_created_0600_once_and_reused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path, encrypted_rows=0)
    path = tmp_path / KEY_FILE_NAME
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path, encrypted_rows=5) == key
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE_NAME]  # no temporary left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_key(tmp_path, encrypted_rows=0)
    (tmp_path / KEY_FILE_NAME).chmod(mode)
    with pytest.raises(KeyProblem, match=f"mode {mode:04o}.*chmod 600"):
        load_or_create_key(tmp_path, encrypted_rows=0)


def test_a_missing_key_is_refused_while_encrypted_values_exist(tmp_path: Path) -> None:
    with pytest.raises(KeyProblem, match="missing but the database holds 3 encrypted"):
        load_or_create_key(tmp_path, encrypted_rows=3)
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_a_key_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(KeyProblem, match="holds 5 bytes"):
        load_or_create_key(tmp_path, encrypted_rows=0)


def test_a_value_decrypts_only_in_its_own_row_and_with_its_key() -> None:
    cipher = SecretCipher(os.urandom(32))
    blob = cipher.encrypt(VALUE, "store\x00a\x00")
    assert VALUE not in blob
    assert cipher.decrypt(blob, "store\x00a\x00") == VALUE
    with pytest.raises(KeyProblem):  # copied into another row
        cipher.decrypt(blob, "store\x00b\x00")
    with pytest.raises(KeyProblem):  # another key
        SecretCipher(os.urandom(32)).decrypt(blob, "store\x00a\x00")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyProblem):
        cipher.decrypt(tampered, "store\x00a\x00")
    # The same value twice gives two different ciphertexts (fresh nonces).
    assert cipher.encrypt(VALUE, "x") != cipher.encrypt(VALUE, "x")


def _store_with_a_value(data_dir: Path) -> Store:
    store = Store.sqlite(data_dir / "controlplane.db")
    secrets = open_secrets(store.secrets, data_dir)
    at = now()
    store.secrets.create_store(SecretStoreInfo("s1", "acme", "main", 0, at, at), 10)
    cipher = secrets._cipher  # the cipher this control plane would use
    store.secrets.put_value(
        "acme",
        SecretKey("main", "token", ""),
        lambda bound: cipher.encrypt(VALUE, bound),
        size_bytes=len(VALUE),
        at=at,
        max_per_store=10,
    )
    return store


def test_open_secrets_refuses_a_missing_or_a_wrong_key(tmp_path: Path) -> None:
    store = _store_with_a_value(tmp_path)
    try:
        key_file = tmp_path / KEY_FILE_NAME
        good = key_file.read_bytes()
        key_file.unlink()
        with pytest.raises(KeyProblem, match="missing but the database holds 1"):
            open_secrets(store.secrets, tmp_path)
        assert not key_file.exists()  # no new key was made that would hide the old one
        key_file.write_bytes(os.urandom(32))
        key_file.chmod(0o600)
        with pytest.raises(KeyProblem, match="not the key that stored them"):
            open_secrets(store.secrets, tmp_path)
        key_file.write_bytes(good)
        secrets = open_secrets(store.secrets, tmp_path)
        stored = store.secrets.fetch_values("acme", [SecretKey("main", "token", "")])
        bound, blob = stored[SecretKey("main", "token", "")]
        assert bound == bound_to("s1", "token", "")
        assert secrets._cipher.decrypt(blob, bound) == VALUE
    finally:
        store.close()
    assert VALUE not in (tmp_path / "controlplane.db").read_bytes()
