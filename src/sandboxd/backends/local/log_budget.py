"""One disk budget for the logs of every sandbox on a runner; ended sandboxes go first.

Why: each sandbox's log is capped (``log_limit_bytes``), but a stream of short-lived
sandboxes that are never deleted could still fill the runner's disk, 64 MiB at a time. The
budget bounds the total. When it is exceeded, the logs of sandboxes that have *ended* are
evicted, oldest end first, until the total fits again; a running sandbox's log is never
touched (its own cap bounds it). An evicted log is replaced by a single notice record, so
``logs`` says what happened instead of returning nothing.

Runs in a worker thread after a sandbox ends (off the create path).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .logfile import encode_record

LOG_FILE = "main.log"
EXIT_FILE = "exit.json"
EVICTED_NOTICE = b"[sandboxd: this log was evicted to keep the runner within its log budget]\n"


@dataclass(frozen=True)
class _Log:
    path: Path
    size: int
    ended_at: float | None  # None while the sandbox runs


def _scan(sandboxes_dir: Path) -> list[_Log]:
    logs = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(sandboxes_dir):
            log = Path(entry.path) / LOG_FILE
            try:
                size = log.stat().st_size
            except OSError:
                continue
            try:
                ended: float | None = (Path(entry.path) / EXIT_FILE).stat().st_mtime
            except OSError:
                ended = None
            logs.append(_Log(log, size, ended))
    return logs


def enforce(sandboxes_dir: Path, budget_bytes: int) -> list[Path]:
    """Evict ended sandboxes' logs, oldest first, until all logs fit; the evicted paths."""
    logs = _scan(sandboxes_dir)
    total = sum(log.size for log in logs)
    notice = encode_record("stderr", EVICTED_NOTICE)
    evicted = []
    ended = [(lg.ended_at, lg) for lg in logs if lg.ended_at is not None]
    for _ended_at, log in sorted(ended, key=lambda pair: pair[0]):
        if total <= budget_bytes:
            break
        if log.size <= len(notice):
            continue
        with contextlib.suppress(OSError):
            fd = os.open(log.path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.write(fd, notice)
            finally:
                os.close(fd)
            total -= log.size - len(notice)
            evicted.append(log.path)
    return evicted
