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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxd.images import ImageStore

__all__ = ["RELIST_SECONDS", "ImageList", "image_refs"]

_log = logging.getLogger(__name__)
RELIST_SECONDS = 5.0


def image_refs(images: ImageStore) -> list[str]:
    """Image names the runner can start now, for ``Capabilities.images``.

    Written as clients write them: ``name:tag``, plus the bare ``name`` for ``latest``.
    """
    refs: set[str] = set()
    for info in images.list_images():
        refs.add(info.ref)
        if info.tag == "latest":
            refs.add(info.name)
    return sorted(refs)


class ImageList:
    """:func:`image_refs` of one store, re-listed at most every ``interval`` seconds.

    ``interval`` defaults to :data:`RELIST_SECONDS` as it is when the list is created.
    """

    def __init__(
        self,
        store: ImageStore,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
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
            self._refs = image_refs(self._store)
        except OSError as exc:
            _log.warning("cannot list images in %s: %s", self._store.images_dir, exc)
        self._listed_at = self._clock()

    def current(self, *, fresh: bool = False) -> list[str]:
        """The cached list, re-taken here when older than the interval (or when ``fresh``)."""
        if fresh or self._stale():
            self._relist()
        return list(self._refs)

    async def refreshed(self) -> list[str]:
        """Like :meth:`current`, but lists in a thread, off the event loop.

        An imported image's rootfs is a real tree that the store's listing walks; heartbeats,
        execs and log streams must not wait for the disk meanwhile.
        """
        if self._stale():
            await asyncio.to_thread(self._relist)
        return list(self._refs)
