"""One log stream between a backend's log and the control plane, on an ``Operate`` call.

Why a call per stream, as for exec: a long follow is its own HTTP/2 stream and never blocks
the control stream or another operation (rule 2 of DESIGN.md); the runner opened the call
ahead of need (:mod:`sandboxd.runner.operations`) and the control plane bound it with
``OpenLogs``. Every write is awaited, so a slow client slows the reading of the log down
instead of the runner hoarding it.

The runner does the real work of §7 (:mod:`sandboxd.runner.log_stream`: tail, since, line
framing, timestamp prefixes, resumable session ids) and ends the stream itself with
``complete`` or one in-band ``error``. The control plane ends the call to stop a follow (the
client closed it or went away); the read side of the call notices and stops the reading.
The backend keeps an ended sandbox's log until the sandbox is destroyed (retention or
delete), so stopped sandboxes are served the same way as running ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sandboxd.backends.base import Backend
from sandboxd.backends.errors import BackendError, BackendUnavailable, SandboxNotFound
from sandboxd.runner.exec_relay import CALL_ERRORS, END_OF_CALL_TIMEOUT, OperateCall, end_call
from sandboxd.runner.log_stream import (
    InvalidResumeOffset,
    LogCursor,
    SessionNotFound,
    session_frames,
    tail_start,
)
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import streaming_pb2

__all__ = ["refuse_logs", "relay_logs"]

_log = logging.getLogger(__name__)

Response = streaming_pb2.LogStreamResponse


class _Refused(Exception):
    """Ends the stream with one in-band ``error{code, message}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def _write(call: OperateCall, response: Response) -> None:
    await call.write(runner_pb2.OperationUp(logs=response))


def _error(code: str, message: str) -> Response:
    return Response(error=streaming_pb2.LogStreamError(code=code, message=message))


async def refuse_logs(call: OperateCall, code: str, message: str) -> None:
    """Report on the log stream's call why no logs can be served."""
    with contextlib.suppress(*CALL_ERRORS):
        await _write(call, _error(code, message))
    await end_call(call)


# Chunk times are microseconds in a float; a client that passes back a line's own time as
# ``since_time`` must get that line, whatever the last bit of the float says.
_SINCE_SLACK_SECONDS = 5e-7


def _since(command: runner_pb2.OpenLogs) -> float | None:
    if not command.HasField("since_time"):
        return None
    since = command.since_time
    return since.seconds + since.nanos / 1e9 - _SINCE_SLACK_SECONDS


async def _cursor(backend: Backend, command: runner_pb2.OpenLogs) -> tuple[LogCursor, int]:
    """The session to serve and the byte to start at: a resumed one, or a fresh one."""
    sid = command.sandbox_id
    if command.resume_session_id:
        try:
            cursor = LogCursor.decode(command.resume_session_id, sid)
        except SessionNotFound as exc:
            raise _Refused("SESSION_NOT_FOUND", str(exc)) from None
        return cursor, command.resume_offset
    if command.tail_lines < 0:
        raise _Refused("INVALID_ARGUMENT", "tail_lines must not be negative")
    since = _since(command)
    base = 0
    if command.tail_lines:
        base = await tail_start(backend.logs(sid, follow=False, since=since), command.tail_lines)
    return LogCursor(sid, since, base, command.timestamps), 0


def _backend_refusal(exc: BackendError, sandbox_id: str) -> _Refused:
    if isinstance(exc, SandboxNotFound):
        return _Refused(
            "SANDBOX_NOT_FOUND",
            f"this runner has no logs of sandbox {sandbox_id!r} (they are kept until the "
            "sandbox is deleted, or for an hour after it ended)",
        )
    if isinstance(exc, BackendUnavailable):
        return _Refused("BACKEND_UNAVAILABLE", str(exc))
    return _Refused("LOGS_FAILED", f"reading the logs failed: {exc}")


async def _serve(backend: Backend, command: runner_pb2.OpenLogs, call: OperateCall) -> None:
    """Write the session's data frames, then ``complete`` (or one ``error``)."""
    sid = command.sandbox_id
    try:
        cursor, skip = await _cursor(backend, command)
        session_id = cursor.encode()
        frames = session_frames(
            lambda follow: backend.logs(sid, follow=follow, since=cursor.since),
            cursor,
            follow=command.follow,
            skip=skip,
        )
        async with contextlib.aclosing(frames):
            async for frame in frames:
                data = streaming_pb2.LogStreamData(
                    data=frame.data, session_id=session_id, offset=frame.offset
                )
                data.timestamp.FromNanoseconds(int(frame.timestamp * 1e9))
                await _write(call, Response(data=data))
        final = Response(complete=streaming_pb2.LogStreamComplete())
    except _Refused as exc:
        final = _error(exc.code, str(exc))
    except InvalidResumeOffset as exc:
        final = _error("INVALID_RESUME_OFFSET", str(exc))
    except BackendError as exc:
        refusal = _backend_refusal(exc, sid)
        final = _error(refusal.code, str(refusal))
    except CALL_ERRORS:
        raise  # the call is gone: nobody to tell
    except Exception as exc:
        _log.exception("logs of sandbox %s failed unexpectedly", sid)
        final = _error("LOGS_FAILED", f"reading the logs failed: {type(exc).__name__}: {exc}")
    await _write(call, final)


async def _until_call_ends(call: OperateCall) -> None:
    """Return when the control plane ends the call (nothing is sent down after the open)."""
    with contextlib.suppress(*CALL_ERRORS):
        while isinstance(await call.read(), runner_pb2.OperationDown):
            pass


async def relay_logs(backend: Backend, command: runner_pb2.OpenLogs, call: OperateCall) -> None:
    """Serve one ``OpenLogs`` over its bound call until complete or the call ends."""
    writer = asyncio.create_task(_serve(backend, command, call), name="logs-writer")
    ender = asyncio.create_task(_until_call_ends(call), name="logs-end")
    try:
        await asyncio.wait({writer, ender}, return_when=asyncio.FIRST_COMPLETED)
        if writer.done():
            writer.result()
            with contextlib.suppress(TimeoutError, *CALL_ERRORS):
                await call.done_writing()
                async with asyncio.timeout(END_OF_CALL_TIMEOUT):
                    await asyncio.shield(ender)
        else:
            _log.debug("logs %s: the control plane ended the stream", command.stream_id)
    except CALL_ERRORS as exc:
        _log.info("logs %s: stream ended early (%s)", command.stream_id, exc)
    finally:
        for task in (writer, ender):
            task.cancel()
        await asyncio.gather(writer, ender, return_exceptions=True)
        call.cancel()
