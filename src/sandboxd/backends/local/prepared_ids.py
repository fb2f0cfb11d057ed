"""Id ranges claimed ahead of need, their user namespaces already made by the zygote.

Why: making a user namespace costs a fork and two map writes, about 2 ms, which would be
a sixth of a sandbox's create time. A few ranges are therefore claimed in advance and the
zygote makes their namespaces while it is idle (it serves spawns first); a create takes a
prepared range and the pool refills in the background. If none is prepared (a burst, or
the zygote restarted), the keeper makes the namespace itself: slower, never wrong.

Claims of prepared ranges carry a marker, so a runner that restarts adopts them instead
of leaking them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from .supervisor import ZygoteClient, ZygoteError
from .userns import IdRange, IdRangeError, IdRangePool

log = logging.getLogger(__name__)
PREPARED = "<prepared>"
DEFAULT_DEPTH = 4
REFILL_DELAY_SECONDS = 0.05
"""How long after a create the backend's pools (these ranges, layers, networks) refill."""


class PreparedIdRanges:
    """Hands out id ranges, preferring ones whose user namespace the zygote already made."""

    def __init__(self, pool: IdRangePool, zygote: ZygoteClient, depth: int = DEFAULT_DEPTH) -> None:
        self.pool = pool
        self.zygote = zygote
        self.depth = depth
        self.ready: deque[IdRange] = deque()
        self._adopted = False
        self._closed = False  # a refill scheduled by a take may come due after close()
        self._task: asyncio.Task[None] | None = None

    def _adopt(self) -> None:
        """Take over the ranges a predecessor (killed before it gave them back) prepared.

        Before this pool claims any range itself (``refill`` and ``take`` call it first):
        the claims carry the same marker, and a range of our own adopted too would be
        handed to two sandboxes, which would then run as the same host users.
        """
        if not self._adopted:
            self._adopted = True
            self.ready.extend(self.pool.adopt(PREPARED))

    def adopt_none(self) -> None:
        """Take over no predecessor's ranges: the key's other holder is alive and uses them."""
        self._adopted = True

    def take(self, sandbox_id: str) -> IdRange:
        """A range for ``sandbox_id``: a prepared one if any, else a freshly claimed one."""
        self._adopt()
        ids = self.ready.popleft() if self.ready else self.pool.allocate(sandbox_id)
        self.pool.relabel(ids, sandbox_id)
        # A little later: the zygote is about to spawn this sandbox, and its first exec
        # follows; a namespace made meanwhile would compete with both for the CPU.
        asyncio.get_running_loop().call_later(REFILL_DELAY_SECONDS, self.refill)
        return ids

    def refill(self) -> None:
        """Top the prepared ranges up in the background (one task at a time)."""
        if self._closed:
            return
        self._adopt()
        if self.depth <= 0 or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        while len(self.ready) < self.depth:
            try:
                ids = self.pool.allocate(PREPARED)
            except IdRangeError:
                return
            try:
                await self.zygote.prepare_userns(ids.slot, ids.first, ids.count)
            except BaseException as exc:  # cancelled by close() too: else the claim stays
                self.pool.release(ids)
                if not isinstance(exc, OSError | ZygoteError):
                    raise
                log.warning("could not prepare a user namespace ahead: %s", exc)
                return
            self.ready.append(ids)

    async def close(self) -> None:
        """Stop refilling and give back every range not handed out, a predecessor's too."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._adopt()  # a runner stopped before its first create gives those back as well
        while self.ready:
            self.pool.release(self.ready.popleft())
