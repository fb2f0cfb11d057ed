"""Files of any size over sandboxd's own ``FileService`` (``sandboxd.files.v1``).

Why a service of its own: the public protocol moves large files as the stdin and stdout of
shell scripts over StreamExec (``_file_stream``), which costs a ``cat`` process, exec
framing and 64 KiB stdin frames. sandboxd servers also offer ``FileService``, whose frames
carry 1 MiB of file bytes each and which the server relays to the runner unparsed, on a
stream of their own (never on the runner's control stream). Both directions use gRPC flow
control end to end, so memory stays constant whatever the size.

Servers without it (the public platform, older sandboxd) answer UNIMPLEMENTED; the answer
is remembered per server address and the callers fall back to the exec scripts. A write
first asks whether the service exists (a ``ReadFile`` of an empty path, which a server that
has it refuses as INVALID_ARGUMENT), because bytes pulled from the caller's source cannot
be replayed over the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from cwsandbox._file_frames import data_frame, read_frame, write_frame
from cwsandbox._lifecycle import Lifecycle
from cwsandbox.exceptions import SandboxFileError, SandboxRequestTimeoutError
from sandboxd_protocol.sandboxd_v1 import files_pb2 as fp

__all__ = ["Unsupported", "service_read", "service_write", "supported"]

FILES = "/sandboxd.files.v1.FileService/"
#: Largest data frame a server takes (files.proto); the client sends 1 MiB frames.
MAX_FRAME_BYTES = 4 * 1024 * 1024
_PROBE_TIMEOUT = 30.0
_known: dict[str, bool] = {}  # server target -> whether it has FileService


class Unsupported(Exception):
    """The server has no ``FileService``: use the exec scripts."""


def _target(life: Lifecycle) -> str:
    return life.transport.endpoint.target


def _translate(err: grpc.RpcError, verb: str, path: str, sid: str, timeout: float | None) -> Any:
    from cwsandbox._error_mapping import sandbox_error

    if isinstance(err, grpc.aio.AioRpcError) and err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return SandboxRequestTimeoutError(
            f"{verb} of '{path}' did not finish within {timeout or 0:g}s"
        )
    return sandbox_error(err, operation=f"{verb}_file", sandbox_id=sid, filepath=path)


def _unimplemented(err: grpc.RpcError) -> bool:
    return isinstance(err, grpc.aio.AioRpcError) and err.code() is grpc.StatusCode.UNIMPLEMENTED


async def _channel(life: Lifecycle) -> grpc.aio.Channel:
    return await life.transport.streaming_channel(_PROBE_TIMEOUT)


async def supported(life: Lifecycle) -> bool:
    """Whether the server offers ``FileService`` (asked once per server address)."""
    known = _known.get(_target(life))
    if known is not None:
        return known
    channel = await _channel(life)
    call = channel.unary_stream(
        FILES + "ReadFile",
        request_serializer=fp.ReadFileRequest.SerializeToString,
        response_deserializer=fp.ReadFileResponse.FromString,
    )(fp.ReadFileRequest(), timeout=_PROBE_TIMEOUT, metadata=life.transport.metadata)
    try:
        async for _ in call:
            pass
        answer = True
    except grpc.RpcError as err:
        answer = not _unimplemented(err)
    _known[_target(life)] = answer
    return answer


async def service_read(
    life: Lifecycle, path: str, timeout: float | None, sink: Callable[[bytes], Awaitable[bool]]
) -> int:
    """Stream ``path`` into ``sink``; the byte count. :class:`Unsupported` without the service."""
    if _known.get(_target(life)) is False:
        raise Unsupported
    sid = await life.ensure_running()
    channel = await _channel(life)
    call = channel.unary_stream(
        FILES + "ReadFile",
        request_serializer=fp.ReadFileRequest.SerializeToString,
        response_deserializer=read_frame,
    )(
        fp.ReadFileRequest(sandbox_id=sid, path=path),
        timeout=timeout,
        metadata=life.transport.metadata,
    )
    received, size = 0, -1
    try:
        async for response in call:
            if isinstance(response, bytes):
                data = response  # a data frame, sliced out of the wire bytes
            elif response.WhichOneof("frame") == "info":
                size = response.info.size
                continue
            else:
                data = response.data
            received += len(data)
            if not await sink(data):
                return received  # the reader was closed: stop, the call is cancelled
    except grpc.RpcError as err:
        if _unimplemented(err):
            _known[_target(life)] = False
            raise Unsupported from None
        raise _translate(err, "read", path, sid, timeout) from None
    finally:
        call.cancel()
    _known[_target(life)] = True
    if 0 <= received < size:
        raise SandboxFileError(
            f"Failed to read file '{path}': got {received} of {size} bytes",
            filepath=path,
            reason="CWSANDBOX_FILE_TRUNCATED",
            metadata={"filepath": path, "size_bytes": str(size)},
        )
    return received


async def _frames(
    sid: str, path: str, chunks: AsyncIterator[bytes]
) -> AsyncIterator[fp.WriteFileRequest | bytes]:
    yield fp.WriteFileRequest(init=fp.WriteFileInit(sandbox_id=sid, path=path))
    async for chunk in chunks:
        if len(chunk) <= MAX_FRAME_BYTES:
            yield data_frame(chunk)
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), MAX_FRAME_BYTES):
            yield data_frame(view[start : start + MAX_FRAME_BYTES])


async def service_write(
    life: Lifecycle, path: str, chunks: AsyncIterator[bytes], timeout: float | None
) -> int:
    """Stream ``chunks`` into ``path``; the size written. :class:`Unsupported` without it.

    Nothing is pulled from ``chunks`` before the service is known to exist.
    """
    sid = await life.ensure_running()
    if not await supported(life):
        raise Unsupported
    channel = await _channel(life)
    sent = 0
    source_error: list[BaseException] = []

    async def counted() -> AsyncIterator[bytes]:
        nonlocal sent
        try:
            async for chunk in chunks:
                sent += len(chunk)
                yield chunk
        except Exception as exc:  # the caller's source failed: abort the write with it
            source_error.append(exc)
            raise

    call = channel.stream_unary(
        FILES + "WriteFile",
        request_serializer=write_frame,
        response_deserializer=fp.WriteFileResponse.FromString,
    )(_frames(sid, path, counted()), timeout=timeout, metadata=life.transport.metadata)
    try:
        response = await call
    except (grpc.RpcError, asyncio.CancelledError) as err:
        if source_error:
            raise source_error[0] from None
        if isinstance(err, asyncio.CancelledError):
            raise
        raise _translate(err, "write", path, sid, timeout) from None
    finally:
        with contextlib.suppress(Exception):
            call.cancel()
    if response.size != sent:
        raise SandboxFileError(
            f"Failed to write file '{path}': wrote {response.size} of {sent} bytes",
            filepath=path,
            reason="CWSANDBOX_FILE_TRUNCATED",
            metadata={"filepath": path},
        )
    return sent
