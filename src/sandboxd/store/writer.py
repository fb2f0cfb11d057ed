"""Write-behind of runner records, batched off the event loop.

Why: thousands of runners registering at once must not each pay a SQLite transaction on the
gRPC event loop. The registry marks a runner dirty; this task flushes the latest record of every
dirty runner in one transaction per interval, in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sandboxd.store.db import RunnerRecord, Store

log = logging.getLogger(__name__)


class BatchedRunnerWriter:
    """Collects dirty runner ids and persists their current records periodically."""

    def __init__(
        self,
        store: Store,
        snapshot: Callable[[str], RunnerRecord | None],
        interval: float = 0.5,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._interval = interval
        self._dirty: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def mark(self, runner_id: str) -> None:
        """Schedule ``runner_id``'s current record for the next flush."""
        self._dirty.add(runner_id)
        self._wakeup.set()

    def start(self) -> None:
        """Start the background flush loop."""
        self._task = asyncio.create_task(self._run(), name="runner-store-writer")

    async def stop(self) -> None:
        """Flush what is pending and stop."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        """Persist every dirty runner now."""
        ids, self._dirty = self._dirty, set()
        records = [r for r in map(self._snapshot, sorted(ids)) if r is not None]
        if records:
            try:
                await asyncio.to_thread(self._store.save_runners, records)
            except Exception:
                self._dirty |= ids  # not lost: retried on the next flush
                raise

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:  # keep serving; the next flush retries with fresh state
                log.exception("could not persist runner records")
            await asyncio.sleep(self._interval)
