"""Scratch file systems of the local backend: made, filled from a snapshot, archived.

A scratch file system is made exactly like the writable layer (``disk.py``): an ext4 of the
requested size on a loop device, as a detached mount, so its cap is hard (``ENOSPC``) and it
lives in no host mount table. The agent attaches it at the mount path inside the sandbox
(``rootfs.mount_scratch``), emptied first (no ``lost+found``). The runner keeps one more
descriptor of the same mount (:class:`ScratchFs`), which is what makes snapshots possible
without ever resolving a path the sandbox controls: the archive is written from that descriptor
(``scratch_archive.py``), while the sandbox runs (the file system frozen with ``FIFREEZE``
for the copy, so it is consistent) or after it ended (its mount namespace is gone, the file
system lives on through the descriptor until the sandbox is destroyed).

What it costs: while the runner holds the descriptor, the file system and its loop device
stay, also after the sandbox ended, until ``destroy``. A runner that restarts loses it (by
design nothing on the host names the file system), so a sandbox re-adopted after a restart
cannot be snapshotted (``BackendUnavailable`` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from ..base import FileReader, ScratchSpec
from ..errors import BackendError, RunnerExhausted, SandboxStartError
from .disk import DiskLayers
from .disk_template import DiskError
from .resolve import openat2
from .scratch_archive import CONFINED, ArchiveError, extract_archive, write_archive

log = logging.getLogger(__name__)
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
CHUNK_BYTES = 1 << 20
LAYER_DIRS = ("upper", "work", "lost+found")  # made for a writable layer; unused here


class ScratchFs:
    """The runner's descriptor of one sandbox's scratch file system, and its owner ids."""

    def __init__(self, spec: ScratchSpec, mount_fd: int, first_id: int, id_count: int) -> None:
        self.spec = spec
        self.mount_fd = mount_fd
        self.first_id = first_id
        self.id_count = id_count
        self.lock = asyncio.Lock()  # one archive at a time (a second FIFREEZE is EBUSY)

    def close(self) -> None:
        """Let the file system go (it is freed once the sandbox's mount is gone too)."""
        if self.mount_fd >= 0:
            os.close(self.mount_fd)
            self.mount_fd = -1

    def open_content(self) -> int:
        """A read-only descriptor of the directory the sandbox sees at its mount path."""
        return openat2(self.mount_fd, ".", os.O_RDONLY | os.O_DIRECTORY, 0, CONFINED)


async def make_scratch(
    layers: DiskLayers, spec: ScratchSpec, first_id: int, id_count: int
) -> tuple[int, ScratchFs]:
    """A new scratch file system for ``spec``, restored if it says so.

    Returns the descriptor to hand to the agent and the runner's own :class:`ScratchFs`.
    """
    try:
        mount_fd = await layers.take(spec.size_bytes)
    except DiskError as exc:
        if isinstance(exc, RunnerExhausted):  # a full disk: the runner's fault (DiskFull)
            raise RunnerExhausted(exc.resource, f"scratch file system: {exc}") from None
        raise SandboxStartError(f"scratch file system: {exc}") from None
    try:
        for name in LAYER_DIRS:  # the sandbox gets an empty file system
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=mount_fd)
        content = openat2(mount_fd, ".", os.O_RDONLY | os.O_DIRECTORY, 0, CONFINED)
        try:
            os.fchown(content, first_id, first_id)  # the sandbox's root owns its mount point
            if spec.restore_archive is not None:
                await asyncio.to_thread(_restore, content, spec.restore_archive, first_id, id_count)
        finally:
            os.close(content)
        kept = os.dup(mount_fd)
    except BaseException:
        os.close(mount_fd)
        raise
    return mount_fd, ScratchFs(spec, kept, first_id, id_count)


def _restore(content_fd: int, archive: Path, first_id: int, id_count: int) -> None:
    try:
        with open(archive, "rb") as src:
            extract_archive(content_fd, src, first_id=first_id, id_count=id_count)
    except (ArchiveError, OSError) as exc:
        raise SandboxStartError(f"restoring the scratch file system failed: {exc}") from None


class ScratchArchiveReader(FileReader):
    """The tar stream of a scratch file system, written by a thread into a pipe.

    Memory stays constant (the pipe and one chunk). With ``freeze`` the file system is
    frozen from the first byte to the last and thawed whatever happens (the reader closes
    early, the archive fails); writers in the sandbox wait meanwhile.
    """

    def __init__(self, scratch: ScratchFs, *, freeze: bool) -> None:
        self.size = -1
        self._scratch = scratch
        self._freeze = freeze
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="scratch-archive", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        frozen = -1
        try:
            content = self._scratch.open_content()
            try:
                if self._freeze:
                    os.fsync(content)
                    fcntl.ioctl(content, FIFREEZE, 0)
                    frozen = content
                with os.fdopen(self._write_fd, "wb", buffering=CHUNK_BYTES) as out:
                    self._write_fd = -1
                    write_archive(
                        content,
                        out,
                        first_id=self._scratch.first_id,
                        id_count=self._scratch.id_count,
                    )
            finally:
                if frozen >= 0:
                    with contextlib.suppress(OSError):
                        fcntl.ioctl(frozen, FITHAW, 0)
                os.close(content)
        except BaseException as exc:
            self._error = exc
        finally:
            if self._write_fd >= 0:
                os.close(self._write_fd)
                self._write_fd = -1

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await asyncio.to_thread(os.read, self._read_fd, CHUNK_BYTES)
            if not chunk:
                break
            yield chunk
        await asyncio.to_thread(self._thread.join)
        if self._error is not None:
            error = self._error
            if isinstance(error, BrokenPipeError):
                return
            raise BackendError(f"archiving the scratch file system failed: {error}")

    async def aclose(self) -> None:
        """Stop reading; the writer thread then ends (its pipe breaks) and thaws."""
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        await asyncio.to_thread(self._thread.join)


class LockedReader(FileReader):
    """A reader that holds ``lock`` until it is closed (one archive per file system)."""

    def __init__(self, reader: FileReader, lock: asyncio.Lock) -> None:
        self.size = reader.size
        self._reader = reader
        self._lock: asyncio.Lock | None = lock

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._reader.__aiter__()

    async def aclose(self) -> None:
        """Close the reader, then let the next archive (or destroy) go."""
        try:
            await self._reader.aclose()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
