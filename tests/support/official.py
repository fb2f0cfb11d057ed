"""The official ``cwsandbox`` clients in their own virtualenvs, shared by every suite using them.

Why one place: the compatibility tests (e2e) and the signature check (unit) must drive the
same pinned releases; each is installed from PyPI once under a lock, so parallel workers
never race, and reused afterwards (``.cache/`` is ignored by git). Each version has its own
virtualenv and runs in its own process: the v1 clients register ``coreweave/sandbox/v1/*``
descriptors that must never meet the server's own in one process (protocol/v1.md §16).

``OFFICIAL_VERSION`` is the last v1beta2 client; ``OFFICIAL_V1_VERSIONS`` are the v1
clients this server is tested with: the newest, the last before the ``dns_name`` →
``https_hostname`` rename and PREPARING, and the first v1 release (v1.md §14).
"""

from __future__ import annotations

import fcntl
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_VERSION = "0.26.2"
OFFICIAL_V1_VERSION = "1.22.0"
OFFICIAL_V1_VERSIONS = (OFFICIAL_V1_VERSION, "1.14.4", "0.27.0")
OFFICIAL_VENV = ROOT / ".cache" / f"official-cwsandbox-{OFFICIAL_VERSION}"


def official_venv(version: str) -> Path:
    """Where the virtualenv of one release lives."""
    return ROOT / ".cache" / f"official-cwsandbox-{version}"


def official_python(version: str = OFFICIAL_VERSION) -> Path:
    """Python of a virtualenv holding that release (created once, then reused)."""
    lock = ROOT / ".cache" / f"official-venv-{version}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    home = official_venv(version)
    python = home / "bin" / "python"
    marker = home / ".ready"
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not marker.exists():
            venv.create(home, with_pip=True, clear=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 f"cwsandbox=={version}"],
                check=True, timeout=600,
            )  # fmt: skip
            marker.touch()
    return python
