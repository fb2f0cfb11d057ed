"""Reading and writing sandbox files: unary calls, their large-file fallbacks, and streams.

``write_file`` sends more than 1 MiB over sandboxd's ``FileService`` where the server has
it (its frames are relayed as they arrive instead of being held whole at each hop);
otherwise ``read_file``/``write_file`` use the unary RetrieveFile/AddFile (protocol §6)
while the payload fits one message, and fall back to streaming when it does not (over sandboxd's
``FileService`` where the server has it, ``_file_service``; otherwise over StreamExec
scripts, ``_file_stream``; the streaming calls choose the same way): a write larger than
32 MiB (or than the cap the server reported in ``max_size_bytes``) streams at once; a read
or write the server refuses with ``CWSANDBOX_FILE_TOO_LARGE`` (or, for reads, any
RESOURCE_EXHAUSTED) is retried as a stream.
``read_file`` still returns the whole file in memory, so a read the server says is larger
than 256 MiB is refused, pointing to ``read_file_streaming``. Writes have no such cap: the
caller already holds the bytes, and streaming them costs constant extra memory.

A file that cannot be read or written is a ``SandboxFileError`` with a ``CWSANDBOX_FILE_*``
``.reason`` and ``.filepath`` whichever way the server says so, and whichever path ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

from cwsandbox import _loop
from cwsandbox._file_service import Unsupported, service_read, service_write, supported
from cwsandbox._file_stream import Sink
from cwsandbox._file_stream import stream_read as exec_read
from cwsandbox._file_stream import stream_write as exec_write
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._streams import StreamReader
from cwsandbox.exceptions import SandboxFileError, SandboxResourceExhaustedError
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = [
    "CHUNK_BYTES",
    "READ_BUFFER_BYTES",
    "check_contents",
    "check_path",
    "check_source",
    "open_read_stream",
    "read_file",
    "write_file",
    "write_stream",
]

_log = logging.getLogger("cwsandbox")

#: ``write_file`` streams larger payloads over ``FileService`` (when the server has it).
PIPELINE_ABOVE_BYTES = 1024 * 1024
#: The unary cap unless the server reported another (``max_size_bytes``).
UNARY_LIMIT_BYTES = 32 * 1024 * 1024
#: ``read_file`` holds the whole file; beyond this it refuses (use ``read_file_streaming``).
READ_FALLBACK_LIMIT_BYTES = 256 * 1024 * 1024
#: Bytes input is cut into pieces of this size (each then sent as ≤ 64 KiB stdin frames).
CHUNK_BYTES = 1024 * 1024
#: How much of a streamed read may wait unread before the sandbox is slowed down.
READ_BUFFER_BYTES = 8 * 1024 * 1024
_TOO_LARGE = "CWSANDBOX_FILE_TOO_LARGE"


def check_path(filepath: object) -> str:
    """A file path must be a non-blank string."""
    if not isinstance(filepath, str) or not filepath.strip():
        raise ValueError(f"filepath must be a non-empty string, got {filepath!r}")
    return filepath


def check_contents(contents: object) -> bytes:
    """File contents must be bytes-like (text must be encoded by the caller)."""
    if not isinstance(contents, bytes | bytearray | memoryview):
        raise TypeError(
            f"contents must be bytes, not {type(contents).__name__} (encode text first)"
        )
    return bytes(contents)


def check_source(source: object) -> object:
    """A streaming source: bytes, a binary file object, or a (sync or async) iterable of bytes."""
    if isinstance(source, str):
        raise TypeError("source must be bytes or an iterable of bytes, not str (encode it)")
    if isinstance(source, bytes | bytearray | memoryview) or hasattr(source, "read"):
        return source
    if isinstance(source, Iterable | AsyncIterable):
        return source
    raise TypeError(f"source must be bytes or an iterable of bytes, not {type(source).__name__}")


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    raise TypeError(f"file chunks must be bytes, not {type(item).__name__}")


def _pull(iterator: Iterator[Any], done: object) -> list[Any]:
    """Pull up to ~1 MiB of items from a sync iterator (runs on a worker thread)."""
    items: list[Any] = []
    size = 0
    while size < CHUNK_BYTES and len(items) < 1024:
        item = next(iterator, done)
        if item is done:
            items.append(done)
            break
        items.append(item)
        size += len(item) if isinstance(item, bytes | bytearray | memoryview) else 0
    return items


async def _chunks(source: object) -> AsyncIterator[bytes]:
    """Any accepted source as an async iterator of bytes, pulled only as fast as it is sent.

    Blocking sources (file objects, sync iterators) are read on a worker thread so a slow
    disk or generator never stalls the client's event loop.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), CHUNK_BYTES):
            yield bytes(view[start : start + CHUNK_BYTES])
        return
    read = getattr(source, "read", None)
    if callable(read):
        while data := await asyncio.to_thread(read, CHUNK_BYTES):
            yield _as_bytes(data)
        return
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield _as_bytes(item)
        return
    assert isinstance(source, Iterable)
    iterator, done = iter(source), object()
    while True:
        for item in await asyncio.to_thread(_pull, iterator, done):
            if item is done:
                return
            yield _as_bytes(item)


async def stream_read(life: Lifecycle, path: str, timeout: float | None, sink: Sink) -> int:
    """Stream ``path`` into ``sink``: over ``FileService``, or exec scripts without it."""
    try:
        return await service_read(life, path, timeout, sink)
    except Unsupported:
        return await exec_read(life, path, timeout, sink)


async def stream_write(
    life: Lifecycle, path: str, chunks: AsyncIterator[bytes], timeout: float | None
) -> int:
    """Stream ``chunks`` into ``path``: over ``FileService``, or exec scripts without it."""
    try:
        return await service_write(life, path, chunks, timeout)
    except Unsupported:
        return await exec_write(life, path, chunks, timeout)


# --- whole files -----------------------------------------------------------------------------


async def _retrieve(life: Lifecycle, sid: str, path: str, timeout: float) -> bytes:
    request = gw.RetrieveFileSandboxRequest(
        sandbox_id=sid, filepath=path, max_timeout_seconds=int(timeout)
    )
    resp = await life.transport.unary(
        "RetrieveFile",
        request,
        gw.RetrieveFileSandboxResponse,
        timeout=timeout,
        operation="read_file",
        sandbox_id=sid,
        filepath=path,
    )
    if not resp.success:
        raise SandboxFileError(f"Failed to read file '{path}': {resp.error_message}", filepath=path)
    return resp.file_contents


def _learn_cap(life: Lifecycle, err: SandboxFileError) -> None:
    cap = err.metadata.get("max_size_bytes", "")
    if cap.isdigit() and int(cap) > 0:
        life.file_op_cap = min(life.file_op_cap, int(cap))


def _note_fallback(life: Lifecycle, what: str) -> None:
    if not life.streamed_files:
        life.streamed_files = True
        _log.info("%s is too large for one message; streaming it instead", what)


async def read_file(life: Lifecycle, path: str, timeout: float) -> bytes:
    """Wait for RUNNING, then read ``path`` whole: over ``FileService`` where the server has it.

    Why the stream first: one large unary RetrieveFile message is received whole and copied
    at every hop (16 MiB: ~130 MB/s here), while FileService frames flow through as they
    arrive (~390 MB/s), and a small file takes the same time either way. Without the
    service, RetrieveFile, streaming over exec when the file is too large for one message.
    Either way at most :data:`READ_FALLBACK_LIMIT_BYTES` are held in memory.
    """
    sid = await life.ensure_running()
    if await supported(life):
        return await _read_whole(life, path, timeout)
    try:
        return await _retrieve(life, sid, path, timeout)
    except SandboxFileError as err:
        if err.reason != _TOO_LARGE:
            raise
        _learn_cap(life, err)
        size = err.metadata.get("size_bytes", "")
        if size.isdigit() and int(size) > READ_FALLBACK_LIMIT_BYTES:
            raise SandboxFileError(
                f"file '{path}' is {size} bytes, more than read_file holds in memory "
                f"({READ_FALLBACK_LIMIT_BYTES} bytes); use read_file_streaming",
                filepath=path,
                reason=_TOO_LARGE,
                metadata=err.metadata,
            ) from None
    except SandboxResourceExhaustedError:
        pass
    _note_fallback(life, f"file '{path}'")
    return await _read_whole(life, path, timeout, stream_read)


async def _read_whole(
    life: Lifecycle,
    path: str,
    timeout: float,
    read: Callable[[Lifecycle, str, float | None, Sink], Awaitable[int]] = service_read,
) -> bytes:
    """``path`` collected through ``read``, refused past :data:`READ_FALLBACK_LIMIT_BYTES`."""
    parts: list[bytes] = []
    held = 0

    async def keep(chunk: bytes) -> bool:
        nonlocal held
        held += len(chunk)
        if held > READ_FALLBACK_LIMIT_BYTES:
            raise SandboxFileError(
                f"file '{path}' is more than read_file holds in memory "
                f"({READ_FALLBACK_LIMIT_BYTES} bytes); use read_file_streaming",
                filepath=path,
                reason=_TOO_LARGE,
                metadata={"filepath": path},
            )
        parts.append(chunk)
        return True

    await read(life, path, timeout, keep)
    return b"".join(parts)


async def write_file(life: Lifecycle, path: str, data: bytes, timeout: float) -> None:
    """Wait for RUNNING, then AddFile ``data`` at ``path`` (streamed if it is too large).

    More than :data:`PIPELINE_ABOVE_BYTES` go over ``FileService`` where the server has it:
    its frames flow through the control plane and the runner as they arrive, while one
    large AddFile message is received whole at each hop before the next one sees a byte.
    """
    sid = await life.ensure_running()
    if len(data) > PIPELINE_ABOVE_BYTES and await supported(life):
        await service_write(life, path, _chunks(data), timeout)
        return
    if len(data) <= life.file_op_cap:
        request = gw.AddFileSandboxRequest(
            sandbox_id=sid, filepath=path, file_contents=data, max_timeout_seconds=int(timeout)
        )
        try:
            resp = await life.transport.unary(
                "AddFile",
                request,
                gw.AddFileSandboxResponse,
                timeout=timeout,
                operation="write_file",
                sandbox_id=sid,
                filepath=path,
            )
        except SandboxFileError as err:
            if err.reason != _TOO_LARGE:
                raise
            _learn_cap(life, err)
        except SandboxResourceExhaustedError as err:
            if "larger than max" not in str(err):
                raise
        else:
            if not resp.success:
                detail = f": {resp.error_message}" if resp.error_message else ""
                raise SandboxFileError(f"Failed to write file '{path}'{detail}", filepath=path)
            return
    _note_fallback(life, f"a {len(data)}-byte write to '{path}'")
    await stream_write(life, path, _chunks(data), timeout)


# --- streams -----------------------------------------------------------------------------------


def open_read_stream(life: Lifecycle, path: str, timeout: float | None) -> StreamReader[bytes]:
    """Start streaming ``path`` out of the sandbox; chunks arrive in order, memory bounded."""
    future_box: list[Any] = []

    def cancel() -> None:
        if future_box:
            future_box[0].cancel()

    reader: StreamReader[bytes] = StreamReader(limit=READ_BUFFER_BYTES, weigh=len, on_close=cancel)

    async def go() -> None:
        try:
            await stream_read(life, path, timeout, reader._put)
        except asyncio.CancelledError:
            reader._end(None)
            raise
        except BaseException as exc:
            reader._end(exc)
            raise
        reader._end(None)

    future = _loop.submit(go())
    future.add_done_callback(_consume_error)
    future_box.append(future)
    return reader


def _consume_error(future: Any) -> None:
    """The reader re-raises the error; mark the future's exception as retrieved."""
    if not future.cancelled():
        future.exception()


async def write_stream(life: Lifecycle, path: str, source: object, timeout: float | None) -> None:
    """Stream ``source`` into ``path`` (waiting for RUNNING first)."""
    await life.ensure_running()
    await stream_write(life, path, _chunks(source), timeout)
