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


def watch_children_with_pidfds() -> bool:
    """Use pidfds to learn of child exits in this process, where that is needed and works.

    Call from the main thread before the first child is started. Returns whether the pidfd
    watcher is now installed (False on 3.12+, where it is the default already, and on
    kernels without ``pidfd_open``, where the threaded watcher stays).
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with contextlib.suppress(AttributeError):
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
            return True
    return False
