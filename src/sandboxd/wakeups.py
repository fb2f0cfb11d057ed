"""Per-key wake-ups: coroutines wait until something about a key happens, or a timeout.

Why one small class: a held Get or an exec waiting for its sandbox (the control plane's
records), a call waiting for a runner's next connection (the registry) and an exec waiting
for its start to reach the runner are the same thing: futures per key, all woken at once,
each waiter removing itself when it gives up, so keys that never change leave nothing
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Wakeups"]

K = TypeVar("K", bound=Hashable)


class Wakeups(Generic[K]):
    """Waiters per key; :meth:`wake` releases every waiter of a key."""

    def __init__(self) -> None:
        self._waiters: dict[K, list[asyncio.Future[None]]] = {}

    def wake(self, key: K) -> None:
        """Release everyone waiting on ``key`` (nothing if nobody is)."""
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, key: K, timeout: float) -> None:
        """Return at the next :meth:`wake` of ``key``, or after ``timeout`` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, [])
        waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for (3.11 cancellation race)
                    await waiter
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]

    def waiting(self, key: K) -> int:
        """How many wait on ``key`` now (for tests and metrics)."""
        return len(self._waiters.get(key, ()))
