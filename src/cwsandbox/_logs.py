r"""``Sandbox.stream_logs``: the main process's output as lines (protocol §7).

The server sends ``data`` frames cut wherever it likes; the caller wants lines. Bytes go
through one incremental UTF-8 decoder (so a character split across frames stays whole,
which per-frame decoding would garble) into a buffer that yields each complete line with
its ``\n``; a partial last line is flushed at the end, and a line longer than 1 MiB is
flushed as is rather than held without bound. The reader is bounded, so a slow consumer
slows the stream down instead of filling memory.

``follow=True`` keeps the request side open; closing the reader sends ``close`` and
half-closes. A follow stream that breaks (UNAVAILABLE/INTERNAL/UNKNOWN, or an in-band
``SESSION_NOT_FOUND``/``REPLAY_GAP``/``RUNNER_UNAVAILABLE``/``RUNNER_DRAINING``) is opened
again, at most 3 attempts in all with 0.5/1/2 s backoff: resumed from the last
``session_id``/``offset`` when the server gave them, else fresh, skipping the bytes already
delivered when the first request had no ``tail_lines``/``since_time`` filter.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from cwsandbox._error_mapping import sandbox_error
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._streams import StreamReader
from cwsandbox._transport import LogsCall
from cwsandbox.exceptions import SandboxError, SandboxFailedError, SandboxTerminatedError
from sandboxd_protocol.v1beta2 import streaming_pb2 as st

__all__ = ["LINE_LIMIT", "LogRequest", "run_logs"]

#: Lines that may wait unread before the stream is slowed down.
LINE_LIMIT = 4096
#: A line longer than this is delivered in pieces.
MAX_LINE_CHARS = 1024 * 1024
ATTEMPTS = 3
BACKOFF_SECONDS = (0.5, 1.0, 2.0)
#: After ``close``, how long the server gets to say ``complete`` before the call is cancelled.
CLOSE_GRACE_SECONDS = 5.0
_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
_FRESH_CODES = frozenset(
    {"SESSION_NOT_FOUND", "REPLAY_GAP", "RUNNER_UNAVAILABLE", "RUNNER_DRAINING"}
)


@dataclass(frozen=True)
class LogRequest:
    """What the caller asked for."""

    follow: bool
    tail_lines: int | None
    since_time: datetime | None
    timestamps: bool
    timeout: float | None
    connect_timeout: float


class _Lines:
    """Bytes in, complete lines out (to a bounded reader)."""

    def __init__(self, reader: StreamReader[str]) -> None:
        self.reader = reader
        self.buffer = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.delivered = 0  # bytes taken in, for skipping a replay after a fresh re-init

    async def feed(self, data: bytes, final: bool = False) -> bool:
        """Emit every complete line; False once the reader was closed."""
        self.delivered += len(data)
        self.buffer += self.decoder.decode(data, final)
        while True:
            cut = self.buffer.find("\n")
            if cut < 0:
                if len(self.buffer) <= MAX_LINE_CHARS and not final:
                    return True
                cut = len(self.buffer) - 1
                if cut < 0:
                    return True
            line, self.buffer = self.buffer[: cut + 1], self.buffer[cut + 1 :]
            if not await self.reader._put(line):
                return False


def _init(sid: str, req: LogRequest, first: bool, session: str, offset: int) -> st.LogStreamInit:
    init = st.LogStreamInit(sandbox_id=sid, follow=req.follow)
    if req.timestamps:
        init.timestamps = True
    if session:
        init.resume_session_id, init.resume_offset = session, offset
    elif first:
        if req.tail_lines:
            init.tail_lines = req.tail_lines
        if req.since_time is not None:
            since = req.since_time
            init.since_time.FromDatetime(since if since.tzinfo else since.replace(tzinfo=UTC))
    return init


@dataclass
class _Progress:
    """Where a follow stream got to, for resuming it."""

    follow: bool
    session: str = ""
    offset: int = 0


class _Retry(Exception):
    """The stream broke in a way worth another attempt (``fresh``: drop the session)."""

    def __init__(self, fresh: bool) -> None:
        super().__init__("retry")
        self.fresh = fresh


async def _closer(call: LogsCall, closing: asyncio.Event) -> None:
    """Follow mode: when the reader is closed, say ``close``; cancel if the server lingers."""
    with contextlib.suppress(Exception):
        await closing.wait()
        await call.write(st.LogStreamRequest(close=st.LogStreamClose()))
        await call.done_writing()
        await asyncio.sleep(CLOSE_GRACE_SECONDS)
    call.cancel()


async def _attempt(call: LogsCall, lines: _Lines, skip: int, progress: _Progress) -> bool:
    """Read one call to its end; False if the reader was closed."""
    while True:
        msg = await call.read()
        if msg is EOF:
            return True
        assert isinstance(msg, st.LogStreamResponse)
        kind = msg.WhichOneof("response")
        if kind == "data":
            frame = msg.data
            if frame.session_id:
                progress.session = frame.session_id
            progress.offset = frame.offset or progress.offset + len(frame.data)
            data = frame.data
            if skip:
                dropped = min(skip, len(data))
                data, skip = data[dropped:], skip - dropped
            if data and not await lines.feed(data):
                return False
        elif kind == "complete":
            return True
        elif kind == "error":
            if msg.error.code in _FRESH_CODES and progress.follow:
                raise _Retry(fresh=True)
            raise SandboxError(
                f"Log stream error: {msg.error.message}", reason=msg.error.code or None
            )


async def run_logs(
    life: Lifecycle, req: LogRequest, reader: StreamReader[str], closing: asyncio.Event
) -> None:
    """Stream the logs into ``reader`` and end it (with the error, if one ended the stream)."""
    try:
        await _run(life, req, reader, closing)
    except BaseException as exc:
        reader._end(None if isinstance(exc, asyncio.CancelledError) else exc)
        raise
    reader._end(None)


async def _run(
    life: Lifecycle, req: LogRequest, reader: StreamReader[str], closing: asyncio.Event
) -> None:
    sid = await life.ensure_started()
    if not life.state.stopping:
        # Logs of a sandbox that failed or was terminated are exactly what one wants to see.
        with contextlib.suppress(SandboxFailedError, SandboxTerminatedError):
            await life.wait_ready(None)
    lines = _Lines(reader)
    progress = _Progress(req.follow)
    filtered = bool(req.tail_lines) or req.since_time is not None
    for attempt in range(ATTEMPTS):
        skip = 0 if (attempt == 0 or progress.session or filtered) else lines.delivered
        call = await life.transport.open_logs(
            timeout=req.timeout, ready_timeout=req.connect_timeout
        )
        closer: asyncio.Task[None] | None = None
        try:
            init = _init(sid, req, attempt == 0, progress.session, progress.offset)
            await call.write(st.LogStreamRequest(init=init))
            if req.follow:
                closer = asyncio.create_task(_closer(call, closing))
            else:
                await call.done_writing()
            if not await _attempt(call, lines, skip, progress):
                return
            await lines.feed(b"", final=True)
            return
        except _Retry:
            progress.session, progress.offset = "", 0
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
            if closing.is_set() and code is grpc.StatusCode.CANCELLED:
                await lines.feed(b"", final=True)
                return  # we cancelled it ourselves after close
            if not (req.follow and code in _RETRY_CODES) or attempt == ATTEMPTS - 1:
                raise sandbox_error(err, operation="stream_logs", sandbox_id=sid) from None
        finally:
            if closer is not None:
                closer.cancel()
            call.cancel()
        if attempt == ATTEMPTS - 1:
            raise SandboxError("Log stream error: the stream kept breaking; giving up")
        await asyncio.sleep(BACKOFF_SECONDS[attempt])
