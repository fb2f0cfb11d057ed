"""Execs, log streams and file transfers, each bound to an ``Operate`` stream the runner opened.

Why pooled streams: runners only dial out, so the control plane cannot open a stream to a
runner when a client asks for an exec. It used to ask over the control stream and wait for
the runner to dial back: a round trip on the path of every exec, file and log request. Now
each runner keeps a few ``RunnerService.Operate`` calls open and idle on the connection of
its control stream (:class:`~sandboxd.controlplane.runner_link.RunnerLink` holds them), so
binding an operation is one write of its ``open`` frame, and the runner dials a replacement
in the background. Each operation is still its own HTTP/2 stream, so a slow one never stalls
another or the control stream, and bytes never travel on the control stream.

**Relinking.** After a partition heals, the connection an operation was bound to may be dead
while the runner is already back on a new one (the control plane's writes on the old one sit
in TCP backoff until keepalive closes it). An operation whose stream dies before the runner
answered anything and before any client input went down is therefore bound again, to an idle
stream of the runner's next connection, within :data:`BIND_TIMEOUT_SECONDS`. The runner runs
an operation's ``stream_id`` once: if the first open did arrive, the second is answered with
an error instead of running the command twice. Once the runner has answered or input has gone
down, a lost stream is an error (``RUNNER_UNAVAILABLE``), since nothing can be replayed.

**Memory.** Frames cross two bounded :class:`~sandboxd.controlplane.pipe.Pipe` s per operation
(runner to client, client to runner) of :data:`PIPE_FRAMES` frames each; a full pipe stops the
reading of the faster side, so HTTP/2 flow control slows the producer down instead of the
control plane buffering (frames are at most 1 MiB, so an operation holds at most a few MiB
whatever it transfers).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sandboxd.controlplane.pipe import Pipe
from sandboxd.controlplane.raw_frames import UP_DATA, data_length
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_link import IdleStream, RunnerLink, runner_unavailable
from sandboxd_protocol.sandboxd_v1 import runner_pb2

log = logging.getLogger(__name__)

BIND_TIMEOUT_SECONDS = 10.0
"""How long an operation waits for an idle stream, on the runner's next connection too."""
PIPE_FRAMES = 8
"""Frames waiting in each direction of one operation."""

_LOST = object()  # the stream carrying the operation died


class Operation:
    """One operation bound (or being bound) to a runner's ``Operate`` stream.

    The client-facing side calls :meth:`receive` for the runner's frames, :meth:`send` for
    input, and :meth:`close` when done; the runner-facing handler runs :meth:`serve`.
    """

    def __init__(
        self, operations: Operations, runner_id: str, open_frame: Any, raw_data: bool = False
    ) -> None:
        self.stream_id = secrets.token_urlsafe(18)
        self.runner_id = runner_id
        self.open_frame: runner_pb2.OperationDown = open_frame
        getattr(open_frame, open_frame.WhichOneof("frame")).stream_id = self.stream_id
        self._operations = operations
        self._up: Pipe[Any] = Pipe(PIPE_FRAMES)
        self._down: Pipe[runner_pb2.OperationDown | bytes | None] = Pipe(PIPE_FRAMES)
        # Data frames from the runner stay encoded (raw_frames.py): a file read's bytes.
        self._raw_data = raw_data
        self._stream: IdleStream | None = None
        self._link: RunnerLink | None = None
        self.answered = False
        self.committed = False
        self.closed = False

    # -- the client-facing side -----------------------------------------------------------------
    async def receive(self) -> Any:
        """The runner's next frame; None once it ended its side; ApiError if it was lost.

        Frames are ``OperationUp`` messages, except data frames of an operation opened with
        ``raw_data``: those are their checked encoding (``bytes``, see ``raw_frames.py``).
        """
        while True:
            frame = await self._up.get()
            if frame is not _LOST:
                if frame is not None:
                    self.answered = True
                return frame
            if self.answered or self.committed or self.closed:
                raise runner_unavailable(
                    self.runner_id, "its connection was lost during the operation"
                )
            await self._operations.rebind(self)

    async def send(self, frame: runner_pb2.OperationDown | bytes) -> bool:
        """Input for the runner (waits while it lags); False once the operation is closed.

        ``bytes`` are an encoded ``OperationDown`` data frame, checked by the caller.
        """
        if self.closed:
            return False
        self.committed = True
        await self._down.put(frame)
        return not self.closed

    def send_replayable(self, frame: runner_pb2.OperationDown, on_rebind: Any) -> None:
        """Input that a rebind can replay: ``on_rebind(open_frame)`` folds it into the open.

        Used for the end of an exec's stdin, which the open can carry instead, so a lost
        stream can still be bound again after it.
        """
        on_rebind(self.open_frame)
        if self._stream is not None and not self.closed:
            self._down.put_now(frame)

    def close(self) -> None:
        """The operation is over for the client: end the runner's stream (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._down.clear()
        self._down.put_now(None)
        self._up.clear()
        self._operations.forget(self)
        if self._link is not None:
            self._link.unwatch(self)

    def abort(self) -> None:
        """End the operation as lost, with no rebind (its runner is not trusted any more)."""
        self.answered = True
        if self._stream is not None:
            self.lost(self._stream)
        elif not self.closed:
            self._up.put_now(_LOST)
        self._down.put_now(None)

    # -- the runner-facing side ---------------------------------------------------------------
    def bind(self, stream: IdleStream, link: RunnerLink) -> None:
        """Hand the operation to ``stream``'s handler, which then runs :meth:`serve`."""
        if self._link is not None:
            self._link.unwatch(self)
        self._stream, self._link = stream, link
        link.watch(self)
        stream.bound.set_result(self)

    def link_closed(self, link: RunnerLink) -> None:
        """The runner connection the stream travels on closed: the stream is as good as lost.

        Its handler may only learn it when keepalive gives up on the TCP connection (after a
        partition); the operation moves on now (bound again, if nothing was answered yet).
        """
        if link is self._link and self._stream is not None:
            self.lost(self._stream)

    def lost(self, stream: IdleStream) -> None:
        """``stream`` ended before the runner ended its side (or before it was served)."""
        if stream is self._stream and not self.closed:
            self._stream = None
            # The lost stream's handler may still be waiting for input: end it, and give a
            # rebind a pipe of its own (nothing but replayable frames was sent down).
            self._down.put_now(None)
            self._down = Pipe(PIPE_FRAMES)
            self._up.put_now(_LOST)

    async def serve(
        self, stream: IdleStream, frames: AsyncIterator[Any]
    ) -> AsyncIterator[runner_pb2.OperationDown | bytes]:
        """The handler's half: yield the open and the input, relay ``frames`` up.

        ``frames`` are encoded ``OperationUp`` frames from a gRPC call, or the messages
        themselves from the in-process link (:mod:`sandboxd.controlplane.local_link`).
        """
        reader = asyncio.create_task(self._relay_up(stream, frames))
        down = self._down
        try:
            if self.closed or stream is not self._stream:
                return
            yield self.open_frame
            while (frame := await down.get()) is not None:
                yield frame
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.lost(stream)

    async def _relay_up(self, stream: IdleStream, frames: AsyncIterator[Any]) -> None:
        try:
            async for raw in frames:
                if stream is not self._stream:
                    return
                frame: Any = raw  # a message already on the in-process link
                if isinstance(raw, bytes) and (
                    not self._raw_data or data_length(raw, UP_DATA) is None
                ):
                    frame = runner_pb2.OperationUp.FromString(raw)
                await self._up.put(frame)
        except grpc.aio.AioRpcError:
            self.lost(stream)
            return
        except DecodeError:
            log.warning("runner %s sent an undecodable frame; operation ended", self.runner_id)
            self.abort()
            return
        if stream is self._stream and not self.closed:
            self._stream = None  # ended cleanly: no longer "lost" when the call ends
            self._up.put_now(None)


class Operations:
    """Binds operations to runners' idle streams; knows every operation in flight."""

    def __init__(self, registry: RunnerRegistry) -> None:
        self._registry = registry
        self._live: dict[str, set[Operation]] = {}

    def __len__(self) -> int:
        return sum(len(ops) for ops in self._live.values())

    async def open(
        self, runner_id: str, link: RunnerLink, open_frame: Any, *, raw_data: bool = False
    ) -> Operation:
        """Bind a new operation to an idle stream of ``runner_id`` (``link`` or the next one).

        Raises ApiError (CWSANDBOX_RUNNER_UNAVAILABLE) when none is offered in time.
        """
        operation = Operation(self, runner_id, open_frame, raw_data)
        self._live.setdefault(runner_id, set()).add(operation)
        try:
            await self._bind(operation, link)
        except BaseException:
            operation.close()
            raise
        return operation

    async def rebind(self, operation: Operation) -> None:
        """Bind ``operation`` again after its stream died before it started answering."""
        link = operation._link
        assert link is not None
        log.info(
            "operation %s on runner %s: its stream was lost before it started; binding again",
            operation.stream_id,
            operation.runner_id,
        )
        await self._bind(operation, link)

    async def _bind(self, operation: Operation, link: RunnerLink) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BIND_TIMEOUT_SECONDS
        current: RunnerLink | None = link
        while current is not None:
            if not current.closed.is_set():
                stream = await current.take(deadline - loop.time())
                if stream is not None:
                    operation.bind(stream, current)
                    return
                if not current.closed.is_set():
                    break  # the connection is up but offered no stream in time
            left = deadline - loop.time()
            current = await self._registry.next_link(operation.runner_id, current, left)
        raise runner_unavailable(operation.runner_id, "it offered no operation stream in time")

    def forget(self, operation: Operation) -> None:
        """Drop a closed operation from the table."""
        ops = self._live.get(operation.runner_id)
        if ops is not None:
            ops.discard(operation)
            if not ops:
                del self._live[operation.runner_id]

    def close_runner(self, runner_id: str) -> int:
        """Close every operation of a runner (its credential was revoked); how many."""
        ops = list(self._live.get(runner_id, ()))
        for operation in ops:
            operation.abort()
        return len(ops)
