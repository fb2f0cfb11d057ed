"""Files in a backend's data directory that all its sandboxes share, made once, kept fresh.

Why a module: the agent of every sandbox mounts its root on the same empty mount points,
and every sandbox with a network gets the same resolver settings; both are the backend's
files, not any one sandbox's, and both must be there (again) before the next spawn.

Runs in the runner.
"""

from __future__ import annotations

import os
from pathlib import Path

from .rootfs import LOWER, ROOT, RW

MOUNT_DIR = "mnt"
"""Under the data directory: the mount points every sandbox's agent mounts on."""
RESOLV_FILE = "resolv.conf"
"""Under the data directory: the resolver settings sandboxes with a network get."""


class SharedFiles:
    """The shared mount points and resolver file of the backend at ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._resolv_written: bytes | None = None  # what resolv_file last wrote

    def mount_points(self) -> str:
        """The directory of empty mount points every agent mounts its root on (a string).

        Shared: each agent mounts in a private mount namespace of its own (``rootfs.py``'s
        ``mount_overlay`` says why). Made again if it went missing; a look costs a ``stat``.
        """
        mount_dir = self.data_dir / MOUNT_DIR
        if not (mount_dir / ROOT).is_dir():
            for sub in (LOWER, RW, ROOT):
                (mount_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(mount_dir)

    def resolv_file(self, data: bytes | None) -> str | None:
        """The host's resolver settings ``data`` for sandboxes with a network, as our file.

        One file for every sandbox, written again (a new file renamed over the old) only
        when the settings changed: a keeper copying it meanwhile reads the old or the new
        settings whole. None when the host has no usable name server (``data`` is None).
        """
        if data is None:
            return None
        path = self.data_dir / RESOLV_FILE
        if data != self._resolv_written or not path.is_file():
            tmp = path.with_name(f"{RESOLV_FILE}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._resolv_written = data
        return str(path)
