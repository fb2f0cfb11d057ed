"""File reads and writes performed *inside* a sandbox, by a process forked from its agent.

Why inside rather than through the host path of the overlay: the forked worker has the
sandbox's root, mounts and credentials (its root: an unprivileged host uid, without
capabilities), so mounted files are read-only and "permission denied" means what it would
mean to the sandbox's own processes. Every path is opened with ``openat2`` in root without
magic links (``resolve.py``): symlinks resolve within the sandbox, ``..`` stops at its
``/``, and ``/proc/<pid>/{fd,exe,root,cwd}`` are refused. Data moves through a pipe the
runner passes in, so a 32 MiB payload never sits in one message. Standard library only
(runs in the agent).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

from . import protocol
from .resolve import Root

CHUNK = 1 << 20

_KINDS = {
    errno.ENOENT: "not_found",
    errno.EISDIR: "is_directory",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.ETXTBSY: "permission_denied",
    errno.ELOOP: "permission_denied",  # a refused magic link (or a symlink loop)
    errno.EXDEV: "permission_denied",  # a walk that would leave the sandbox root
}


def error_reply(exc: OSError, path: str, *, writing: bool = False) -> dict[str, Any]:
    """Describe an ``OSError`` as a typed error the runner turns into an exception."""
    code = exc.errno or errno.EIO
    kind = _KINDS.get(code, "io")
    if writing and code in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        # EEXIST comes from creating parents when one of them is a file: like reading
        # through that file (ENOTDIR), the parent directory does not exist.
        kind = "parent_not_found"
    elif code == errno.ENOTDIR:
        kind = "not_found"
    message = os.strerror(code)
    if code in (errno.ELOOP, errno.EXDEV):
        message = "refused: the path leaves the sandbox (a /proc magic link) or loops"
    return {
        "error": {
            "kind": kind,
            "errno": code,
            "path": path,
            "message": message,
        }
    }


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy(src: int, dst: int, limit: int | None = None, *, splice: bool = True) -> int:
    """Move bytes from ``src`` to ``dst`` until end of file or ``limit``; how many moved.

    Why splice, for reads: the kernel puts the file's page-cache pages into the pipe to
    the runner by reference, without a copy through this process (1 GiB streaming reads
    606 -> 717 MB/s through the platform). Files that cannot be spliced (``/proc``, some
    devices: ``EINVAL``) are copied through a buffer instead. Writes (pipe to file) gain
    nothing measurable from it (the runner's pipe writes then cost more), so they copy.
    """
    moved = 0
    while limit is None or moved < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - moved)
        if splice:
            try:
                n = os.splice(src, dst, want)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                splice = False
                continue
        else:
            chunk = os.read(src, want)
            _write_all(dst, chunk)
            n = len(chunk)
        if not n:
            break
        moved += n
    return moved


def read_file(root: Root, conn: socket.socket, msg: dict[str, Any], out_fd: int) -> None:
    """Reply ``{"ok", "size"}`` then stream the file into ``out_fd``; or reply an error."""
    path = msg["path"]
    max_bytes = msg.get("max_bytes")
    if max_bytes is not None and not isinstance(max_bytes, int):
        max_bytes = 0
    try:
        fd = root.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        protocol.send(conn, error_reply(exc, path))
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            protocol.send(conn, error_reply(IsADirectoryError(errno.EISDIR, ""), path))
            return
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            protocol.send(conn, error_reply(OSError(errno.EINVAL, ""), path))
            return
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        if max_bytes is not None and size is not None and size > max_bytes:
            err = {"kind": "too_large", "path": path, "size": size, "max_size": max_bytes}
            protocol.send(conn, {"error": err | {"message": "file too large"}})
            return
        os.set_blocking(fd, True)
        os.set_blocking(out_fd, True)
        protocol.send(conn, {"ok": True, "size": size})
        _copy(fd, out_fd, None if max_bytes is None else max_bytes + 1)
    except BrokenPipeError:
        pass
    except OSError as exc:
        protocol.send(conn, error_reply(exc, path))
    finally:
        os.close(fd)


def write_file(root: Root, conn: socket.socket, msg: dict[str, Any], in_fd: int) -> None:
    """Copy everything from ``in_fd`` into the file, then reply ``{"ok", "written"}``."""
    path = msg["path"]
    mode = msg.get("mode", 0o644)
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        mode = 0o644
    try:
        if msg.get("make_parents"):
            root.makedirs(os.path.dirname(path) or "/")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_NOCTTY
        fd = root.open(path, flags, mode & 0o777)
    except OSError as exc:
        protocol.send(conn, error_reply(exc, path, writing=True))
        return
    st = os.fstat(fd)
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) or stat.S_ISDIR(st.st_mode):
        os.close(fd)
        protocol.send(conn, error_reply(OSError(errno.EINVAL, ""), path, writing=True))
        return
    os.set_blocking(fd, True)
    try:
        os.set_blocking(in_fd, True)
        written = _copy(in_fd, fd, splice=False)
    except OSError as exc:
        protocol.send(conn, error_reply(exc, path))
        return
    finally:
        os.close(fd)
    protocol.send(conn, {"ok": True, "written": written})
