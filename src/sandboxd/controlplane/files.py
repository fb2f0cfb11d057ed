"""File bytes between clients and sandboxes, on operation streams of their own.

Two ways in, one way to the runner:

* the public unary ``AddFile``/``RetrieveFile`` (v1beta2.md §6, up to 32 MiB; what the
  official client uses) go through :func:`write_whole` and :func:`read_whole`;
* our own ``sandboxd.files.v1.FileService`` streams files of any size (what our client
  uses, falling back to the public calls where a server lacks it): :class:`FileService`.

Either way the bytes travel to the runner on an ``Operate`` stream bound to one file
operation (:mod:`sandboxd.controlplane.operations`), never on the runner's control stream,
and data frames are relayed as they were encoded (:mod:`sandboxd.controlplane.raw_frames`),
so a large transfer delays no lifecycle command and no other operation. Memory stays
constant per transfer: the pipes between the client's call and the runner's hold a few
frames, and a full one stops reading the faster side (HTTP/2 flow control then slows it
down). A unary call holds its one message, as any unary call does.

Failures are gRPC statuses with the ``CWSANDBOX_FILE_*`` reasons of the public error
contract; the runner says which (``FileDone.failure``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sandboxd.controlplane.lifecycle import Lifecycle, check_file_path, file_too_large
from sandboxd.controlplane.operations import Operation, Operations
from sandboxd.controlplane.raw_frames import DOWN_DATA, UP_DATA, data_length, encode, payload
from sandboxd.controlplane.runner_link import failure_error, runner_unavailable
from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.errors import ApiError, abort_with, invalid_argument
from sandboxd_protocol.sandboxd_v1 import files_pb2, files_pb2_grpc, runner_pb2

Context = grpc.aio.ServicerContext[Any, Any]
MAX_UNARY_FILE_BYTES = 32 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
"""Bytes per frame sent to a runner (its pipe to the sandbox takes them in one write)."""
MAX_CLIENT_FRAME_BYTES = 4 * 1024 * 1024
"""The largest data frame a client may send (bounds what one transfer holds here)."""
_END = runner_pb2.OperationDown(end=runner_pb2.DataEnd())


def _done(frame: runner_pb2.OperationUp | None, runner_id: str) -> runner_pb2.FileDone:
    if frame is None:
        raise runner_unavailable(runner_id, "its file stream ended without an answer")
    kind = frame.WhichOneof("frame")
    if kind != "done":
        raise runner_unavailable(runner_id, f"it answered a file operation with {kind!r}")
    if frame.done.HasField("failure"):
        raise failure_error(frame.done.failure)
    return frame.done


async def _write(operation: Operation, frames: AsyncIterator[bytes]) -> int:
    """Send ``frames`` (encoded data frames) and the end; the size the runner wrote.

    A runner that refuses early (the file cannot be opened) answers at once, and that answer
    wins over the frames still on their way.
    """

    async def send_all() -> None:
        async for frame in frames:
            if not await operation.send(frame):
                return
        await operation.send(_END)

    sender = asyncio.create_task(send_all())
    answer = asyncio.ensure_future(operation.receive())
    try:
        await asyncio.wait({sender, answer}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            sender.result()  # the client's data failed (a bad frame): that is the answer
            await answer
        return _done(answer.result(), operation.runner_id).size
    finally:
        for task in (sender, answer):
            task.cancel()
        await asyncio.gather(sender, answer, return_exceptions=True)


async def _read(operation: Operation) -> AsyncIterator[bytes | runner_pb2.OperationUp]:
    """The runner's ``opened`` frame and its data frames (still encoded), in order.

    The runner's failure is raised as ApiError.
    """
    while True:
        frame = await operation.receive()
        if frame is None:
            raise runner_unavailable(operation.runner_id, "its file stream ended early")
        if isinstance(frame, bytes):
            yield frame
            continue
        kind = frame.WhichOneof("frame")
        if kind == "done":
            _done(frame, operation.runner_id)
            return
        if kind == "opened":
            yield frame
        elif kind == "data":  # (only when not raw: an operation opened without raw_data)
            yield encode(UP_DATA, frame.data)


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_BYTES):
        yield encode(DOWN_DATA, view[start : start + CHUNK_BYTES])


class Files:
    """File operations on running sandboxes: the unary public calls and the streaming service."""

    def __init__(self, lifecycle: Lifecycle, operations: Operations) -> None:
        self._lifecycle = lifecycle
        self._operations = operations

    async def _open(self, record: SandboxRecord, frame: runner_pb2.OperationDown) -> Operation:
        link = self._lifecycle.running_link(record)
        return await self._operations.open(record.runner_id, link, frame, raw_data=True)

    async def write_whole(self, record: SandboxRecord, path: str, contents: bytes) -> None:
        """AddFile: write ``contents`` (at most 32 MiB), once more if the runner was lost.

        The write is idempotent (the file is replaced), so a transfer cut by a lost runner
        connection is sent again whole, on the runner's next connection.
        """
        check_file_path(path)
        if len(contents) > MAX_UNARY_FILE_BYTES:
            raise file_too_large(path, len(contents), MAX_UNARY_FILE_BYTES)
        for attempt in (1, 2):
            operation = await self._open(record, _open_write(record.sandbox_id, path))
            try:
                await _write(operation, _chunked(contents))
                return
            except ApiError as error:
                if attempt == 2 or error.reason != "CWSANDBOX_RUNNER_UNAVAILABLE":
                    raise
            finally:
                operation.close()

    async def read_whole(self, record: SandboxRecord, path: str) -> bytes:
        """RetrieveFile: the whole file (at most 32 MiB), once more if the runner was lost."""
        check_file_path(path)
        for attempt in (1, 2):
            operation = await self._open(record, _open_read(record.sandbox_id, path))
            parts: list[memoryview] = []
            try:
                async for frame in _read(operation):
                    if isinstance(frame, bytes):
                        parts.append(payload(frame))
                return b"".join(parts)
            except ApiError as error:
                if attempt == 2 or error.reason != "CWSANDBOX_RUNNER_UNAVAILABLE":
                    raise
            finally:
                operation.close()
        raise AssertionError("unreachable")

    async def write_stream(
        self, record: SandboxRecord, path: str, frames: AsyncIterator[bytes]
    ) -> int:
        """Stream encoded data ``frames`` into ``path``; the size written."""
        check_file_path(path)
        operation = await self._open(record, _open_write(record.sandbox_id, path))
        try:
            return await _write(operation, frames)
        finally:
            operation.close()

    async def read_stream(
        self, record: SandboxRecord, path: str
    ) -> AsyncGenerator[bytes | runner_pb2.OperationUp]:
        """The runner's ``opened`` frame, then the file's data frames (encoded)."""
        check_file_path(path)
        operation = await self._open(record, _open_read(record.sandbox_id, path, max_bytes=0))
        try:
            async for frame in _read(operation):
                yield frame
        finally:
            operation.close()


def _open_write(sandbox_id: str, path: str) -> runner_pb2.OperationDown:
    return runner_pb2.OperationDown(
        write_file=runner_pb2.OpenFileWrite(sandbox_id=sandbox_id, path=path)
    )


def _open_read(
    sandbox_id: str, path: str, max_bytes: int = MAX_UNARY_FILE_BYTES
) -> runner_pb2.OperationDown:
    return runner_pb2.OperationDown(
        read_file=runner_pb2.OpenFileRead(sandbox_id=sandbox_id, path=path, max_bytes=max_bytes)
    )


class FileService(files_pb2_grpc.FileServiceServicer):
    """``sandboxd.files.v1.FileService``: files of any size, streamed (see files.proto)."""

    def __init__(self, lifecycle: Lifecycle, files: Files) -> None:
        self._lifecycle = lifecycle
        self._files = files

    async def WriteFile(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> files_pb2.WriteFileResponse:
        """``init``, then data frames until the client half-closes (frames arrive encoded)."""
        try:
            raw = await anext(request_iterator, None)
            try:
                first = files_pb2.WriteFileRequest.FromString(raw or b"")
            except DecodeError as exc:
                raise invalid_argument("init", f"could not be decoded: {exc}") from None
            if first.WhichOneof("frame") != "init":
                raise invalid_argument("init", "the first message of WriteFile must be init")
            record = await self._lifecycle.record(first.init.sandbox_id)
            size = await self._files.write_stream(
                record, first.init.path, _client_chunks(request_iterator)
            )
        except ApiError as error:
            await abort_with(context, error)
        return files_pb2.WriteFileResponse(size=size)

    async def ReadFile(
        self, request: files_pb2.ReadFileRequest, context: Context
    ) -> AsyncIterator[files_pb2.ReadFileResponse]:
        """``info`` (the size), then the bytes."""
        try:
            record = await self._lifecycle.record(request.sandbox_id)
            frames = self._files.read_stream(record, request.path)
            async with contextlib.aclosing(frames):
                async for frame in frames:
                    if isinstance(frame, bytes):
                        yield frame  # type: ignore[misc]  # a data frame, encoded as it came
                    else:
                        info = files_pb2.ReadFileInfo(size=frame.opened.size)
                        yield files_pb2.ReadFileResponse(info=info)
        except ApiError as error:
            await abort_with(context, error)


async def _client_chunks(requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The client's data frames, each checked to be one ``data`` field of at most 4 MiB.

    They go on to the runner as they are (``WriteFileRequest.data`` is field 6, like
    ``OperationDown.data``); anything else after ``init`` is refused.
    """
    async for raw in requests:
        length = data_length(raw, DOWN_DATA)
        if length is None:
            raise invalid_argument("data", "after init, WriteFile takes only data frames")
        if length > MAX_CLIENT_FRAME_BYTES:
            raise invalid_argument(
                "data", f"a data frame may carry at most {MAX_CLIENT_FRAME_BYTES} bytes"
            )
        yield raw
