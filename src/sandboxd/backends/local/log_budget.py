"""One disk budget for the logs of every sandbox on a runner; ended sandboxes go first.

Why: each sandbox's log is capped (``log_limit_bytes``), but a stream of short-lived
sandboxes that are never deleted could still fill the runner's disk, 64 MiB at a time. The
budget bounds the total. When it is exceeded, the logs of sandboxes that have *ended* are
evicted, oldest end first, until the total fits again; a running sandbox's log is never
touched (its own cap bounds it). An evicted log is replaced by a single notice record, so
``logs`` says what happened instead of returning nothing.

``BudgetKeeper`` runs the check in a worker thread after sandboxes end, at most once per
``INTERVAL_SECONDS`` (a scan stats every state directory), never on the create or stop path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .logfile import encode_record

INTERVAL_SECONDS = 2.0
LOG_FILE = "main.log"
EXIT_FILE = "exit.json"
EVICTED_NOTICE = b"[sandboxd: this log was evicted to keep the runner within its log budget]\n"


@dataclass(frozen=True)
class _Log:
    state_dir: str
    size: int

    @property
    def path(self) -> str:
        """The log file."""
        return os.path.join(self.state_dir, LOG_FILE)


def _scan(sandboxes_dir: Path) -> list[_Log]:
    """Every sandbox's log and its size: one ``stat`` per sandbox."""
    logs = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(sandboxes_dir):
            try:
                logs.append(_Log(entry.path, os.stat(os.path.join(entry.path, LOG_FILE)).st_size))
            except OSError:
                continue
    return logs


def _ended_at(log: _Log) -> float | None:
    """When the log's sandbox ended (its ``exit.json``'s time); None while it runs."""
    try:
        return os.stat(os.path.join(log.state_dir, EXIT_FILE)).st_mtime
    except OSError:
        return None


def enforce(sandboxes_dir: Path, budget_bytes: int) -> list[Path]:
    """Evict ended sandboxes' logs, oldest first, until all logs fit; the evicted paths.

    Which sandboxes ended is looked up only when the logs do not fit: a second ``stat``
    per sandbox that the usual check, well within the budget, does without (a scan of
    1,000 state directories took 42 ms on a busy 2-core host).
    """
    logs = _scan(sandboxes_dir)
    total = sum(log.size for log in logs)
    if total <= budget_bytes:
        return []
    notice = encode_record("stderr", EVICTED_NOTICE)
    evicted = []
    ended = [(at, lg) for lg in logs if (at := _ended_at(lg)) is not None]
    for _, log in sorted(ended, key=lambda pair: pair[0]):
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
            evicted.append(Path(log.path))
    return evicted


class BudgetKeeper:
    """Runs :func:`enforce` in the background when poked, at most once per interval."""

    def __init__(self, sandboxes_dir: Path, budget_bytes: int) -> None:
        self.sandboxes_dir = sandboxes_dir
        self.budget_bytes = budget_bytes
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._last = -INTERVAL_SECONDS
        self._closing = False  # a pending check then runs at once
        self._nap: asyncio.Task[None] | None = None  # the wait before one

    def poke(self) -> None:
        """A sandbox ended: check the budget soon (coalesced with other pokes)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            wait = max(0.0, self._last + INTERVAL_SECONDS - time.monotonic())
            if wait and not self._closing:
                self._nap = asyncio.ensure_future(asyncio.sleep(wait))
                await asyncio.wait({self._nap})  # ends early when close() cancels it
            self._last = time.monotonic()
            await asyncio.to_thread(enforce, self.sandboxes_dir, self.budget_bytes)
            if not self._again:
                return

    async def settle(self) -> None:
        """Wait for a pending check (tests, shutdown)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def close(self) -> None:
        """Finish a pending check, so nothing runs after the backend closed.

        At once, not after the interval: a runner's shutdown used to wait up to 2 s for it.
        """
        self._closing = True
        if self._nap is not None:
            self._nap.cancel()
        await self.settle()
