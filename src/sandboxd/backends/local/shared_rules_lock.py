"""A host-wide lock for the firewall chains that every backend on a host shares.

Why: the hook group chains (``hook_chains.py``) and the shared egress chain belong to no
backend. Whichever needs one first makes it, and whichever had the last rule in it removes
it. Each make or removal is one transaction, but a backend's repair of what went missing
takes several: with two backends repairing one group at the same moment (after a firewall
reload, say), both found a jump missing and both put it in. The copy exposed nothing, but
the kernel then refused the group's removal with its last sandbox, so its chains stayed on
the host for good. And an add that found a group gone (another backend removed it with its
last sandbox) could find it gone again after its repair, as often as that backend removed
it, so it gave up after ``ADD_TRIES``.

So a removal of a shared chain, and an add that found something missing from its repair
through its next try, hold this lock. Under it no other backend removes a shared chain, so
the repaired add goes through, and two repairs take turns, so the second finds the jumps
the first put in. Creates that find everything in place (all but a few) never take it.

An ``flock`` on a file beside the subnet claims (``/run/sandboxd/ipam``), so it is shared
by every backend that shares the claims, and released when its holder dies: a backend
killed while it holds it never blocks another. A holder that does not let go within
``WAIT_SECONDS`` is passed over with a warning, as before the lock, rather than waited for
without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator

__all__ = ["LOCK_NAME", "WAIT_SECONDS", "SharedRulesLock"]

_log = logging.getLogger(__name__)

LOCK_NAME = ".shared-rules.lock"
"""The lock file's name in the claims directory."""
WAIT_SECONDS = 10.0
"""How long a backend waits for another to let go before it goes on without the lock."""
_POLL_SECONDS = 0.005


class SharedRulesLock:
    """The host-wide lock of one claims directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock for the block (waiting without blocking the event loop).

        Each use opens the file anew, so two holders in one process exclude each other as
        two processes do (a lock belongs to its open file).
        """
        os.makedirs(self._directory, exist_ok=True)
        path = os.path.join(self._directory, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if loop.time() >= deadline:
                        _log.warning(
                            "%s held by another backend for more than %.0f s; going on without it",
                            path,
                            WAIT_SECONDS,
                        )
                        break
                    await asyncio.sleep(_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # lets go of the lock
