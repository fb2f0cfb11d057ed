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

The file also names the owner's data directory (:func:`recorded_data_dir`): when that
directory is gone too, no runner can ever come back for the owner's sandboxes (their
records, sockets and logs were in it), and the reaper ends them as well.

And it names the owner's network namespace (:func:`netns_id`). Why: ``/run/sandboxd`` is
shared by every runner that shares the host's mounts, also one in a network namespace of
its own (a runner in a container with its own network, the fault tests' "hosts"). Such a
runner's reaper took a dead host runner's prepared networks for its own to remove: it ran
the removal in its own namespace, where those rules never were, took "not there" for
"removed", and gave their claims back while the rules stayed on the host for good, with
nothing left that named them. A reaper now leaves the networks of an owner from another
namespace that still exists, claims and all, to a reaper in that namespace
(``Orphan.foreign_and_alive``); of one from a namespace that is gone (its links and rules
went with it) it only gives the claims back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .host_commands import network_namespace

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
    return fd if _still_named(fd, path) else None


def _still_named(fd: int, path: str) -> bool:
    """Whether ``path`` still names ``fd``'s file; if not, ``fd`` is closed."""
    try:
        same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
    return same


def _shared_now(fd: int, path: str) -> bool:
    """Turn the exclusive lock on ``fd`` into a shared one; False (``fd`` closed) if lost.

    The kernel drops the old lock before it takes the new one, so a reaper may take the
    file exclusively in between (and unlink it): the lock is then taken anew.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    return _still_named(fd, path)


class OwnerLock:
    """The shared lock that says a backend with this key is alive (see the module text)."""

    def __init__(self, key: str, directory: str = OWNERS_DIR, data_dir: str | None = None) -> None:
        self.key = key
        self.directory = directory
        self.data_dir = data_dir
        self._fd: int | None = None
        #: Whether no other live backend held this key when :meth:`hold` took it. Only then
        #: is what the key made ahead (networks, id ranges) a dead predecessor's to take
        #: back; with another holder alive (two runners on one data directory, or a test's
        #: second backend) it is that holder's, still in use.
        self.alone = False

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now."""
        return self._fd is not None

    async def hold(self) -> None:
        """Take the lock (shared); waits while another backend reaps this key's leftovers.

        The lock is tried exclusively first, which tells whether another live backend
        holds the key (:attr:`alone`), and then kept shared.
        """
        if self._fd is not None:
            return
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, self.key)
        while True:
            alone = True
            fd = _open_locked(path, fcntl.LOCK_EX)
            if fd is not None and not _shared_now(fd, path):
                fd = None  # a reaper came between: the file is its, or gone
            if fd is None:
                alone = False
                fd = _open_locked(path, fcntl.LOCK_SH)
            if fd is not None:
                self._fd, self.alone = fd, alone
                if self.data_dir is not None:
                    _record_data_dir(fd, self.data_dir)
                return
            await asyncio.sleep(_RETRY_SECONDS)

    def release(self, keep_file: bool = False) -> None:
        """Let the lock go, and remove the file when no other holder of this key is left.

        ``keep_file``: leave it (the backend leaves sandboxes running, which a reaper must
        still be able to find should their data directory be deleted).
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if keep_file:
            os.close(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while another holds it
            path = os.path.join(self.directory, self.key)
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass  # shared still, or removed already: a reaper takes the file when it is free
        finally:
            os.close(fd)


def netns_id(path: str = "/proc/thread-self/ns/net") -> str | None:
    """The network namespace of ``path`` (by default the calling thread's) as ``dev:inode``.

    None if unreadable.
    """
    found = network_namespace(path)
    return None if found is None else f"{found[0]}:{found[1]}"


def netns_in_use(wanted: str) -> bool:
    """Whether network namespace ``wanted`` (a :func:`netns_id`) still exists, as far as seen.

    A namespace lives while a process is in it, a mount holds it (``ip netns add`` makes
    one under ``/run/netns``, Docker under ``/run/docker/netns``) or a descriptor of it is
    open; all three are looked at, the cheapest first. Why it matters: a dead owner from a
    namespace that is gone took its links and rules with it, so its network claims are only
    files left to give back; one from a namespace that still exists has its networks there.
    Not seen: a mount of it in another mount namespace only (taken for gone). Blocking: it
    may read every descriptor on the host (25 ms beside 600 processes); call it in a thread.
    """
    pids = [name for name in os.listdir("/proc") if name.isdigit()]
    if any(netns_id(f"/proc/{pid}/ns/net") == wanted for pid in pids):
        return True
    return _mounted(wanted) or any(_open_in(pid, wanted) for pid in pids)


def _mounted(wanted: str) -> bool:
    """Whether a mount in this mount namespace holds namespace ``wanted``."""
    inode = wanted.partition(":")[2]
    try:
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return False
    for line in lines:  # ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...; ROOT is net:[INODE]
        fields = line.split()
        if len(fields) > 4 and fields[3] == f"net:[{inode}]":
            where = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040
            if netns_id(where) == wanted:
                return True
    return False


def _open_in(pid: str, wanted: str) -> bool:
    """Whether process ``pid`` holds a descriptor of namespace ``wanted``."""
    name = f"net:[{wanted.partition(':')[2]}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to look into
        return False
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        with contextlib.suppress(OSError):
            if os.readlink(path) == name and netns_id(path) == wanted:
                return True
    return False


def _record_data_dir(fd: int, data_dir: str) -> None:
    """Write the owner's data directory and network namespace into its lock file.

    Holders of a key share one file; they share a data directory, and so a host.
    """
    data = json.dumps({"data_dir": data_dir, "netns": netns_id()}).encode()
    with contextlib.suppress(OSError):  # without it the key's sandboxes are only never reaped
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))


def recorded_data_dir(key: str, directory: str = OWNERS_DIR) -> str | None:
    """The data directory ``key``'s owner wrote into its lock file; None if it wrote none.

    Read while :func:`orphaned` holds the file, so no owner is writing it then.
    """
    data_dir = _recorded(key, directory).get("data_dir")
    if not isinstance(data_dir, str) or not os.path.isabs(data_dir) or "\0" in data_dir:
        return None
    return data_dir


def recorded_netns(key: str, directory: str = OWNERS_DIR) -> str | None:
    """The network namespace ``key``'s owner wrote; None if none (a version before this)."""
    netns = _recorded(key, directory).get("netns")
    return netns if isinstance(netns, str) else None


def _recorded(key: str, directory: str) -> dict[str, object]:
    """What ``key``'s owner wrote into its lock file (empty if nothing readable)."""
    try:
        with open(os.path.join(directory, key), "rb") as fh:
            found = json.loads(fh.read(4096) or b"null")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@dataclass
class Orphan:
    """A key whose owner is gone, its lock file held exclusively (see :func:`orphaned`).

    ``data_dir`` is the directory the owner recorded (None: it recorded none). ``keep``,
    set by the reaper, leaves the lock file in place for a later one: the owner's sandboxes
    may still run, and if its data directory is deleted later they are to be ended then.
    """

    key: str
    data_dir: str | None
    keep: bool = False
    netns: str | None = None

    @property
    def foreign(self) -> bool:
        """Whether the owner ran in another network namespace than this thread's.

        Its networks (links, firewall rules) are there, out of this reaper's reach: their
        removal from here would find nothing and seem to succeed (see the module
        docstring). An owner that recorded none (a version before this) counts as local.
        """
        return self.netns is not None and self.netns != netns_id()

    @property
    def foreign_and_alive(self) -> bool:
        """Whether the owner's other network namespace still exists (:func:`netns_in_use`)."""
        return self.foreign and self.netns is not None and netns_in_use(self.netns)

    @property
    def abandoned(self) -> bool:
        """Whether the owner's data directory is gone too: no runner will come back.

        Only a directory that no longer exists at all counts; one that exists but is empty
        or another (a data disk not mounted yet, say) might still be the owner's.
        """
        return self.data_dir is not None and not os.path.lexists(self.data_dir)


@contextlib.contextmanager
def orphaned(key: str, directory: str = OWNERS_DIR) -> Iterator[Orphan | None]:
    """``key`` if its owner is gone (its lock then held exclusively), else None.

    On leaving with an orphan its lock file is removed (still held, so no owner took it),
    unless the reaper set :attr:`Orphan.keep`.
    """
    path = os.path.join(directory, key)
    try:
        fd = _open_locked(path, fcntl.LOCK_EX, create=False)
    except OSError:
        fd = None
    if fd is None:
        yield None
        return
    try:
        orphan = Orphan(
            key, recorded_data_dir(key, directory), netns=recorded_netns(key, directory)
        )
        yield orphan
        if not orphan.keep:
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
