"""Small state records kept as appended lines, so that saving one again makes no new file.

Why: the runner saves each sandbox's state several times while creating it (the backend's
record as the cgroup, the network lease and the processes appear; the runner's own policy
record). Writing a temporary file and renaming it over the old one is atomic, but each save
makes a new inode and frees one, and ext4 also starts writing back a file renamed over
another (its ``auto_da_alloc``): 0.17-0.2 ms a save on a quiet host, several times that in
a burst of creates, where inode allocation scans groups full of just-deleted inodes.
Appending one line costs 0.02 ms.

The format: each save appends a newline, the JSON text and a newline in one ``write``, and
the newest line that parses as a JSON object is the record. A save cut short by a crash
(``write`` may stop between pages when the process is killed) leaves a line that does not
parse; the line before it, the previous save, is read instead, as a crash before a rename
would have left the old file. The leading newline ends such a torn line, so the next save
is read whole. The file is rewritten (temporary file and rename) once it grows past
:data:`COMPACT_BYTES`, so it stays small however often a sandbox is saved.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

COMPACT_BYTES = 64 << 10
"""Past this size a save rewrites the file with only itself."""


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Save ``record`` as the newest line of ``path`` (created if missing)."""
    line = ("\n" + json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size + len(line) <= COMPACT_BYTES:
            os.write(fd, line)
            return
    finally:
        os.close(fd)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(line)
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any]:
    """The newest complete record of ``path``.

    Raises ``FileNotFoundError`` when there is no file and ``ValueError`` when no line of
    it is a JSON object (a damaged file).
    """
    data = path.read_bytes()
    for line in reversed(data.split(b"\n")):
        if not line.strip():
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                return record
    raise ValueError(f"{path}: no complete record in {len(data)} bytes")
