"""One connected runner: commands and answers on its Connect stream, and its idle streams.

Why futures keyed by request id: many lifecycle commands (starts, stops of several
sandboxes) run at once on the same runner; each awaits only its own answer, and a runner that
drops fails every pending command at once with CWSANDBOX_RUNNER_UNAVAILABLE instead of
leaving callers hanging.

Why idle streams live here: an ``Operate`` call the runner opened ahead of need travels on
the same HTTP/2 connection as this link's Connect stream, so it is good exactly as long as
this link is; closing the link ends them all (their handlers see :data:`None` bound), and an
operation waiting for one moves on to the runner's next connection.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any

import grpc

from sandboxd.errors import ApiError
from sandboxd_protocol.sandboxd_v1 import runner_pb2

COMMAND_TIMEOUT_SECONDS = 60.0
IDLE_OPERATIONS = 4
"""Idle ``Operate`` streams a runner keeps open: enough for a burst to bind without waiting
while replacements are dialled; more are refused (each holds a handler here)."""


def runner_unavailable(runner_id: str, why: str) -> ApiError:
    """The runner that owns a sandbox cannot be reached right now (retryable)."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        f"runner {runner_id!r} is unavailable: {why}",
        reason="CWSANDBOX_RUNNER_UNAVAILABLE",
        metadata={"runner_id": runner_id},
        retry_after_seconds=1.0,
    )


def failure_error(failure: runner_pb2.Failure) -> ApiError:
    """The public error a runner's Failure stands for."""
    code = next((c for c in grpc.StatusCode if c.value[0] == failure.code), None)
    return ApiError(
        code or grpc.StatusCode.INTERNAL,
        failure.message,
        reason=failure.reason,
        metadata=dict(failure.metadata),
    )


class IdleStream:
    """A runner's ``Operate`` call waiting for work: its handler awaits :attr:`bound`.

    The result is the operation to carry, or ``None`` when the link closed first.
    """

    __slots__ = ("bound",)

    def __init__(self) -> None:
        self.bound: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


class RunnerLink:
    """The control plane's handle on one live runner connection."""

    def __init__(self, runner_id: str, idle_limit: int = IDLE_OPERATIONS) -> None:
        self.runner_id = runner_id
        self.outbox: asyncio.Queue[runner_pb2.ControlMessage | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[runner_pb2.CommandResult]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        # Set when the connection ends, for waiters that must not outlive it.
        self.closed = asyncio.Event()
        self.idle_limit = idle_limit
        self._idle: deque[IdleStream] = deque()
        self._takers: deque[asyncio.Future[IdleStream | None]] = deque()
        # Operations bound to this connection's streams, told when it closes (``watch``).
        self._bound: set[Any] = set()

    # -- idle operation streams --------------------------------------------------------------
    def offer(self) -> IdleStream | None:
        """Take in a new idle stream; None when closed or already holding ``idle_limit``."""
        if self._closed or len(self._idle) >= self.idle_limit:
            return None
        stream = IdleStream()
        self._hand_over(stream)
        return stream

    def _hand_over(self, stream: IdleStream) -> None:
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_result(stream)
                return
        self._idle.append(stream)

    def withdraw(self, stream: IdleStream) -> None:
        """Forget an idle stream whose call ended (the runner cancelled it)."""
        if stream in self._idle:
            self._idle.remove(stream)

    @property
    def idle(self) -> int:
        """How many idle streams are waiting."""
        return len(self._idle)

    async def take(self, timeout: float) -> IdleStream | None:
        """An idle stream, waiting up to ``timeout`` for one; None if closed or none came.

        A taker cancelled just after a stream was handed to it gives it back, so no stream
        is left waiting for an operation that nobody will bind.
        """
        if self._idle:
            return self._idle.popleft()
        if self._closed or timeout <= 0:
            return None
        taker: asyncio.Future[IdleStream | None] = asyncio.get_running_loop().create_future()
        self._takers.append(taker)
        try:
            async with asyncio.timeout(timeout):
                return await taker
        except TimeoutError:
            self._give_back(taker)
            return None
        except asyncio.CancelledError:
            self._give_back(taker)
            raise
        finally:
            if taker in self._takers:
                self._takers.remove(taker)

    def _give_back(self, taker: asyncio.Future[IdleStream | None]) -> None:
        """A stream handed to a taker that stopped waiting goes back to the pool."""
        if not taker.done() or taker.cancelled() or taker.result() is None:
            return
        given = taker.result()
        assert given is not None
        if self._closed:
            given.bound.set_result(None)
        else:
            self._hand_over(given)

    def watch(self, operation: Any) -> None:
        """Call ``operation.link_closed(self)`` when this connection closes."""
        if self._closed:
            operation.link_closed(self)
        else:
            self._bound.add(operation)

    def unwatch(self, operation: Any) -> None:
        """Stop telling ``operation`` (it is over)."""
        self._bound.discard(operation)

    def send(self, command: runner_pb2.Command) -> None:
        """Queue a command that needs no answer (e.g. a delete of an unknown sandbox)."""
        if self._closed:
            raise runner_unavailable(self.runner_id, "its connection closed")
        if not command.request_id:
            command.request_id = str(next(self._ids))
        self.outbox.put_nowait(runner_pb2.ControlMessage(command=command))

    async def call(
        self, command: runner_pb2.Command, timeout: float = COMMAND_TIMEOUT_SECONDS
    ) -> runner_pb2.CommandResult:
        """Send a command and wait for its result; a Failure is raised as :class:`ApiError`."""
        command.request_id = str(next(self._ids))
        future: asyncio.Future[runner_pb2.CommandResult] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[command.request_id] = future
        try:
            self.send(command)
            async with asyncio.timeout(timeout):
                result = await future
        except TimeoutError as exc:
            raise runner_unavailable(self.runner_id, f"no answer within {timeout:.0f} s") from exc
        finally:
            self._pending.pop(command.request_id, None)
        if result.HasField("failure"):
            raise failure_error(result.failure)
        return result

    def resolve(self, result: runner_pb2.CommandResult) -> None:
        """Deliver a runner's answer to whoever is waiting for it."""
        future = self._pending.get(result.request_id)
        if future is not None and not future.done():
            future.set_result(result)

    def close(self) -> None:
        """The connection ended: fail everything pending, end idle streams, stop accepting."""
        self._closed = True
        self.closed.set()
        while self._idle:
            stream = self._idle.popleft()
            if not stream.bound.done():
                stream.bound.set_result(None)
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_result(None)
        bound, self._bound = self._bound, set()
        for operation in bound:
            operation.link_closed(self)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(runner_unavailable(self.runner_id, "its connection closed"))
        self._pending.clear()
        self.outbox.put_nowait(None)
