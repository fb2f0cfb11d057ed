"""One exec's bytes between a backend process and the control plane, on an ``Operate`` call.

Why a call per exec: each exec is its own HTTP/2 stream, so a slow reader of one exec never
stalls another exec or the control stream (rule 2 of DESIGN.md). The runner opens these
calls ahead of need (:mod:`sandboxd.runner.operations`), so the control plane binds an exec
with one write and no dial-back round trip. Every send is awaited, so HTTP/2 flow control
slows the process down (its pipe fills) instead of the runner dropping or hoarding output.

Frame order follows v1beta2.md §5.2, minus ``ready``, which the control plane sends itself
as soon as the exec is bound (stdin sent before the process runs waits in flow control):
``output`` as it is produced, ``exit`` last, after all output. One ``ready`` comes first
only when the open asks for it (``OpenExec.announce_running``): the process runs, and the
control plane, which keeps that frame to itself, tells its client so while it runs.
Problems found after the stream exists (sandbox gone or stopped, bad argv) become one
in-band ``error`` frame, which clients turn into a typed exception. Stdin ends on ``close``
(the control plane turns a client's half-close into one) or at once when the open says
``stdin_closed``. If the call ends, fails or is cancelled before ``exit``, the process is
killed: nobody is left to read its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

from sandboxd.backends.base import Backend, ExecSession
from sandboxd.backends.errors import (
    BackendError,
    BackendUnavailable,
    InvalidSpec,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxPaused,
)
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import streaming_pb2

__all__ = [
    "CALL_ERRORS",
    "OperateCall",
    "end_call",
    "error_frame",
    "refuse_exec",
    "relay_exec",
]

_log = logging.getLogger(__name__)

# One bound ``RunnerService.Operate`` call: the runner writes OperationUp, reads OperationDown.
OperateCall = grpc.aio.StreamStreamCall[runner_pb2.OperationUp, runner_pb2.OperationDown]

# What a write or read on a call that failed, finished or was cancelled may raise.
CALL_ERRORS = (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError)
# After the last frame the control plane ends the call; give it this long before cancelling.
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


def _up(response: streaming_pb2.ExecStreamResponse) -> runner_pb2.OperationUp:
    return runner_pb2.OperationUp(exec=response)


def error_frame(code: str, message: str) -> runner_pb2.OperationUp:
    """A terminal in-band error (``code`` like ``SANDBOX_NOT_RUNNING``)."""
    error = streaming_pb2.ExecStreamError(code=code, message=message)
    return _up(streaming_pb2.ExecStreamResponse(error=error))


async def end_call(call: Any) -> None:
    """Half-close, then let the control plane end the call so our last frames arrive."""
    with contextlib.suppress(TimeoutError, *CALL_ERRORS):
        await call.done_writing()
        async with asyncio.timeout(END_OF_CALL_TIMEOUT):
            while isinstance(await call.read(), runner_pb2.OperationDown | bytes):
                pass  # anything else is grpc.aio.EOF (which the type stubs do not export)


async def refuse_exec(call: OperateCall, code: str, message: str) -> None:
    """Report on the exec's call why no process was started."""
    with contextlib.suppress(*CALL_ERRORS):
        await call.write(error_frame(code, message))
    await end_call(call)


def _error_code(exc: BackendError) -> str:
    if isinstance(exc, SandboxPaused):
        return "SANDBOX_PAUSED"
    if isinstance(exc, SandboxNotRunning):
        return "SANDBOX_NOT_RUNNING"
    if isinstance(exc, SandboxNotFound):
        return "SANDBOX_NOT_FOUND"
    if isinstance(exc, InvalidSpec):
        return "INVALID_ARGUMENT"
    if isinstance(exc, BackendUnavailable):
        return "BACKEND_UNAVAILABLE"
    return "EXEC_FAILED"


async def relay_exec(backend: Backend, command: runner_pb2.OpenExec, call: OperateCall) -> None:
    """Start ``command`` in its sandbox and relay it over its bound call until it exits."""
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
            await refuse_exec(call, _error_code(exc), str(exc))
            return
        try:
            if command.announce_running:  # it runs: the control plane tells its client now
                ready = streaming_pb2.StreamingExecReady(session_id=command.stream_id)
                ready.ready_at.GetCurrentTime()
                await call.write(_up(streaming_pb2.ExecStreamResponse(ready=ready)))
            if command.stdin_closed:
                await session.close_stdin()
            await _relay(call, session, command.stream_id, stdin_open=not command.stdin_closed)
        finally:
            await session.close()  # kills the process if it still runs
    except CALL_ERRORS as exc:
        _log.info("exec %s: stream ended early (%s); process killed", command.stream_id, exc)
    finally:
        call.cancel()


async def _relay(call: OperateCall, session: ExecSession, stream_id: str, stdin_open: bool) -> None:
    output = asyncio.create_task(_pump_output(call, session), name=f"exec-out-{stream_id}")
    inputs = asyncio.create_task(
        _pump_input(call, session, stdin_open), name=f"exec-in-{stream_id}"
    )
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
        await call.write(_up(streaming_pb2.ExecStreamResponse(exit=exit_frame)))
        with contextlib.suppress(TimeoutError, *CALL_ERRORS):
            await call.done_writing()
            # The control plane ends the call once it has the exit frame.
            async with asyncio.timeout(END_OF_CALL_TIMEOUT):
                await inputs  # cancelled at the timeout, as below anyway
    finally:
        await _end(output, inputs)


async def _end(*tasks: asyncio.Task[None]) -> None:
    """Cancel ``tasks`` and wait for those not over yet; retrieve every outcome.

    Why not one ``gather``: it waits a turn of the event loop for each task, also for those
    already over, which on an exec of ``true`` are both.
    """
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: never logged as "never retrieved"


async def _pump_output(call: OperateCall, session: ExecSession) -> None:
    async for chunk in session:
        stream_type = _STREAM_TYPES[chunk.stream]
        for start in range(0, len(chunk.data), MAX_FRAME_BYTES):
            data = chunk.data[start : start + MAX_FRAME_BYTES]
            frame = streaming_pb2.ExecStreamOutput(stream_type=stream_type, data=data)
            await call.write(_up(streaming_pb2.ExecStreamResponse(output=frame)))


async def _pump_input(call: OperateCall, session: ExecSession, stdin_open: bool) -> None:
    """Control-plane frames to the process, until the call ends.

    The client's half-close reaches us as a ``close`` frame (the control plane translates
    it), so the end of *this* call means the whole exec is over on the control plane's side.
    Anything but ``input`` after the open is a control-plane bug and is ignored.
    """
    while True:
        frame = await call.read()
        if isinstance(frame, bytes):  # an encoded data frame: never for an exec
            continue
        if not isinstance(frame, runner_pb2.OperationDown):  # grpc.aio.EOF
            return
        if frame.WhichOneof("frame") != "input":
            continue
        request = frame.input
        kind = request.WhichOneof("request")
        if kind == "stdin" and stdin_open:
            await session.write_stdin(request.stdin.data)
        elif kind == "resize" and request.resize.width and request.resize.height:
            await session.resize(request.resize.width, request.resize.height)
        elif kind == "close" and stdin_open:
            stdin_open = False
            await session.close_stdin()
