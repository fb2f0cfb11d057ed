"""One exec's bytes between a backend process and the control plane's ``RunnerService.Exec``.

Why a call per exec: runners only dial out, so for each ``OpenExec`` the runner dials
``Exec`` on the channel it already has and greets with ``hello``; each exec is then its own
HTTP/2 stream, and a slow reader of one exec never stalls another exec or the control
stream (rule 2 of DESIGN.md). Every send is awaited, so HTTP/2 flow control slows the
process down (its pipe fills) instead of the runner dropping or hoarding output.

Frame order follows v1beta2.md §5.2: ``ready`` as soon as the process runs, ``output`` as
it is produced, ``exit`` last, after all output. Problems found after the stream exists
(sandbox gone or stopped, bad argv) become one in-band ``error`` frame, which clients turn
into a typed exception. Stdin ends on ``close`` (the control plane turns a client's
half-close into one). If the call ends, fails or is cancelled before ``exit``, the process is
killed: nobody is left to read its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

from cwsandbox._proto import streaming_pb2
from sandboxd._proto import runner_pb2, runner_pb2_grpc
from sandboxd.backends.base import Backend, ExecSession
from sandboxd.backends.errors import (
    BackendError,
    BackendUnavailable,
    InvalidSpec,
    SandboxNotFound,
    SandboxNotRunning,
)
from sandboxd.runner.stream import bearer

__all__ = [
    "CALL_ERRORS",
    "ExecCall",
    "ExecDialer",
    "dial_exec",
    "error_frame",
    "refuse_exec",
    "relay_exec",
]

_log = logging.getLogger(__name__)

ExecCall = grpc.aio.StreamStreamCall[runner_pb2.ExecUpstream, streaming_pb2.ExecStreamRequest]
# Opens RunnerService.Exec for a stream id and sends the hello frame.
ExecDialer = Callable[[str], Awaitable[ExecCall]]

# What a write or read on a call that failed, finished or was cancelled may raise.
CALL_ERRORS = (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError)
# After ``exit`` the control plane ends the call; give it this long before cancelling.
END_OF_CALL_TIMEOUT = 10.0
MAX_FRAME_BYTES = 1 << 20
_STREAM_TYPES = {
    "stdout": streaming_pb2.ExecStreamOutput.STREAM_TYPE_STDOUT,
    "stderr": streaming_pb2.ExecStreamOutput.STREAM_TYPE_STDERR,
}


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def error_frame(code: str, message: str) -> runner_pb2.ExecUpstream:
    """A terminal in-band error (``code`` like ``SANDBOX_NOT_RUNNING``)."""
    error = streaming_pb2.ExecStreamError(code=code, message=message)
    return runner_pb2.ExecUpstream(response=streaming_pb2.ExecStreamResponse(error=error))


async def dial_exec(
    channel: grpc.aio.Channel, stream_id: str, runner_id: str, credential: str
) -> ExecCall:
    """Open ``Exec`` on ``channel`` with the runner's credential and greet.

    This is the :data:`ExecDialer` the agent provides.
    """
    stub = runner_pb2_grpc.RunnerServiceStub(channel)  # type: ignore[no-untyped-call]
    call = cast(ExecCall, stub.Exec(metadata=bearer(credential)))
    await greet(call, runner_pb2.ExecUpstream(hello=hello(stream_id, runner_id)))
    return call


def hello(stream_id: str, runner_id: str) -> runner_pb2.ExecUpstream.Hello:
    """The first frame of every per-stream RPC a runner dials (Exec, Logs)."""
    return runner_pb2.ExecUpstream.Hello(stream_id=stream_id, runner_id=runner_id)


async def greet(call: Any, first_frame: Any) -> None:
    """Send the hello frame on a freshly dialled call; cancel the call if that fails."""
    try:
        await call.write(first_frame)
    except BaseException:
        call.cancel()
        raise


async def _end_call(call: ExecCall) -> None:
    """Half-close, then let the control plane end the call so our last frames arrive."""
    with contextlib.suppress(TimeoutError, *CALL_ERRORS):
        await call.done_writing()
        async with asyncio.timeout(END_OF_CALL_TIMEOUT):
            while isinstance(await call.read(), streaming_pb2.ExecStreamRequest):
                pass  # anything else is grpc.aio.EOF (which the type stubs do not export)


async def refuse_exec(dialer: ExecDialer, stream_id: str, code: str, message: str) -> None:
    """Dial the exec stream only to report why no process was started."""
    try:
        call = await dialer(stream_id)
    except Exception as exc:  # the control plane gives up on the attach by itself
        _log.info("cannot open exec stream %s to refuse it: %s", stream_id, exc)
        return
    try:
        with contextlib.suppress(*CALL_ERRORS):
            await call.write(error_frame(code, message))
        await _end_call(call)
    finally:
        call.cancel()


def _error_code(exc: BackendError) -> str:
    if isinstance(exc, SandboxNotRunning):
        return "SANDBOX_NOT_RUNNING"
    if isinstance(exc, SandboxNotFound):
        return "SANDBOX_NOT_FOUND"
    if isinstance(exc, InvalidSpec):
        return "INVALID_ARGUMENT"
    if isinstance(exc, BackendUnavailable):
        return "BACKEND_UNAVAILABLE"
    return "EXEC_FAILED"


async def relay_exec(backend: Backend, command: runner_pb2.OpenExec, dialer: ExecDialer) -> None:
    """Start ``command`` in its sandbox and relay it over a fresh Exec call until it exits."""
    try:
        call = await dialer(command.stream_id)
    except Exception as exc:
        _log.warning("exec %s: cannot open the exec stream: %s", command.stream_id, exc)
        return
    try:
        tty_size = None
        if command.tty and command.tty_width and command.tty_height:
            tty_size = (int(command.tty_width), int(command.tty_height))
        try:
            session = await backend.exec(
                command.sandbox_id,
                list(command.command),
                env=dict(command.env),
                tty=command.tty,
                tty_size=tty_size,
            )
        except BackendError as exc:
            with contextlib.suppress(*CALL_ERRORS):
                await call.write(error_frame(_error_code(exc), str(exc)))
            await _end_call(call)
            return
        try:
            await _relay(call, session, command.stream_id)
        finally:
            await session.close()  # kills the process if it still runs
    except CALL_ERRORS as exc:
        _log.info("exec %s: stream ended early (%s); process killed", command.stream_id, exc)
    finally:
        call.cancel()


async def _relay(call: ExecCall, session: ExecSession, stream_id: str) -> None:
    ready = streaming_pb2.StreamingExecReady(ready_at=_now(), session_id=stream_id)
    await call.write(
        runner_pb2.ExecUpstream(response=streaming_pb2.ExecStreamResponse(ready=ready))
    )
    output = asyncio.create_task(_pump_output(call, session), name=f"exec-out-{stream_id}")
    inputs = asyncio.create_task(_pump_input(call, session), name=f"exec-in-{stream_id}")
    try:
        await asyncio.wait({output, inputs}, return_when=asyncio.FIRST_COMPLETED)
        if not output.done():
            # The control plane's side ended first: its error, or an early end of the call
            # (the client went away). Nobody will read the output; the caller kills.
            inputs.result()
            _log.info("exec %s: the control plane ended the stream before exit", stream_id)
            return
        output.result()
        exit_frame = streaming_pb2.ExecStreamExit(
            exit_code=await session.wait(), completed_at=_now()
        )
        await call.write(
            runner_pb2.ExecUpstream(response=streaming_pb2.ExecStreamResponse(exit=exit_frame))
        )
        with contextlib.suppress(TimeoutError, *CALL_ERRORS):
            await call.done_writing()
            # The control plane ends the call once it has the exit frame.
            async with asyncio.timeout(END_OF_CALL_TIMEOUT):
                await asyncio.shield(inputs)
    finally:
        for task in (output, inputs):
            task.cancel()
        await asyncio.gather(output, inputs, return_exceptions=True)


async def _pump_output(call: ExecCall, session: ExecSession) -> None:
    async for chunk in session:
        stream_type = _STREAM_TYPES[chunk.stream]
        for start in range(0, len(chunk.data), MAX_FRAME_BYTES):
            data = chunk.data[start : start + MAX_FRAME_BYTES]
            frame = streaming_pb2.ExecStreamOutput(stream_type=stream_type, data=data)
            await call.write(
                runner_pb2.ExecUpstream(response=streaming_pb2.ExecStreamResponse(output=frame))
            )


async def _pump_input(call: ExecCall, session: ExecSession) -> None:
    """Control-plane frames to the process, until the call ends.

    The client's half-close reaches us as a ``close`` frame (the control plane translates
    it), so the end of *this* call means the whole exec is over on the control plane's side.
    """
    stdin_open = True
    while True:
        request = await call.read()
        if not isinstance(request, streaming_pb2.ExecStreamRequest):  # grpc.aio.EOF
            return
        kind = request.WhichOneof("request")
        if kind == "stdin" and stdin_open:
            await session.write_stdin(request.stdin.data)
        elif kind == "resize" and request.resize.width and request.resize.height:
            await session.resize(request.resize.width, request.resize.height)
        elif kind == "close" and stdin_open:
            stdin_open = False
            await session.close_stdin()
