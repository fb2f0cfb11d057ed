"""The runner's own credential, kept next to its persisted id.

Why a file in the state directory: a join token is spent when the runner first joins; from
then on the runner proves who it is with the credential the control plane issued to its id.
The file is JSON (``{"runner_id": ..., "credential": ...}``), mode 0600, written atomically;
a credential for another id than the one the runner now uses is ignored (an operator who
changes ``--runner-id`` joins again with a token).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

CREDENTIAL_FILE = "runner-credential"


def load_credential(state_dir: Path, runner_id: str) -> str | None:
    """The stored credential of ``runner_id``, if the state directory holds one."""
    path = state_dir / CREDENTIAL_FILE
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


def save_credential(state_dir: Path, runner_id: str, credential: str) -> Path:
    """Store ``credential`` for ``runner_id`` (0600, atomically); returns the file's path."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / CREDENTIAL_FILE
    fd, temp_name = tempfile.mkstemp(prefix=f".{CREDENTIAL_FILE}.", dir=state_dir)
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
