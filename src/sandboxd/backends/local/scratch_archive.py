"""A scratch file system to a tar archive and back, without following anything the sandbox made.

Both directions run in the runner, as host root, on a file system the sandbox wrote: every
name, symlink, hard link and special file in it is hostile (DESIGN.md rule 9). So:

* **Writing** walks the tree from a descriptor of the file system's root, one component at
  a time, with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
  RESOLVE_NO_XDEV)`` and ``O_NOFOLLOW``: no symlink is ever followed (it is archived as its
  text), nothing on another mount is entered, and each opened file is checked to be the
  regular file ``lstat`` saw. Hard links cannot reach a host file (links never cross file
  systems, and this one is the sandbox's own); each name is archived as a file of its own.
  Devices, FIFOs and sockets are skipped (the mount is ``nodev`` anyway). Owners are
  written as the sandbox's own ids (host id minus the sandbox's first id), so a restore
  into another sandbox, with other host ids, gives them the same owners.
* **Extracting** accepts only relative, normal names (no ``..``, no absolute path, no
  ``.``), directories, regular files and symlinks: anything else fails the whole restore
  (:class:`ArchiveError`). Every parent directory is opened with ``RESOLVE_NO_SYMLINKS``,
  so a symlink the archive made earlier (``link -> /etc``) cannot redirect a later entry
  (``link/passwd``); files are created with ``O_EXCL | O_NOFOLLOW``. Owners are mapped
  into the target sandbox's id range, set-id bits dropped. The size is bounded by the file
  system itself (``ENOSPC`` fails the restore).

Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from typing import IO

from .resolve import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    openat2,
)

CONFINED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
MAX_DEPTH = 256
"""Directory levels archived; a deeper tree fails the snapshot (each level holds a descriptor)."""
NOBODY = 65534
_COPY_BYTES = 1 << 20


class ArchiveError(Exception):
    """The archive (or the tree to archive) is refused; the message says which entry and why."""


def _sandbox_id(host_id: int, first: int, count: int) -> int:
    return host_id - first if first <= host_id < first + count else NOBODY


def _host_id(sandbox_id: int, first: int, count: int) -> int:
    return first + sandbox_id if 0 <= sandbox_id < count else first + NOBODY % count


def write_archive(root_fd: int, out: IO[bytes], *, first_id: int, id_count: int) -> None:
    """Write the tree under ``root_fd`` (a directory descriptor) to ``out`` as a tar stream."""
    with tarfile.open(
        fileobj=out, mode="w|", format=tarfile.GNU_FORMAT, errors="surrogateescape"
    ) as tar:
        _write_dir(tar, root_fd, "", 0, (first_id, id_count))


def _info(name: str, st: os.stat_result, ids: tuple[int, int]) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode) & 0o1777
    info.uid = _sandbox_id(st.st_uid, *ids)
    info.gid = _sandbox_id(st.st_gid, *ids)
    info.mtime = int(st.st_mtime)
    return info


def _write_dir(
    tar: tarfile.TarFile, dir_fd: int, prefix: str, depth: int, ids: tuple[int, int]
) -> None:
    if depth >= MAX_DEPTH:
        raise ArchiveError(f"{prefix!r}: more than {MAX_DEPTH} directory levels")
    for name in sorted(os.listdir(dir_fd)):
        path = f"{prefix}{name}"
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            info = _info(path, st, ids)
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=dir_fd)
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            child = _open_same(dir_fd, name, os.O_RDONLY | os.O_DIRECTORY, st)
            try:
                info = _info(path, st, ids)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                _write_dir(tar, child, f"{path}/", depth + 1, ids)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            fd = _open_same(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK, st)
            with os.fdopen(fd, "rb") as src:
                info = _info(path, os.fstat(fd), ids)
                info.size = os.fstat(fd).st_size
                tar.addfile(info, src)
        # devices, FIFOs and sockets are not archived (see the module docstring)


def _open_same(dir_fd: int, name: str, flags: int, seen: os.stat_result) -> int:
    """Open ``name`` in ``dir_fd`` without following or leaving; the object ``seen`` was."""
    fd = openat2(dir_fd, name, flags | os.O_NOFOLLOW, resolve=CONFINED)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        raise ArchiveError(f"{name!r} changed while it was archived")
    return fd


def safe_parts(name: str) -> list[str]:
    """The components of an archive member's name; ``ArchiveError`` unless relative and normal."""
    if not name or "\x00" in name or name.startswith("/"):
        raise ArchiveError(f"entry {name[:200]!r}: not a relative path")
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ArchiveError(f"entry {name[:200]!r}: '..', '.' or empty components")
    return parts


def extract_archive(root_fd: int, archive: IO[bytes], *, first_id: int, id_count: int) -> int:
    """Fill the directory ``root_fd`` from the tar stream ``archive``; how many entries."""
    count = 0
    try:
        with tarfile.open(fileobj=archive, mode="r|", errors="surrogateescape") as tar:
            for member in tar:
                _extract_one(tar, member, root_fd, first_id, id_count)
                count += 1
    except tarfile.TarError as exc:
        raise ArchiveError(f"not a valid tar archive: {exc}") from None
    return count


def _extract_one(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int, first: int, count: int
) -> None:
    parts = safe_parts(member.name)
    parent = _open_parent(root_fd, parts[:-1], member.name)
    name = parts[-1]
    uid, gid = _host_id(member.uid, first, count), _host_id(member.gid, first, count)
    mode = member.mode & 0o1777
    try:
        if member.isdir():
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise ArchiveError(f"entry {member.name!r}: not a directory") from None
            fd = openat2(parent, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, 0, CONFINED)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        elif member.isfile():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            try:
                fd = openat2(parent, name, flags, 0o600, CONFINED)
            except FileExistsError:
                raise ArchiveError(f"entry {member.name!r}: appears twice") from None
            try:
                src = tar.extractfile(member)
                if src is not None:
                    for chunk in _chunks(src):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)  # text only; never followed here
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
        else:
            kind = "hard link" if member.islnk() else "special file"
            raise ArchiveError(f"entry {member.name!r}: a {kind}, which restores do not accept")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArchiveError("the archive does not fit in the scratch file system") from None
        raise ArchiveError(f"entry {member.name!r}: {exc.strerror}") from None
    finally:
        if parent != root_fd:
            os.close(parent)


def _open_parent(root_fd: int, parts: list[str], name: str) -> int:
    if not parts:
        return root_fd
    try:
        return openat2(
            root_fd, "/".join(parts), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, 0, CONFINED
        )
    except OSError as exc:
        # ELOOP: a symlink on the way (the archive tried to write through one it made)
        why = exc.strerror
        raise ArchiveError(f"entry {name!r}: its directory cannot be used ({why})") from None


def _chunks(src: IO[bytes]) -> Iterator[bytes]:
    while chunk := src.read(_COPY_BYTES):
        yield chunk
