"""``GatewayStreamingService``: exec and log streams relayed to the runner that owns the sandbox.

Exec, per v1beta2.md §5: the first client frame is ``init``; a client half-close means stdin
EOF, not cancellation; ``ready`` comes first, output frames as produced, ``exit`` last. A
client that says it sends no input (``sandboxd-no-stdin: 1`` metadata, what our client does
for a plain ``exec``) gets no ``ready`` and sends nothing after ``init``: the process starts
with stdin closed, which saves a frame on each hop. The exec is bound to one of the runner's
idle operation streams (:mod:`sandboxd.controlplane.operations`) and ``ready`` is sent as
soon as it is: input the client sends from then on waits in that stream's flow control until
the process reads it, so the runner never has to say "ready" itself.

Logs, per §7: one ``init``; the runner reads the backend's log, cuts frames at line
boundaries, adds the timestamp prefixes and the resumable ``session_id``/``offset``, and
ends with ``complete`` (non-follow: once what exists is sent; follow: once the sandbox has
ended). Here we only relay, and end a follow early with ``complete`` when the client sends
``close`` or half-closes. Logs of stopped sandboxes are served too: the runner keeps them.

Both: conditions found after the stream is accepted (sandbox not running, runner gone) are
reported in-band as an ``error`` frame, which every client turns into a typed exception;
gRPC statuses are kept for malformed requests, unknown sandboxes, auth and quotas.
Both find their sandbox through ``Lifecycle.record``, which hides other organizations'.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import grpc

from sandboxd.controlplane.call_headers import SANDBOX_HEADER, WAIT_RUNNING_HEADER
from sandboxd.controlplane.gateway import get_response
from sandboxd.controlplane.lifecycle import Lifecycle, sandbox_not_found, sandbox_paused
from sandboxd.controlplane.limits import check_exec_init
from sandboxd.controlplane.operations import Operation, Operations
from sandboxd.controlplane.sandbox_model import (
    START_TIMEOUT_SECONDS,
    STARTING_STATUSES,
    SandboxRecord,
    now,
)
from sandboxd.controlplane.start_request import not_implemented
from sandboxd.errors import ApiError, abort_with, invalid_argument
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2, streaming_pb2, streaming_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
MAX_TTY_DIMENSION = 10_000
CLIENT_DRAIN_SECONDS = 2.0
# How long a log request on a sandbox that is still being created waits for it to start.
LOGS_START_WAIT_SECONDS = 60.0
# Past its start deadline the reconciler fails a start; an exec waiting on it sees that.
START_DEADLINE_SLACK_SECONDS = 5.0
# How long an exec the runner has run waits for its sandbox's RUNNING report (see _started).
ANNOUNCE_WAIT_SECONDS = 2.0
S = gateway_pb2
NO_STDIN_HEADER = "sandboxd-no-stdin"
"""Call metadata (value ``1``) of an exec whose client sends no input: its stdin is closed
from the start and it needs no ``ready`` (our client sends it; others get the full §5)."""
_CLOSE = runner_pb2.OperationDown(
    input=streaming_pb2.ExecStreamRequest(close=streaming_pb2.ExecStreamClose())
)


async def _first_request(requests: AsyncIterator[T]) -> T:
    """The first client frame, which must exist (it carries ``init``)."""
    try:
        return await anext(requests)
    except StopAsyncIteration:
        raise invalid_argument("init", "the stream ended before init") from None


def _stdin_closed(open_frame: runner_pb2.OperationDown) -> None:
    open_frame.exec.stdin_closed = True


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
    check_exec_init(init)  # sizes (limits.py): what reaches the sandbox's agent must fit
    return init


def log_error(code: str, message: str) -> streaming_pb2.LogStreamResponse:
    """An in-band, terminal log-stream error."""
    return streaming_pb2.LogStreamResponse(
        error=streaming_pb2.LogStreamError(code=code, message=message)
    )


def _check_log_init(first: streaming_pb2.LogStreamRequest) -> streaming_pb2.LogStreamInit:
    if first.WhichOneof("request") != "init":
        raise invalid_argument("init", "the first message of StreamLogs must be init")
    init = first.init
    if init.tail_lines < 0:
        raise invalid_argument("init.tail_lines", "must not be negative (0 means all lines)")
    if init.HasField("since_time"):
        since = init.since_time
        if not 0 <= since.nanos < 1_000_000_000 or not 0 <= since.seconds < 253_402_300_800:
            raise invalid_argument("init.since_time", "must be a valid time after 1970")
    return init


def _open_logs(init: streaming_pb2.LogStreamInit) -> runner_pb2.OperationDown:
    command = runner_pb2.OpenLogs(
        sandbox_id=init.sandbox_id,
        follow=init.follow,
        tail_lines=init.tail_lines,
        timestamps=init.timestamps,
        resume_session_id=init.resume_session_id,
        resume_offset=init.resume_offset,
    )
    if init.HasField("since_time"):
        command.since_time.CopyFrom(init.since_time)
    return runner_pb2.OperationDown(logs=command)


class StreamingService(streaming_pb2_grpc.GatewayStreamingServiceServicer):
    """StreamExec and StreamLogs, each relayed over one operation on the sandbox's runner."""

    def __init__(self, lifecycle: Lifecycle, operations: Operations) -> None:
        self._lifecycle = lifecycle
        self._operations = operations

    async def StreamExec(
        self,
        request_iterator: AsyncIterator[streaming_pb2.ExecStreamRequest],
        context: Context,
    ) -> AsyncIterator[streaming_pb2.ExecStreamResponse]:
        """Start the process on the sandbox's runner and relay frames both ways.

        The exec counts against its sandbox's organization's ``concurrent_execs`` quota for
        as long as the call lasts; over the quota, the call ends RESOURCE_EXHAUSTED.
        """
        quotas = self._lifecycle.quotas
        metadata = context.invocation_metadata() or ()
        try:
            init = _check_init(await _first_request(request_iterator))
            record = await self._lifecycle.record(init.sandbox_id)
            quotas.acquire_exec(record.owner_org)
        except ApiError as error:
            await abort_with(context, error)
        try:
            no_stdin = (NO_STDIN_HEADER, "1") in metadata
            announce: Context | None = None
            runner_waits = False
            if (WAIT_RUNNING_HEADER, "1") in metadata:
                announce = context
                if no_stdin and record.status in STARTING_STATUSES:
                    runner_waits = True  # sent now; the runner holds it until the start is done
                else:  # ``ready`` must not go out before the sandbox runs: wait here
                    record = await self._await_start(record, context)
            # aclosing: a client that goes away closes the relay (and its session) at once.
            async with contextlib.aclosing(
                self._relay_exec(
                    record,
                    init,
                    request_iterator,
                    no_stdin=no_stdin,
                    announce=announce,
                    runner_waits=runner_waits,
                )
            ) as frames:
                async for frame in frames:
                    yield frame
        finally:
            quotas.release_exec(record.owner_org)

    async def _await_start(self, record: SandboxRecord, context: Context) -> SandboxRecord:
        """Wait while ``record`` is being created; the record once it runs or has ended.

        Bounded by the sandbox's start deadline (past it the reconciler fails the start), and
        by the client, whose cancellation ends the call. A sandbox deleted meanwhile is
        answered like an unknown one (NOT_FOUND).
        """
        if record.status in STARTING_STATUSES:
            left = START_TIMEOUT_SECONDS
            if record.start_deadline is not None:
                left = (record.start_deadline - now()).total_seconds()
            fresh = await self._settled(record, max(left, 0.0) + START_DEADLINE_SLACK_SECONDS)
            if fresh is None:
                await abort_with(context, sandbox_not_found(record.sandbox_id))
            record = fresh
        return record

    async def _started(self, record: SandboxRecord) -> SandboxRecord:
        """The record of a sandbox its runner has run a command in, once it says RUNNING.

        The runner reports RUNNING before it runs the exec, on another stream, so this
        rarely waits; if the report is late or the record gone, the last record known.
        """
        return await self._settled(record, ANNOUNCE_WAIT_SECONDS) or record

    async def _settled(self, record: SandboxRecord, timeout: float) -> SandboxRecord | None:
        """The record once no longer starting (None: gone), or as it is after ``timeout``."""
        return await self._lifecycle.records.wait_for(
            record.sandbox_id, lambda r: r is None or r.status not in STARTING_STATUSES, timeout
        )

    async def _announce(self, context: Context, record: SandboxRecord) -> None:
        """Send ``SANDBOX_HEADER``: the sandbox as Get answers it, in the exec's headers.

        Only ever for a command handed to a running sandbox, so a record still marked as
        starting (a late report) is shown RUNNING: the client must not think otherwise and
        send the command a second time.
        """
        answer = get_response(record, self._lifecycle.reason_of(record))
        if answer.sandbox_status in STARTING_STATUSES:
            answer.sandbox_status = S.SANDBOX_STATUS_RUNNING
        await context.send_initial_metadata(((SANDBOX_HEADER, answer.SerializeToString()),))

    async def _relay_exec(
        self,
        record: SandboxRecord,
        init: streaming_pb2.ExecStreamInit,
        request_iterator: AsyncIterator[streaming_pb2.ExecStreamRequest],
        *,
        no_stdin: bool,
        announce: Context | None = None,
        runner_waits: bool = False,
    ) -> AsyncGenerator[streaming_pb2.ExecStreamResponse]:
        """The exec's frames; ``announce``: first send the sandbox's state as a header.

        The header (``SANDBOX_HEADER``) tells the client that its command was handed to a
        running sandbox, and what Get would say of it: once the command is on its way to
        the runner (the write overlaps the run), or with ``runner_waits`` (the runner waits
        for the sandbox's start, ``OpenExec.wait_start``) once the runner says the command
        runs (its ``ready`` frame, ``OpenExec.announce_running``, or else its first frame),
        the proof that it ran. A refused exec has no header: nothing ran, and the client
        asks Get what became of the sandbox before it tries again. Why the runner's
        ``ready``: sending the header is a round of its own through gRPC (1-2 ms on a busy
        2-core host); after the first frame it came on top of the whole command (for a
        create's first exec, the command's exit), now it overlaps the command's run.
        """
        try:
            if runner_waits:
                link = self._lifecycle.link_for(record)
            else:
                link = self._lifecycle.running_link(record)
            operation = await self._operations.open(
                record.runner_id,
                link,
                runner_pb2.OperationDown(
                    exec=runner_pb2.OpenExec(
                        sandbox_id=record.sandbox_id,
                        command=init.command,
                        tty=init.tty,
                        tty_width=init.tty_width,
                        tty_height=init.tty_height,
                        env=init.env,
                        stdin_closed=no_stdin,
                        wait_start=runner_waits,
                        announce_running=runner_waits,  # it always comes with ``announce``
                    )
                ),
            )
        except ApiError as error:
            yield error_frame(error.reason.removeprefix("CWSANDBOX_") or "ERROR", error.message)
            return
        pump: asyncio.Task[None] | None = None
        try:
            if announce is not None and not runner_waits:
                await self._announce(announce, record)
                announce = None
            if not no_stdin:
                pump = asyncio.create_task(self._pump_client(request_iterator, operation))
                ready = streaming_pb2.StreamingExecReady(session_id=operation.stream_id)
                ready.ready_at.GetCurrentTime()
                yield streaming_pb2.ExecStreamResponse(ready=ready)
            while True:
                frame = await operation.receive()
                if frame is None:
                    yield error_frame(
                        "RUNNER_UNAVAILABLE", "the runner's exec stream ended without an exit"
                    )
                    return
                kind = frame.exec.WhichOneof("response")
                if announce is not None:
                    if kind != "error":
                        await self._announce(announce, await self._started(record))
                    announce = None
                if kind == "ready":  # the runner's word that the command runs: ours alone
                    continue
                yield frame.exec
                if kind in ("exit", "error"):
                    await self._let_client_finish(operation, pump)
                    return
        except ApiError as error:
            yield error_frame(error.reason.removeprefix("CWSANDBOX_") or "ERROR", error.message)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            operation.close()

    @staticmethod
    async def _let_client_finish(operation: Operation, pump: asyncio.Task[None] | None) -> None:
        """After exit, give the client a moment to half-close before the call ends.

        A client streaming stdin (a file upload, say) may still be writing when the process
        exits early (e.g. permission denied); ending the call at once turns its next write
        into an INTERNAL error on the client instead of the exit frame it should read.
        """
        operation.close()  # the runner's side is over; stdin is discarded
        if pump is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump), CLIENT_DRAIN_SECONDS)

    @staticmethod
    async def _pump_client(
        request_iterator: AsyncIterator[streaming_pb2.ExecStreamRequest], operation: Operation
    ) -> None:
        """The client's stdin, resize and close frames to the runner, in order.

        The end of stdin (``close``, or a half-close, which is stdin EOF per §5.1) is sent
        so that a rebind carries it in the open instead (``OpenExec.stdin_closed``).
        """
        closed = False
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for request in request_iterator:
                kind = request.WhichOneof("request")
                if closed or kind not in ("stdin", "resize", "close"):
                    continue
                if kind == "close":
                    closed = True
                    operation.send_replayable(_CLOSE, _stdin_closed)
                elif not await operation.send(runner_pb2.OperationDown(input=request)):
                    return
        if not closed:
            operation.send_replayable(_CLOSE, _stdin_closed)

    async def StreamLogs(
        self,
        request_iterator: AsyncIterator[streaming_pb2.LogStreamRequest],
        context: Context,
    ) -> AsyncIterator[streaming_pb2.LogStreamResponse]:
        """Ask the sandbox's runner for its logs and relay them until complete or closed."""
        try:
            init = _check_log_init(await _first_request(request_iterator))
            record = await self._lifecycle.record(init.sandbox_id)
        except ApiError as error:
            await abort_with(context, error)
        record = await self._wait_created(record)
        if record.paused:  # refused like exec and files (pausing.py)
            yield log_error("SANDBOX_PAUSED", sandbox_paused(record).message)
            return
        try:
            link = self._lifecycle.link_for(record)
        except ApiError as error:
            yield log_error("RUNNER_UNAVAILABLE", error.message)
            return
        watcher: asyncio.Task[None] | None = None
        operation: Operation | None = None
        try:
            operation = await self._operations.open(record.runner_id, link, _open_logs(init))
            watcher = asyncio.create_task(self._watch_log_client(request_iterator, init.follow))
            while True:
                frame = await self._next_log_frame(operation, watcher)
                if frame is None:
                    yield log_error(
                        "RUNNER_UNAVAILABLE", "the runner's log stream ended before it completed"
                    )
                    return
                yield frame
                if frame.WhichOneof("response") in ("complete", "error"):
                    return
        except ApiError as error:
            yield log_error(error.reason.removeprefix("CWSANDBOX_") or "ERROR", error.message)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            if operation is not None:
                operation.close()

    async def _wait_created(self, record: SandboxRecord) -> SandboxRecord:
        """A sandbox still being created has no log on its runner yet: wait for its start."""
        fresh = await self._lifecycle.records.wait_for(
            record.sandbox_id,
            lambda r: r is None or r.status != S.SANDBOX_STATUS_CREATING,
            LOGS_START_WAIT_SECONDS,
        )
        return fresh or record

    @staticmethod
    async def _next_log_frame(
        operation: Operation, watcher: asyncio.Task[None]
    ) -> streaming_pb2.LogStreamResponse | None:
        """The runner's next frame (None: its stream ended), or ``complete`` if the client left.

        Once the client has ended a follow, what the runner has not sent yet is not wanted,
        so the client's end is checked first: a chatty sandbox keeps the pipe full.
        """
        complete = streaming_pb2.LogStreamResponse(complete=streaming_pb2.LogStreamComplete())
        if watcher.done():
            return complete
        getter = asyncio.ensure_future(operation.receive())
        try:
            await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)
        if getter.done() and not getter.cancelled():
            frame = getter.result()  # raises ApiError when the runner was lost
            return None if frame is None else frame.logs
        return complete

    @staticmethod
    async def _watch_log_client(
        request_iterator: AsyncIterator[streaming_pb2.LogStreamRequest], follow: bool
    ) -> None:
        """Return when the client ends the stream: ``close`` always, a half-close on a follow.

        A non-follow client half-closes right after init (v1beta2.md §7) and still expects
        everything, so there the half-close is not an end.
        """
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for request in request_iterator:
                if request.WhichOneof("request") == "close":
                    return
        if follow:
            return
        await asyncio.Event().wait()  # until the stream ends by itself and cancels us
