"""Which backends on this host are alive: one lock file per backend key, held while it runs.

Why: a backend keeps host-wide claims (``/run/sandboxd/ipam``, ``/run/sandboxd/idmap``) for
networks and id ranges it made ahead of need. They belong to the process, not to any
sandbox: when it is killed, the next backend with the same key (data directory) takes them
back. When none ever comes (the runner was killed and its data directory deleted, as test
runs and re-provisioned hosts do) they stayed forever: a network namespace, a veth pair and
firewall rules per prepared network, and ranges that every later allocation scans past.

Each backend therefore holds a shared ``flock`` on ``/run/sandboxd/owners/<key>`` for its
life; the kernel drops it when the process dies, however it dies. Another backend that can
take the same file's lock exclusively knows its owner is gone and reaps what that owner
made ahead (:func:`orphaned`, ``orphans.py``). A key without a lock file (written by a
version before this one) is never reaped: its owner may still be alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

OWNERS_DIR = "/run/sandboxd/owners"
_RETRY_SECONDS = 0.02  # while another backend reaps this key's leftovers (milliseconds)


def _open_locked(path: str, operation: int, create: bool = True) -> int | None:
    """``path`` opened and locked, the lock taken on the file the path names now; else None.

    A reaper unlinks a lock file while it holds it exclusively; whoever opened the old
    file before that holds a lock on a name nobody looks at, so the inode is compared
    after the lock is taken and a stale one is let go.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:  # reaped and removed since it was listed
        return None
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    try:
        same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


class OwnerLock:
    """The shared lock that says a backend with this key is alive (see the module text)."""

    def __init__(self, key: str, directory: str = OWNERS_DIR) -> None:
        self.key = key
        self.directory = directory
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now."""
        return self._fd is not None

    async def hold(self) -> None:
        """Take the lock (shared); waits while another backend reaps this key's leftovers."""
        if self._fd is not None:
            return
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, self.key)
        while True:
            fd = _open_locked(path, fcntl.LOCK_SH)
            if fd is not None:
                self._fd = fd
                return
            await asyncio.sleep(_RETRY_SECONDS)

    def release(self) -> None:
        """Let the lock go, and remove the file when no other holder of this key is left."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while another holds it
            path = os.path.join(self.directory, self.key)
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass  # shared still, or removed already: a reaper takes the file when it is free
        finally:
            os.close(fd)


@contextlib.contextmanager
def orphaned(key: str, directory: str = OWNERS_DIR) -> Iterator[bool]:
    """Whether ``key``'s owner is gone; while True, ``key``'s lock is held exclusively.

    On leaving after True the lock file is removed (still held, so no owner took it).
    """
    path = os.path.join(directory, key)
    try:
        fd = _open_locked(path, fcntl.LOCK_EX, create=False)
    except OSError:
        fd = None
    if fd is None:
        yield False
        return
    try:
        yield True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


def other_keys(own: str, directory: str = OWNERS_DIR) -> list[str]:
    """The keys of every other backend that holds or held a lock file on this host."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name != own and not name.startswith("."))
