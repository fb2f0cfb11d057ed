"""A runner id that stays the same across redials and restarts.

Why: the control plane keys its registry, its profile bindings and every sandbox record on the
runner id. If a restarted runner came back under a new id, the admin's bindings would no longer
apply and the sandboxes it still hosts would look orphaned. So the id is taken from the command
line when given, otherwise read from ``<state_dir>/runner-id``, otherwise generated once and
written there atomically (a crash mid-write must not leave an empty or half-written id).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import tempfile
from pathlib import Path

RUNNER_ID_FILE = "runner-id"
_UNSAFE = re.compile(r"[^a-z0-9-]+")
_MAX_HOST_PART = 40


def generate_runner_id(hostname: str | None = None) -> str:
    """``runner-<hostname>-<6 hex>``, with the hostname reduced to lower-case ``[a-z0-9-]``."""
    host = hostname if hostname is not None else socket.gethostname()
    host = _UNSAFE.sub("-", host.split(".", 1)[0].lower()).strip("-")[:_MAX_HOST_PART]
    host = host.strip("-") or "host"
    return f"runner-{host}-{secrets.token_hex(3)}"


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def resolve_runner_id(explicit: str | None, state_dir: Path, *, hostname: str | None = None) -> str:
    """Return the runner id to register with.

    ``explicit`` (from ``--runner-id``) wins and is not persisted, so an operator can override
    the id for one run without rewriting state. Otherwise the persisted id is reused, or a new
    one is generated and persisted.
    """
    if explicit is not None and explicit.strip():
        return explicit.strip()
    path = state_dir / RUNNER_ID_FILE
    try:
        stored = path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        return stored
    runner_id = generate_runner_id(hostname)
    _write_atomically(path, runner_id + "\n")
    return runner_id
