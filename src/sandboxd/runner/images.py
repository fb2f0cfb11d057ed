"""The image names a runner advertises, kept fresh for heartbeats without walking disk each time.

Why: placement only sends a sandbox to a runner whose ``capabilities.images`` has its image.
Listing once at register time meant an image built with ``sandboxd images build`` while the
runner was connected stayed unplaceable until a redial; heartbeats now carry the list. A
listing walks the image store, so it is cached and re-taken at most every
:data:`RELIST_SECONDS` — an image becomes placeable within a few seconds of being built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

__all__ = ["RELIST_SECONDS", "ImageList"]

_log = logging.getLogger(__name__)
RELIST_SECONDS = 5.0


class ImageList:
    """A backend's ``image_refs`` (``list_refs``), re-taken at most every ``interval`` seconds.

    ``interval`` defaults to :data:`RELIST_SECONDS` as it is when the list is created.
    """

    def __init__(
        self,
        list_refs: Callable[[], list[str]],
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list_refs = list_refs
        self._interval = RELIST_SECONDS if interval is None else interval
        self._clock = clock
        self._listed_at: float | None = None
        self._refs: list[str] = []

    def _stale(self) -> bool:
        return self._listed_at is None or self._clock() - self._listed_at >= self._interval

    def _relist(self) -> None:
        # A listing that fails (the disk, a half-written image) keeps the previous list: a
        # transient error must not make every image unplaceable.
        try:
            self._refs = list(self._list_refs())
        except OSError as exc:
            _log.warning("cannot list images: %s", exc)
        self._listed_at = self._clock()

    def current(self, *, fresh: bool = False) -> list[str]:
        """The cached list, re-taken here when older than the interval (or when ``fresh``)."""
        if fresh or self._stale():
            self._relist()
        return list(self._refs)

    async def refreshed(self) -> list[str]:
        """Like :meth:`current`, but lists in a thread, off the event loop.

        An imported image's rootfs is a real tree that the local store's listing walks; heartbeats,
        execs and log streams must not wait for the disk meanwhile.
        """
        if self._stale():
            await asyncio.to_thread(self._relist)
        return list(self._refs)
