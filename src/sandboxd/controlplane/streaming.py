"""``GatewayStreamingService``: exec streams proxied to the runner that owns the sandbox.

Per v1beta2.md §5: the first client frame is ``init``; a client half-close means stdin EOF,
not cancellation; ``ready`` comes first, output frames as produced, ``exit`` last. Conditions
found after the stream is accepted (sandbox not running, runner gone) are reported in-band as
an ``error`` frame, which every client turns into a typed exception; gRPC statuses are kept
for malformed requests, unknown sandboxes and auth.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cwsandbox._proto import streaming_pb2, streaming_pb2_grpc
from sandboxd._proto import runner_pb2
from sandboxd.controlplane.exec_bridge import ATTACH_TIMEOUT_SECONDS, ExecSession, ExecSessions
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.start_request import not_implemented
from sandboxd.errors import ApiError, abort_with, invalid_argument

Context = grpc.aio.ServicerContext[Any, Any]
MAX_TTY_DIMENSION = 10_000


def error_frame(code: str, message: str) -> streaming_pb2.ExecStreamResponse:
    """An in-band, terminal exec error."""
    return streaming_pb2.ExecStreamResponse(
        error=streaming_pb2.ExecStreamError(code=code, message=message)
    )


def _check_init(first: streaming_pb2.ExecStreamRequest) -> streaming_pb2.ExecStreamInit:
    if first.WhichOneof("request") != "init":
        raise invalid_argument("init", "the first message of StreamExec must be init")
    init = first.init
    if not init.command:
        raise invalid_argument("init.command", "must name the program to run")
    if any("\x00" in part for part in init.command):
        raise invalid_argument("init.command", "must not contain NUL characters")
    if init.tty_width > MAX_TTY_DIMENSION or init.tty_height > MAX_TTY_DIMENSION:
        raise invalid_argument("init.tty_width", f"terminal size must be <= {MAX_TTY_DIMENSION}")
    if init.resume_session_id:
        raise not_implemented("init.resume_session_id", "exec session resume")
    return init


class StreamingService(streaming_pb2_grpc.GatewayStreamingServiceServicer):
    """StreamExec over :class:`ExecSessions`; StreamLogs comes with the logs feature."""

    def __init__(self, lifecycle: Lifecycle, sessions: ExecSessions) -> None:
        self._lifecycle = lifecycle
        self._sessions = sessions

    async def StreamExec(
        self,
        request_iterator: AsyncIterator[streaming_pb2.ExecStreamRequest],
        context: Context,
    ) -> AsyncIterator[streaming_pb2.ExecStreamResponse]:
        """Start the process on the sandbox's runner and relay frames both ways."""
        try:
            try:
                first = await anext(request_iterator)
            except StopAsyncIteration:
                raise invalid_argument("init", "the stream ended before init") from None
            init = _check_init(first)
            record = self._lifecycle.record(init.sandbox_id)
        except ApiError as error:
            await abort_with(context, error)
        try:
            link = self._lifecycle.running_link(record)
        except ApiError as error:
            yield error_frame(error.reason.removeprefix("CWSANDBOX_"), error.message)
            return
        session = self._sessions.open(record.runner_id)
        pump: asyncio.Task[None] | None = None
        try:
            link.send(
                runner_pb2.Command(
                    exec=runner_pb2.OpenExec(
                        stream_id=session.stream_id,
                        sandbox_id=record.sandbox_id,
                        command=init.command,
                        tty=init.tty,
                        tty_width=init.tty_width,
                        tty_height=init.tty_height,
                        env=init.env,
                    )
                )
            )
            try:
                async with asyncio.timeout(ATTACH_TIMEOUT_SECONDS):
                    await session.attached.wait()
            except TimeoutError:
                yield error_frame(
                    "RUNNER_UNAVAILABLE",
                    f"runner {record.runner_id} did not open the exec stream in time",
                )
                return
            pump = asyncio.create_task(self._pump_client(request_iterator, session))
            while True:
                frame = await session.upstream.get()
                if frame is None:
                    yield error_frame(
                        "RUNNER_UNAVAILABLE", "the runner's exec stream ended without an exit"
                    )
                    return
                yield frame
                if frame.WhichOneof("response") in ("exit", "error"):
                    return
        except ApiError as error:
            yield error_frame(error.reason.removeprefix("CWSANDBOX_") or "ERROR", error.message)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            self._sessions.close(session)

    @staticmethod
    async def _pump_client(
        request_iterator: AsyncIterator[streaming_pb2.ExecStreamRequest], session: ExecSession
    ) -> None:
        closed = False
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for request in request_iterator:
                kind = request.WhichOneof("request")
                if kind in ("stdin", "resize") and not closed:
                    await session.downstream.put(request)
                elif kind == "close" and not closed:
                    closed = True
                    await session.downstream.put(request)
        if not closed:  # half-close is stdin EOF (v1beta2.md §5.1)
            await session.downstream.put(
                streaming_pb2.ExecStreamRequest(close=streaming_pb2.ExecStreamClose())
            )

    async def StreamLogs(
        self,
        request_iterator: AsyncIterator[streaming_pb2.LogStreamRequest],
        context: Context,
    ) -> AsyncIterator[streaming_pb2.LogStreamResponse]:
        """Main-process logs arrive with the logs feature (issue 4)."""
        await abort_with(context, not_implemented("StreamLogs", "log streaming"))
        yield streaming_pb2.LogStreamResponse()  # pragma: no cover - unreachable
