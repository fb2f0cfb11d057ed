"""The runner's half of operation streams: idle ``Operate`` calls kept open, ready to bind.

Why: runners only dial out (DESIGN.md rule 2), so the control plane cannot open a stream to
a runner when a client asks for an exec, a log stream or a file. It used to send an open
command on the control stream and wait for the runner to dial back: a round trip on the path
of every operation. Now the runner keeps a few ``RunnerService.Operate`` calls open and idle
on its connection (:class:`OperationPool`), and the control plane binds an operation by
writing its first frame on one of them. As soon as one is bound, its slot dials a
replacement, off the path of the operation that was just bound.

Each call names the connection it belongs to (``sandboxd-connection`` metadata, from
``Registered.connection_id``), so the control plane puts it in the pool of that connection
only; a call left from an older connection is refused (FAILED_PRECONDITION) and its slot
stops, as the session it belonged to is over. Refusals that will not go away by retrying
(RESOURCE_EXHAUSTED: the control plane holds enough; UNAUTHENTICATED) stop the slot too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import grpc
import grpc.aio

from sandboxd.runner.exec_relay import OperateCall
from sandboxd.runner.stream import RunnerChannel, bearer, runner_stub
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["CONNECTION_HEADER", "DEFAULT_IDLE_OPERATIONS", "OperationPool", "Runner"]

_log = logging.getLogger(__name__)

CONNECTION_HEADER = "sandboxd-connection"
DEFAULT_IDLE_OPERATIONS = 4
"""Idle calls kept open when the control plane does not say (``Registered.idle_operations``)."""
_FINAL = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
)
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0

# Runs one bound operation: its first frame and its call (which it must end).
Runner = Callable[[runner_pb2.OperationDown, OperateCall], Awaitable[None]]


class OperationPool:
    """Keeps ``size`` idle ``Operate`` calls open on ``channel``; runs what is bound to them."""

    def __init__(
        self,
        channel: RunnerChannel,
        credential: str,
        connection_id: int,
        run: Runner,
        size: int = DEFAULT_IDLE_OPERATIONS,
    ) -> None:
        self._stub = runner_stub(channel)
        self._metadata = (*bearer(credential), (CONNECTION_HEADER, str(connection_id)))
        self._run = run
        self._size = max(1, size)
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Keep the slots going until cancelled (the session ended); then end every call."""
        slots = [asyncio.create_task(self._slot(), name="operate-idle") for _ in range(self._size)]
        try:
            await asyncio.gather(*slots)
            await asyncio.Event().wait()  # every slot stopped: bound operations go on
        finally:
            tasks = [*slots, *self._tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _slot(self) -> None:
        delay = _RETRY_FIRST
        while True:
            call = cast(OperateCall, self._stub.Operate(metadata=self._metadata))
            try:
                first = await call.read()
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.aio.AioRpcError as exc:
                call.cancel()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # grpc answers a cancellation that lands in read() with CANCELLED and
                    # consumes it: without this the slot would sleep and redial forever and
                    # the session that cancelled it would never end (seen in CI).
                    raise asyncio.CancelledError from None
                if exc.code() in _FINAL:
                    _log.info("idle operation stream refused (%s): %s", exc.code(), exc.details())
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if not isinstance(first, runner_pb2.OperationDown):  # EOF: the connection closed
                call.cancel()
                return
            delay = _RETRY_FIRST
            task = asyncio.create_task(self._bound(first, call), name="operate-bound")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _bound(self, first: runner_pb2.OperationDown, call: OperateCall) -> None:
        try:
            await self._run(first, call)
        except Exception:
            _log.exception("operation %s failed unexpectedly", first.WhichOneof("frame"))
        finally:
            with contextlib.suppress(Exception):
                call.cancel()
