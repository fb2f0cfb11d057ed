"""How asyncio learns that a child process (``ip``, ``iptables-restore``, ...) ended.

Why: on Python 3.11 asyncio's default child watcher starts a thread per child that blocks in
``waitpid``. A runner runs a few host commands per sandbox it creates or deletes, so in a
burst of creates it started hundreds of threads, each competing for the GIL with the event
loop that serves the creates. A pidfd watcher (Linux 5.3+) instead has the event loop poll
one file descriptor per child, no thread. Python 3.12 and later pick that watcher on their
own (and deprecate choosing one), so this only acts on 3.11.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def children_watched_with_pidfds() -> Iterator[bool]:
    """Within the block, this process learns of child exits through pidfds, where needed.

    Wrap the ``asyncio.run`` of a runner (from the main thread, before its first child).
    Yields whether the pidfd watcher is installed (False on 3.12+, where it is the default
    already, and on kernels without ``pidfd_open``, where the threaded watcher stays).

    Why only within the block: on 3.11 the watcher is the process's, and a pidfd watcher
    serves only the event loop last set in the main thread. Installed for good, it left
    every other loop of the process unable to start a child ("asyncio.get_child_watcher()
    is not activated"): a test that ran the runner's command in-process broke the test
    session's long-lived loop, whose backend then could not remove its networks' rules.
    The watcher that was there before comes back when the block ends.
    """
    if sys.version_info >= (3, 12) or not _pidfds_work():
        yield False
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = asyncio.get_child_watcher()
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    try:
        yield True
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(previous)


def _pidfds_work() -> bool:
    """Whether this kernel has ``pidfd_open`` (Linux 5.3+) and this Python exposes it."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True
