"""Runner side of file reads/writes and of log reading for the local backend.

Why pipes: the agent forks a worker inside the sandbox for each file operation (see
``fileops.py``); the runner passes it one end of a pipe and streams the data, so a large
file is never one message and a failing worker (no such directory, disk full) simply closes
the pipe and replies with a typed error. Logs are read straight from ``main.log`` on the
host, so they stay available after the sandbox has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ..base import FileReader, LogChunk, Stream
from ..errors import (
    FileIsDirectory,
    FileNotFound,
    FileOperationError,
    FilePermissionDenied,
    FileTooLarge,
    ParentNotFound,
    SandboxNotRunning,
)
from . import logfile, process, protocol

LOG_POLL_SECONDS = 0.05
PIPE_BYTES = 1 << 20
"""Pipe buffer asked for (Linux's default pipe-max-size): one frame per wakeup, not 16."""
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_ERRORS: dict[str, type[FileOperationError]] = {
    "not_found": FileNotFound,
    "is_directory": FileIsDirectory,
    "permission_denied": FilePermissionDenied,
    "parent_not_found": ParentNotFound,
}


def _check_path(path: str) -> None:
    if not path.startswith("/") or "\0" in path:
        raise FileOperationError(path, "path must be absolute", errno.EINVAL)


def raise_for(reply: dict[str, Any], path: str) -> None:
    """Turn an agent error reply into the matching exception."""
    err = reply.get("error")
    if not err:
        return
    kind = err.get("kind")
    if kind == "too_large":
        raise FileTooLarge(path, int(err["size"]), int(err["max_size"]))
    cls = _ERRORS.get(kind or "", FileOperationError)
    raise cls(path, err.get("message", "failed"), err.get("errno"))


async def _connect(socket_path: str) -> Any:
    try:
        return process.connect(socket_path)
    except OSError:
        raise SandboxNotRunning("sandbox is not running") from None


def _pipe(flags: int) -> tuple[int, int]:
    read_end, write_end = os.pipe2(flags)
    with contextlib.suppress(OSError):  # a lower pipe-max-size: the default still works
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_BYTES)
    return read_end, write_end


async def write_file(
    socket_path: str, path: str, data: bytes, *, make_parents: bool, mode: int
) -> None:
    """Stream ``data`` to a worker that writes it at ``path`` inside the sandbox."""
    _check_path(path)
    sock = await _connect(socket_path)
    read_end, write_end = _pipe(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        msg = {"op": "write_file", "path": path, "make_parents": make_parents, "mode": mode}
        try:
            protocol.send(sock, msg, [read_end])
        finally:
            os.close(read_end)
        with contextlib.suppress(BrokenPipeError):
            await process.write_all(write_end, data)
        os.close(write_end)
        write_end = -1
        reply, _ = await process.recv(sock)
    finally:
        if write_end >= 0:
            os.close(write_end)
        sock.close()
    if reply is None:
        raise FileOperationError(path, "the sandbox ended during the write", errno.EIO)
    raise_for(reply, path)
    if reply.get("written") != len(data):
        raise FileOperationError(path, f"short write ({reply.get('written')} bytes)", errno.EIO)


async def read_file(socket_path: str, path: str, *, max_bytes: int | None) -> bytes:
    """Read ``path`` inside the sandbox whole: :func:`open_file`, every chunk collected."""
    reader = await open_file(socket_path, path, max_bytes=max_bytes)
    try:
        return b"".join([chunk async for chunk in reader])
    finally:
        await reader.aclose()


async def write_file_stream(
    socket_path: str,
    path: str,
    chunks: AsyncIterator[bytes | memoryview],
    *,
    make_parents: bool,
    mode: int,
) -> int:
    """Stream ``chunks`` to a worker that writes them at ``path``; the size written.

    One chunk is in flight at a time (the pipe holds at most :data:`PIPE_BYTES`), so memory
    stays constant whatever the size. A worker that could not open the file closes the
    pipe: the next write fails, no more chunks are taken, and its reply says why.
    """
    _check_path(path)
    sock = await _connect(socket_path)
    read_end, write_end = _pipe(os.O_CLOEXEC | os.O_NONBLOCK)
    total = 0
    try:
        msg = {"op": "write_file", "path": path, "make_parents": make_parents, "mode": mode}
        try:
            protocol.send(sock, msg, [read_end])
        finally:
            os.close(read_end)
        async for chunk in chunks:
            try:
                await process.write_all(write_end, chunk)
            except BrokenPipeError:
                break
            total += len(chunk)
        os.close(write_end)
        write_end = -1
        reply, _ = await process.recv(sock)
    finally:
        if write_end >= 0:
            os.close(write_end)
        sock.close()
    if reply is None:
        raise FileOperationError(path, "the sandbox ended during the write", errno.EIO)
    raise_for(reply, path)
    if reply.get("written") != total:
        raise FileOperationError(path, f"short write ({reply.get('written')} bytes)", errno.EIO)
    return total


class PipeFileReader(FileReader):
    """A file a worker streams into a pipe (see :func:`open_file`)."""

    def __init__(self, path: str, sock: Any, read_end: int, size: int, max_bytes: int | None):
        self.size = size
        self._path = path
        self._sock = sock
        self._fd = read_end
        self._max = max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        while self._fd >= 0:
            try:
                chunk = os.read(self._fd, PIPE_BYTES)
            except BlockingIOError:
                await process.wait_readable(self._fd)
                continue
            if not chunk:
                return
            total += len(chunk)
            if self._max is not None and total > self._max:
                raise FileTooLarge(self._path, total, self._max)
            yield chunk

    async def aclose(self) -> None:
        """Close the pipe and the worker's socket (the worker then stops)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._sock.close()


async def open_file(socket_path: str, path: str, *, max_bytes: int | None) -> FileReader:
    """Open ``path`` inside the sandbox through a worker; the bytes come through a pipe."""
    _check_path(path)
    sock = await _connect(socket_path)
    read_end, write_end = _pipe(os.O_CLOEXEC)
    try:
        msg = {"op": "read_file", "path": path, "max_bytes": max_bytes}
        try:
            protocol.send(sock, msg, [write_end])
        finally:
            os.close(write_end)
        reply, _ = await process.recv(sock)
        if reply is None:
            raise FileOperationError(path, "the sandbox ended during the read", errno.EIO)
        raise_for(reply, path)
        os.set_blocking(read_end, False)
    except BaseException:
        os.close(read_end)
        sock.close()
        raise
    size = reply.get("size")
    return PipeFileReader(path, sock, read_end, size if isinstance(size, int) else -1, max_bytes)


async def follow_log(
    path: Path, ended: Callable[[], bool], follow: bool, since: float | None
) -> AsyncIterator[LogChunk]:
    """Yield log records; with ``follow``, poll for more until ``ended()`` and drained."""
    offset = 0
    while True:
        finished = ended()
        records, offset = await asyncio.to_thread(logfile.read_records, str(path), offset)
        for rec in records:
            if since is None or rec.timestamp >= since:
                stream: Stream = "stdout" if rec.stream == "stdout" else "stderr"
                yield LogChunk(rec.timestamp, stream, rec.data)
        if not follow or (finished and not records):
            return
        if not records:
            await asyncio.sleep(LOG_POLL_SECONDS)


def root_used_bytes(agent_pid: int | None) -> int:
    """Used bytes of the file system at the sandbox's root (its writable layer's).

    ``statvfs`` of ``/proc/PID/root`` itself: the kernel's link to the sandbox's root, never
    a path the sandbox controls (nothing under it is resolved). 0 when the agent is gone.
    """
    if agent_pid is None:
        return 0
    try:
        fs = os.statvfs(f"/proc/{agent_pid}/root")
    except OSError:
        return 0
    return (fs.f_blocks - fs.f_bfree) * fs.f_frsize
