"""Commands to one connected runner, and their answers, over its Connect stream.

Why futures keyed by request id: many operations (start, stop, file reads of several
sandboxes) run at once on the same runner; each awaits only its own answer, and a runner that
drops fails every pending command at once with CWSANDBOX_RUNNER_UNAVAILABLE instead of
leaving callers hanging.
"""

from __future__ import annotations

import asyncio
import itertools

import grpc

from sandboxd._proto import runner_pb2
from sandboxd.errors import ApiError

COMMAND_TIMEOUT_SECONDS = 60.0


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


class RunnerLink:
    """The control plane's handle on one live runner connection."""

    def __init__(self, runner_id: str) -> None:
        self.runner_id = runner_id
        self.outbox: asyncio.Queue[runner_pb2.ControlMessage | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[runner_pb2.CommandResult]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        # Set when the connection ends, for waiters that must not outlive it.
        self.closed = asyncio.Event()

    def send(self, command: runner_pb2.Command) -> None:
        """Queue a command that needs no answer (e.g. OpenExec)."""
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
        """The connection ended: fail everything pending and stop accepting commands."""
        self._closed = True
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(runner_unavailable(self.runner_id, "its connection closed"))
        self._pending.clear()
        self.outbox.put_nowait(None)
