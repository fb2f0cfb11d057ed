"""v1 StreamExec and StreamLogs: the v1beta2 relay, with v1 framing (protocol/v1.md §5, §7).

Why a codec over :class:`~sandboxd.controlplane.streaming.StreamingService`: the work (find
the sandbox, bind an operation on its runner, relay stdin, resize and close, end on exit,
report runner loss in-band) is the same for both protocols; only the frames differ:

* exec: v1 numbers the response oneof differently, sends ``stdin`` as raw bytes, names the
  output stream ``stream`` and adds ``init.container`` (one container here: ``main`` or
  the spec's name). A half-close after ``init`` is stdin EOF, as in v1beta2.
* logs: v1 is server-streaming: one request, ``LogEntry`` frames, and the end of the call is
  the end of the logs (there is no ``complete`` frame and no client ``close``). Resume
  fields are renamed. In-band errors stay in-band (``LogEntry.error``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from sandboxd.controlplane.streaming import StreamingService
from sandboxd.errors import ApiError, abort_with, invalid_argument
from sandboxd_protocol.v1 import sandbox_pb2
from sandboxd_protocol.v1beta2 import streaming_pb2

B = streaming_pb2
V = sandbox_pb2
Context = grpc.aio.ServicerContext[Any, Any]


def check_container(container: str, field: str) -> None:
    """A sandbox here has one container: naming another is a mistake the caller can fix."""
    if container and container != "main":
        raise invalid_argument(field, f"no container {container!r}: sandboxes here have 'main'")


def exec_init(init: sandbox_pb2.ExecStreamInit) -> streaming_pb2.ExecStreamInit:
    """The v1beta2 ``init`` the relay takes (``container`` checked here)."""
    check_container(init.container, "init.container")
    return B.ExecStreamInit(
        sandbox_id=init.sandbox_id,
        command=init.command,
        tty=init.tty,
        tty_width=init.tty_width,
        tty_height=init.tty_height,
        env=init.env,
    )


def exec_input(request: sandbox_pb2.ExecStreamRequest) -> streaming_pb2.ExecStreamRequest | None:
    """A v1 client frame after ``init`` in v1beta2 terms (None: nothing to relay)."""
    kind = request.WhichOneof("message")
    if kind == "stdin":
        return B.ExecStreamRequest(stdin=B.ExecStreamData(data=request.stdin))
    if kind == "resize":
        size = request.resize
        return B.ExecStreamRequest(resize=B.ExecStreamResize(width=size.width, height=size.height))
    if kind == "close":
        return B.ExecStreamRequest(close=B.ExecStreamClose())
    return None


def exec_frame(frame: streaming_pb2.ExecStreamResponse) -> sandbox_pb2.ExecStreamResponse:
    """A relay frame in v1 terms."""
    kind = frame.WhichOneof("response")
    if kind == "output":
        return V.ExecStreamResponse(
            output=V.ExecStreamOutput(
                stream=frame.output.stream_type,  # type: ignore[arg-type]  # same numbers
                data=frame.output.data,
            )
        )
    if kind == "exit":
        exit_frame = V.ExecStreamExit(exit_code=frame.exit.exit_code)
        if frame.exit.HasField("completed_at"):
            exit_frame.completed_time.CopyFrom(frame.exit.completed_at)
        return V.ExecStreamResponse(exit=exit_frame)
    if kind == "ready":
        ready = V.ExecStreamReady()
        ready.ready_time.CopyFrom(frame.ready.ready_at)
        return V.ExecStreamResponse(ready=ready)
    return V.ExecStreamResponse(
        error=V.ExecStreamError(message=frame.error.message, code=frame.error.code)
    )


def log_init(request: sandbox_pb2.StreamLogsRequest) -> streaming_pb2.LogStreamInit:
    """The v1beta2 ``init`` the relay takes; malformed fields named in v1 terms."""
    check_container(request.container, "container")
    if request.tail_lines < 0:
        raise invalid_argument("tail_lines", "must not be negative (0 means all lines)")
    init = B.LogStreamInit(
        sandbox_id=request.sandbox_id,
        follow=request.follow,
        tail_lines=request.tail_lines,
        timestamps=request.timestamps,
        resume_session_id=request.resume_log_session_id,
        resume_offset=request.resume_log_offset,
    )
    if request.HasField("since_time"):
        since = request.since_time
        if not 0 <= since.nanos < 1_000_000_000 or not 0 <= since.seconds < 253_402_300_800:
            raise invalid_argument("since_time", "must be a valid time after 1970")
        init.since_time.CopyFrom(since)
    return init


class V1Streams:
    """The two streaming RPCs of ``coreweave.sandbox.v1.SandboxService``."""

    def __init__(self, relay: StreamingService) -> None:
        self._relay = relay

    async def stream_exec(
        self, requests: AsyncIterator[sandbox_pb2.ExecStreamRequest], context: Context
    ) -> AsyncGenerator[sandbox_pb2.ExecStreamResponse]:
        """Relay an exec; the first client frame must be ``init``."""
        try:
            first = await anext(requests, None)
            if first is None or first.WhichOneof("message") != "init":
                raise invalid_argument("init", "the first message of StreamExec must be init")
            init = exec_init(first.init)
        except ApiError as error:
            await abort_with(context, error)

        async def relayed() -> AsyncIterator[streaming_pb2.ExecStreamRequest]:
            yield B.ExecStreamRequest(init=init)
            async for request in requests:
                frame = exec_input(request)
                if frame is not None:
                    yield frame

        async for frame in self._relay.StreamExec(relayed(), context):
            yield exec_frame(frame)

    async def stream_logs(
        self, request: sandbox_pb2.StreamLogsRequest, context: Context
    ) -> AsyncGenerator[sandbox_pb2.LogEntry]:
        """Relay the logs until the runner completes them, an error, or the client leaves."""
        try:
            init = log_init(request)
        except ApiError as error:
            await abort_with(context, error)

        async def relayed() -> AsyncIterator[streaming_pb2.LogStreamRequest]:
            yield B.LogStreamRequest(init=init)
            # A v1 client sends nothing more; never look like a half-close (which ends a
            # v1beta2 follow): the relay cancels this when the stream ends.
            await asyncio.Event().wait()

        async for frame in self._relay.StreamLogs(relayed(), context):
            kind = frame.WhichOneof("response")
            if kind == "data":
                data = frame.data
                entry = V.LogEntry(
                    data=data.data, log_session_id=data.session_id, next_log_offset=data.offset
                )
                if data.HasField("timestamp"):
                    entry.timestamp.CopyFrom(data.timestamp)
                yield entry
            elif kind == "error":
                failed = V.LogStreamError(message=frame.error.message, code=frame.error.code)
                yield V.LogEntry(error=failed)
                return
            else:
                return
