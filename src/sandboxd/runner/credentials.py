"""The runner's own credential, kept next to its persisted id.

Why a file in the state directory: a join token is spent when the runner first joins; from
then on the runner proves who it is with the credential the control plane issued to its id.
The file is JSON (``{"runner_id": ..., "credential": ...}``), mode 0600, written atomically;
a credential for another id than the one the runner now uses is ignored (an operator who
changes ``--runner-id`` joins again with a token).

A second file, ``runner-credential.pending``, holds the credential a runner proposed when
it joined with its token *after its stored credential was refused*: the refused one stays
in place (a runner pointed at the wrong control plane must not lose the right one's), and a
runner that dies before it hears the join's answer still knows what it proposed. It goes
once a registration succeeds.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

CREDENTIAL_FILE = "runner-credential"
PENDING_FILE = "runner-credential.pending"


def load_credential(state_dir: Path, runner_id: str, name: str = CREDENTIAL_FILE) -> str | None:
    """The stored credential of ``runner_id`` (or, with ``PENDING_FILE``, the proposed one)."""
    path = state_dir / name
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the runner credential in {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("runner_id") != runner_id:
        return None
    credential = document.get("credential")
    return credential if isinstance(credential, str) and credential else None


def save_credential(
    state_dir: Path, runner_id: str, credential: str, name: str = CREDENTIAL_FILE
) -> Path:
    """Store ``credential`` for ``runner_id`` (0600, atomically, synced); the file's path."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / name
    fd, temp_name = tempfile.mkstemp(prefix=f".{name}.", dir=state_dir)
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp creates the file 0600
            json.dump({"runner_id": runner_id, "credential": credential}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def forget_pending(state_dir: Path) -> None:
    """Remove the proposed credential once a registration made it moot."""
    (state_dir / PENDING_FILE).unlink(missing_ok=True)
