"""The official ``cwsandbox`` client in its own virtualenv, shared by every suite that uses it.

Why one place: the compatibility tests (e2e) and the signature check (unit) must drive the
same pinned release; it is installed from PyPI once under a lock, so parallel workers never
race, and reused afterwards (``.cache/`` is ignored by git).
"""

from __future__ import annotations

import fcntl
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_VERSION = "0.26.2"
OFFICIAL_VENV = ROOT / ".cache" / f"official-cwsandbox-{OFFICIAL_VERSION}"


def official_python() -> Path:
    """Python of a virtualenv holding the official client (created once, then reused)."""
    lock = ROOT / ".cache" / "official-venv.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    python = OFFICIAL_VENV / "bin" / "python"
    marker = OFFICIAL_VENV / ".ready"
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not marker.exists():
            venv.create(OFFICIAL_VENV, with_pip=True, clear=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 f"cwsandbox=={OFFICIAL_VERSION}"],
                check=True, timeout=600,
            )  # fmt: skip
            marker.touch()
    return python
