"""Execs that wait for their sandbox's start to arrive (``OpenExec.wait_start``).

Why: our client sends its first exec right after Start, and the control plane hands it to
the runner at once instead of waiting to hear that the sandbox runs (a round trip through
the control plane fewer on every create). The exec and the start command travel on
different streams, so the exec may arrive first; it then waits here for the start to
arrive, and for the sandbox to run (``Sandbox.settled``; not for the start's report, which
goes on meanwhile). Bounded: a start that has not arrived within ``ARRIVAL_WAIT_SECONDS``
is not coming (the control plane sends it as soon as it has stored the sandbox), and the
exec is then refused like one for an unknown sandbox; the client asks Get what became of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sandboxd.runner.sandbox_state import STARTING, Sandbox
from sandboxd.wakeups import Wakeups

__all__ = ["ARRIVAL_WAIT_SECONDS", "StartArrivals"]

ARRIVAL_WAIT_SECONDS = 30.0


class StartArrivals:
    """Waiters for sandboxes this runner has not been told to start yet."""

    def __init__(self, lookup: Callable[[str], Sandbox | None]) -> None:
        self._lookup = lookup
        self._waiters: Wakeups[str] = Wakeups()

    def arrived(self, sandbox_id: str) -> None:
        """A start of ``sandbox_id`` has entered the runner's table: wake its execs."""
        self._waiters.wake(sandbox_id)

    async def settled(self, sandbox_id: str) -> None:
        """Return once ``sandbox_id``'s start has arrived and finished, or the wait is over.

        What the sandbox then is (running, failed and gone, never there) is for the caller
        to check, as for any exec.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ARRIVAL_WAIT_SECONDS
        while (sb := self._lookup(sandbox_id)) is None:
            left = deadline - loop.time()
            if left <= 0:
                return
            await self._waiters.wait(sandbox_id, left)
        if sb.phase == STARTING:
            # Set as the sandbox runs (or its start fails): the exec goes while the start
            # still reports RUNNING to the control plane, which announces the exec's
            # sandbox as running either way (streaming.py).
            await sb.settled.wait()
