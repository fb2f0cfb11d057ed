"""One ``GatewayStreamingService/StreamExec`` call, as the exec-like features share it (§5).

``exec``, ``shell``, the streamed file transfers and remote functions all speak the same
conversation: one ``init`` carrying the full argv (and, for a terminal, ``tty`` plus its
size); without stdin an immediate half-close, which the server reads as stdin EOF; with
stdin, wait for the server's ``ready`` (at most 5 s) before sending ``stdin`` frames of at
most 64 KiB, ``resize`` frames for a terminal, and finally ``close``. The server answers with
``ready``, ``output`` frames as the command produces them, and a final ``exit`` or an
in-band ``error``.

``ExecChannel`` owns that wire detail so each feature only decides what to do with output.
Writes are serialized through a lock because a gRPC call takes one write at a time, and
stdin and resize frames come from different tasks.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc.aio
from google.protobuf.message import DecodeError
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from cwsandbox._transport import SANDBOX_HEADER, ExecCall, Transport
from cwsandbox.exceptions import (
    SandboxExecutionError,
    SandboxStreamBackpressureError,
    SandboxStreamTruncatedError,
    SandboxTimeoutError,
)
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from sandboxd_protocol.v1beta2 import streaming_pb2 as st

__all__ = [
    "DEADLINE_SLACK_SECONDS",
    "READY_WAIT_SECONDS",
    "STDIN_CHUNK_BYTES",
    "ExecChannel",
    "Exit",
    "Output",
    "stream_error",
]

_log = logging.getLogger("cwsandbox")

#: Largest stdin frame the client sends (protocol §5.1).
STDIN_CHUNK_BYTES = 64 * 1024
#: How long a command with stdin (or a terminal) waits for the server's ``ready``.
READY_WAIT_SECONDS = 5.0
#: The call's deadline is the command's timeout plus this (the server's kill backstop).
DEADLINE_SLACK_SECONDS = 5.0
_STDERR = st.ExecStreamOutput.STREAM_TYPE_STDERR
_STDOUT = st.ExecStreamOutput.STREAM_TYPE_STDOUT


@dataclass(frozen=True)
class Output:
    """Bytes the command wrote, as one server frame."""

    data: bytes
    stderr: bool


@dataclass(frozen=True)
class Exit:
    """The end of the command: its exit code, or ``None`` if the call ended without one."""

    code: int | None


def stream_error(frame: st.ExecStreamError) -> SandboxExecutionError:
    """The exception for an in-band ``error`` frame (protocol §5.2)."""
    text = f"Exec stream error: {frame.message}"
    if frame.code == "STREAM_BACKPRESSURE":
        return SandboxStreamBackpressureError(text, stream_code=frame.code)
    if frame.code == "STREAM_TRUNCATED":
        return SandboxStreamTruncatedError(text, stream_code=frame.code)
    return SandboxExecutionError(text, reason=frame.code or None)


class ExecChannel:
    """An open StreamExec call: typed events in, stdin/resize/close out.

    gRPC errors are not translated here; each feature maps them (an exec timeout and a file
    read timeout are different errors to their callers).
    """

    def __init__(self, call: ExecCall) -> None:
        self._call = call
        self._lock = asyncio.Lock()
        self._writing_done = False
        self._abort: BaseException | None = None
        self.ready = asyncio.Event()

    @classmethod
    async def open(
        cls,
        transport: Transport,
        sandbox_id: str,
        argv: list[str],
        *,
        deadline: float | None,
        connect_timeout: float,
        interactive: bool,
        tty: bool = False,
        width: int | None = None,
        height: int | None = None,
        wait_running: bool = False,
    ) -> ExecChannel:
        """Open the call and send ``init``; without ``interactive`` also half-close (at once).

        ``wait_running``: the sandbox may still be starting and the server waits for it
        (only where Start offered that); :meth:`sandbox_seen` then says what it became.
        """
        init = st.ExecStreamInit(sandbox_id=sandbox_id, command=argv)
        if tty:
            init.tty = True
            if width:
                init.tty_width = width
            if height:
                init.tty_height = height
        call = await transport.open_exec(
            st.ExecStreamRequest(init=init),
            timeout=deadline,
            ready_timeout=connect_timeout,
            stdin=interactive,
            wait_running=wait_running,
        )
        channel = cls(call)
        channel._writing_done = not interactive  # init went out with the half-close
        return channel

    async def sandbox_seen(self) -> gw.GetSandboxResponse | None:
        """The sandbox as the server saw it once it waited (``wait_running``), else None.

        None also when the call ended before any header (a trailers-only error answer) or
        the header cannot be read: the caller then asks Get, as without the extension.
        """
        metadata = await self._call.initial_metadata()
        for key, value in metadata or ():
            if key == SANDBOX_HEADER and isinstance(value, bytes):
                try:
                    return gw.GetSandboxResponse.FromString(value)
                except DecodeError:
                    return None
        return None

    async def next(self, ready_by: float | None = None) -> Output | Exit:
        """The next output or the exit; ``ready`` frames are absorbed into ``self.ready``.

        With ``ready_by`` (a loop time) the server must have said ``ready`` by then, else
        ``SandboxTimeoutError``: a command waiting for stdin would otherwise hang silently.
        """
        while True:
            try:
                msg = await self._read(ready_by)
            except asyncio.CancelledError:
                if self._abort is not None:  # we cancelled the call to report this instead
                    raise self._abort from None
                raise
            if msg is EOF:
                return Exit(None)
            assert isinstance(msg, st.ExecStreamResponse)
            kind = msg.WhichOneof("response")
            if kind == "ready":
                self.ready.set()
            elif kind == "output":
                frame = msg.output
                if frame.stream_type not in (_STDOUT, _STDERR):
                    _log.debug("exec output frame without stream type; treating as stdout")
                return Output(frame.data, frame.stream_type == _STDERR)
            elif kind == "exit":
                return Exit(msg.exit.exit_code)
            elif kind == "error":
                raise stream_error(msg.error)

    async def _read(self, ready_by: float | None) -> object:
        if ready_by is None or self.ready.is_set():
            return await self._call.read()
        left = max(0.0, ready_by - asyncio.get_running_loop().time())
        try:
            return await asyncio.wait_for(self._call.read(), left)
        except TimeoutError:
            raise SandboxTimeoutError("stdin ready signal not received within timeout") from None

    def abort(self, error: BaseException) -> None:
        """Cancel the call so that the reader raises ``error`` (e.g. the stdin source failed)."""
        if self._abort is None:
            self._abort = error
        self.cancel()

    async def _send(self, request: st.ExecStreamRequest) -> bool:
        async with self._lock:
            if self._writing_done or self._call.done():
                return False
            assert isinstance(self._call, grpc.aio.StreamStreamCall)  # interactive calls only
            await self._call.write(request)
            return True

    async def send_stdin(self, data: bytes) -> bool:
        """Send ``data`` as stdin frames of at most 64 KiB; False if the call stopped taking it."""
        view = memoryview(data)
        for start in range(0, len(view), STDIN_CHUNK_BYTES):
            chunk = bytes(view[start : start + STDIN_CHUNK_BYTES])
            if not await self._send(st.ExecStreamRequest(stdin=st.ExecStreamData(data=chunk))):
                return False
        return True

    async def resize(self, width: int, height: int) -> None:
        """Tell the terminal its new size."""
        await self._send(
            st.ExecStreamRequest(resize=st.ExecStreamResize(width=width, height=height))
        )

    async def close_stdin(self) -> None:
        """Send ``close`` and half-close: the command sees end of input."""
        await self._send(st.ExecStreamRequest(close=st.ExecStreamClose()))
        await self._done_writing()

    async def _done_writing(self) -> None:
        async with self._lock:
            if not self._writing_done:
                self._writing_done = True
                if not self._call.done() and isinstance(self._call, grpc.aio.StreamStreamCall):
                    await self._call.done_writing()

    def cancel(self) -> None:
        """Cancel the call if it is still open (the server then kills the command)."""
        if not self._call.done():
            self._call.cancel()
