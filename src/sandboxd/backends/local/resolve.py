"""Resolving sandbox-supplied paths inside the sandbox root, and nowhere else.

Why ``openat2`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``: every path that arrives
through the API (file reads and writes, directory creation, mounted files, an exec's
``argv[0]``, ``PATH`` entries and ``cwd``) is written by someone we do not trust, and so are
the symlinks inside the sandbox it may walk through. ``RESOLVE_IN_ROOT`` makes the kernel
treat the given root as ``/`` for the whole walk, including ``..`` and absolute symlink
targets, and ``RESOLVE_NO_MAGICLINKS`` refuses the ``/proc/<pid>/{fd,exe,cwd,root}`` links
that jump to whatever object a process holds (the classic escape through a leaked host
descriptor, CVE-2019-5736 and CVE-2024-21626). Ordinary symlinks are followed, but only
within the root. The walk and the open are one system call, so a symlink swapped in between
a check and a use cannot redirect it.

These functions run in the agent and its workers, whose root already is the sandbox root
and which hold no host descriptor at all; resolving in root is the second wall, not the
only one. Standard library only (loaded in the agent).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

IN_SANDBOX = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS

_SYS_OPENAT2 = 437  # the same number on every architecture (added after the table merge)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0, resolve: int = IN_SANDBOX) -> int:
    """``openat2(2)``: open ``path`` relative to ``dir_fd`` under ``resolve`` rules; an fd.

    ``O_CLOEXEC`` is always added. Raises ``OSError`` with the kernel's errno and ``path``
    (``ELOOP`` or ``EXDEV`` when a magic link or an escape was refused).
    """
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    buf = ctypes.create_string_buffer(how, len(how))
    raw = os.fsencode(path)
    while True:
        fd = _libc.syscall(_SYS_OPENAT2, dir_fd, raw, buf, len(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN):
            raise OSError(err, os.strerror(err), path)


class Root:
    """The sandbox root as an ``O_PATH`` descriptor, and path operations confined to it."""

    def __init__(self, path: str = "/") -> None:
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        """Release the root descriptor."""
        os.close(self.fd)

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self, path: str, flags: int, mode: int = 0) -> int:
        """Open ``path`` (absolute, or relative to the root) without leaving the root."""
        return openat2(self.fd, path, flags, mode)

    def open_dir(self, path: str) -> int:
        """An ``O_PATH`` descriptor of the directory at ``path``; a magic link is refused."""
        try:
            return self.open(path, os.O_PATH | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PermissionError(errno.EACCES, "refused: magic link", path) from None
            raise

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """``mkdir -p`` inside the root, one component at a time.

        Every prefix is resolved from the root descriptor with ``RESOLVE_IN_ROOT`` and the
        missing component is created relative to its parent's descriptor, so however the
        sandbox swaps symlinks meanwhile, each directory is made inside the root. An
        existing non-directory component raises ``FileExistsError`` like ``os.makedirs``.
        """
        parts = [p for p in path.split("/") if p and p != "."]
        prefix = ""
        for part in parts:
            parent = prefix or "/"
            prefix = f"{prefix}/{part}"
            try:
                os.close(self.open_dir(prefix))
                continue
            except FileNotFoundError:
                if part == "..":
                    raise
            except NotADirectoryError:
                raise FileExistsError(errno.EEXIST, "not a directory", prefix) from None
            parent_fd = self.open_dir(parent)
            try:
                os.mkdir(part, mode, dir_fd=parent_fd)
            except FileExistsError:
                pass  # a concurrent creator won; a file in the way fails just below
            finally:
                os.close(parent_fd)
            try:
                os.close(self.open_dir(prefix))
            except NotADirectoryError:
                raise FileExistsError(errno.EEXIST, "not a directory", prefix) from None

    def real_path(self, fd: int) -> str:
        """The path of an open descriptor as seen from the root (symlinks resolved)."""
        return os.readlink(f"/proc/self/fd/{fd}")

    def real_path_of(self, path: str) -> str:
        """``path`` resolved in root, every symlink followed (``realpath`` in the sandbox)."""
        fd = self.open(path, os.O_PATH)
        try:
            return self.real_path(fd)
        finally:
            os.close(fd)


def find_executable(root: Root, program: str, path_env: str, cwd: str) -> str:
    """Resolve ``argv[0]`` the way ``execvp`` would, but only to files inside the root.

    Returns the path to hand to ``execve``: the candidate's directory with every symlink
    resolved in root, plus its own name, so the process keeps its name (``ps`` shows
    ``python``, not ``python3.11``; busybox applets still dispatch). The whole candidate was
    opened in root without magic links first; the kernel re-resolves only that last name,
    and nothing it could be swapped for leads out of the sandbox, whose processes hold no
    host descriptor and whose executable links name only sandbox files or the sealed
    interpreter copy. A name without ``/`` is searched
    in ``path_env`` (empty entries mean the current directory); a relative name with ``/``
    is taken relative to ``cwd``. Raises ``FileNotFoundError`` or ``PermissionError``, with
    ``ELOOP`` turned into ``PermissionError`` for a refused magic link.
    """
    if "/" in program:
        candidates = [program if program.startswith("/") else f"{cwd.rstrip('/')}/{program}"]
    else:
        candidates = []
        for directory in path_env.split(":"):
            base = directory or cwd
            if not base.startswith("/"):
                base = f"{cwd.rstrip('/')}/{base}"
            candidates.append(f"{base.rstrip('/')}/{program}")
    denied: OSError | None = None
    for candidate in candidates:
        try:
            fd = root.open(candidate, os.O_PATH)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                denied = PermissionError(errno.EACCES, "refused: magic link", program)
            elif exc.errno == errno.EACCES:
                denied = exc
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not os.access(f"/proc/self/fd/{fd}", os.X_OK):
                denied = PermissionError(errno.EACCES, "Permission denied", program)
                continue
        finally:
            os.close(fd)
        parent, _, name = candidate.rpartition("/")
        if name in ("", ".", ".."):
            return root.real_path_of(candidate)
        return f"{root.real_path_of(parent or '/').rstrip('/')}/{name}"
    if denied is not None:
        raise denied
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
