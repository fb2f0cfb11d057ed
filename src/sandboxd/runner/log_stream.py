"""A sandbox's main-process log as the byte stream a ``StreamLogs`` client reads (v1beta2.md §7).

Why this shape:

* **One merged stream.** Clients concatenate ``data`` and split it into lines themselves; they
  cannot tell stdout from stderr, so chunks are merged in the order the backend recorded them,
  the way a terminal would show them.
* **Frames end at line boundaries where possible**, because a client decodes each frame on
  its own (a UTF-8 character cut in two would be garbled). What is ready is coalesced into
  frames of at most :data:`FRAME_BYTES`; a trailing partial line is held back until its newline
  arrives, :data:`PARTIAL_FLUSH_SECONDS` pass (a prompt without a newline still shows up), or
  the stream ends. Only a line longer than a frame is cut.
* **Resume is cheap because the stream is deterministic.** The backend's log is append-only
  and keeps each chunk's time, so a session is fully described by a :class:`LogCursor`: the
  ``since`` filter, the raw byte where its ``tail_lines`` began, and whether lines carry
  timestamps. The cursor *is* the opaque ``session_id``; resuming re-reads the log and skips
  ``resume_offset`` bytes of the same formatted stream. No state is kept between calls, so a
  resume works after a runner restart too.
* **Timestamps are added here**, because clients print lines unchanged: each line gets the
  RFC 3339 UTC time of the chunk its first byte came in, and a space.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sandboxd.backends.base import LogChunk

__all__ = [
    "FRAME_BYTES",
    "PARTIAL_FLUSH_SECONDS",
    "InvalidResumeOffset",
    "LineStamper",
    "LogCursor",
    "LogFrame",
    "SessionNotFound",
    "rfc3339",
    "session_frames",
    "tail_start",
]

FRAME_BYTES = 64 * 1024
PARTIAL_FLUSH_SECONDS = 0.25
_QUEUE_CHUNKS = 32
_SESSION_PREFIX = "l1."

# Opens the backend's log (``since`` already applied): ``read(follow)``.
LogReader = Callable[[bool], AsyncIterator[LogChunk]]


class SessionNotFound(ValueError):
    """A ``resume_session_id`` this runner did not issue (or for another sandbox)."""


class InvalidResumeOffset(ValueError):
    """A ``resume_offset`` beyond everything the session's stream will ever hold."""


@dataclass(frozen=True)
class LogCursor:
    """Where a log session starts and how it is formatted; encodes to the ``session_id``."""

    sandbox_id: str
    since: float | None
    base: int
    timestamps: bool

    def encode(self) -> str:
        """The opaque, non-empty ``session_id`` of data frames."""
        raw = json.dumps([self.sandbox_id, self.since, self.base, self.timestamps]).encode()
        return _SESSION_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, sandbox_id: str) -> LogCursor:
        """The cursor behind ``token``; :class:`SessionNotFound` if it is not one of ours."""
        if not token.startswith(_SESSION_PREFIX):
            raise SessionNotFound(f"unknown log session {token!r}")
        body = token.removeprefix(_SESSION_PREFIX)
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            sid, since, base, timestamps = json.loads(raw)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise SessionNotFound(f"unknown log session {token!r}") from exc
        valid = (
            isinstance(sid, str)
            and (since is None or isinstance(since, int | float))
            and isinstance(base, int)
            and base >= 0
            and isinstance(timestamps, bool)
        )
        if not valid:
            raise SessionNotFound(f"unknown log session {token!r}")
        if sid != sandbox_id:
            raise SessionNotFound(f"log session {token!r} belongs to another sandbox")
        return cls(sid, None if since is None else float(since), base, timestamps)


@dataclass(frozen=True)
class LogFrame:
    """One ``data`` frame: bytes, time of its first chunk, session offset after it."""

    data: bytes
    timestamp: float
    offset: int


def rfc3339(timestamp: float) -> bytes:
    """``2024-05-01T12:34:56.123456Z``: RFC 3339 / ISO 8601 in UTC, microseconds."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


class LineStamper:
    """Prefixes every line of a byte stream with its chunk's time (when ``enabled``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._at_line_start = True

    def feed(self, data: bytes, timestamp: float) -> bytes:
        """``data`` with a ``"<time> "`` prefix at each line start it contains."""
        if not self.enabled or not data:
            return data
        prefix = rfc3339(timestamp) + b" "
        lines = data.split(b"\n")
        # split() leaves a final "" when data ends with a newline: no line starts there.
        ends_with_newline = lines[-1] == b""
        if ends_with_newline:
            lines.pop()
        out = bytearray()
        for index, line in enumerate(lines):
            if index > 0 or self._at_line_start:
                out += prefix
            out += line
            if index < len(lines) - 1 or ends_with_newline:
                out += b"\n"
        self._at_line_start = ends_with_newline
        return bytes(out)


@contextlib.asynccontextmanager
async def _closing(chunks: AsyncIterator[LogChunk]) -> AsyncIterator[AsyncIterator[LogChunk]]:
    """Close the backend's iterator when we stop early (its generator holds files/tasks)."""
    try:
        yield chunks
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def tail_start(chunks: AsyncIterator[LogChunk], lines: int) -> int:
    """The raw byte offset where the last ``lines`` lines of ``chunks`` begin (0: all).

    A trailing line without a newline counts, as with ``tail -n``.
    """
    starts: deque[int] = deque([0], maxlen=lines + 1)
    position = 0
    async with _closing(chunks):
        async for chunk in chunks:
            data = chunk.data
            found: list[int] = []
            end = len(data)
            while len(found) <= lines and (newline := data.rfind(b"\n", 0, end)) >= 0:
                found.append(position + newline + 1)
                end = newline
            starts.extend(reversed(found))
            position += len(data)
    while len(starts) > 1 and starts[-1] >= position:
        starts.pop()  # just after the final newline: no line starts there
    return starts[-lines] if len(starts) >= lines else 0


class _Failed:
    """A backend error, passed from the reading task to the framing loop."""

    def __init__(self, error: Exception) -> None:
        self.error = error


_FLUSH = object()  # no chunk arrived within the flush delay


async def _produce(
    read: LogReader, follow: bool, queue: asyncio.Queue[LogChunk | _Failed | None]
) -> None:
    """Backend chunks into a bounded queue: a slow client slows the reading down."""
    try:
        chunks = read(follow)
        async with _closing(chunks):
            async for chunk in chunks:
                await queue.put(chunk)
    except Exception as exc:
        await queue.put(_Failed(exc))
        return
    await queue.put(None)


class _Formatter:
    """Backend chunks to the session's bytes: drop ``base`` raw bytes, stamp, skip ``skip``."""

    def __init__(self, cursor: LogCursor, skip: int) -> None:
        self._base = cursor.base
        self._skip = skip
        self._stamper = LineStamper(cursor.timestamps)
        self.raw = 0  # backend bytes consumed
        self.position = 0  # session bytes consumed, skipped ones included

    def feed(self, chunk: LogChunk) -> bytes:
        data = chunk.data
        start = self.raw
        self.raw += len(data)
        if self.raw <= self._base:
            return b""
        text = self._stamper.feed(data[max(0, self._base - start) :], chunk.timestamp)
        start, self.position = self.position, self.position + len(text)
        return text[max(0, self._skip - start) :]


def _cut(pending: bytearray, *, whole: bool) -> int:
    """How many leading bytes of ``pending`` to send as the next frame (0: wait for more)."""
    if len(pending) >= FRAME_BYTES:
        newline = pending.rfind(b"\n", 0, FRAME_BYTES)
        return newline + 1 if newline >= 0 else FRAME_BYTES
    return len(pending) if whole else pending.rfind(b"\n") + 1


async def session_frames(
    read: LogReader,
    cursor: LogCursor,
    *,
    follow: bool,
    skip: int = 0,
    flush_after: float = PARTIAL_FLUSH_SECONDS,
) -> AsyncGenerator[LogFrame, None]:
    """The frames of ``cursor``'s session from byte ``skip`` on; see the module docstring.

    Ends when the backend's log ends (non-follow: what exists; follow: the sandbox ended).
    Backend errors propagate; :class:`InvalidResumeOffset` if ``skip`` is never reached.
    """
    queue: asyncio.Queue[LogChunk | _Failed | None] = asyncio.Queue(_QUEUE_CHUNKS)
    producer = asyncio.create_task(_produce(read, follow, queue), name="log-reader")
    formatter = _Formatter(cursor, skip)
    pending = bytearray()
    pending_at = 0.0
    try:
        while True:
            item: object
            try:
                async with asyncio.timeout(flush_after if pending else None):
                    item = await queue.get()
            except TimeoutError:
                item = _FLUSH
            if item is None:
                break
            if isinstance(item, _Failed):
                raise item.error
            if isinstance(item, LogChunk):
                text = formatter.feed(item)
                if text and not pending:
                    pending_at = item.timestamp
                pending += text
            # Coalesce while more is ready; otherwise send every complete line now.
            more_ready = not queue.empty()
            while pending and not (more_ready and len(pending) < FRAME_BYTES):
                size = _cut(pending, whole=item is _FLUSH)
                if not size:
                    break
                offset = formatter.position - len(pending) + size
                yield LogFrame(bytes(pending[:size]), pending_at, offset)
                del pending[:size]
        while pending:
            size = _cut(pending, whole=True)
            yield LogFrame(
                bytes(pending[:size]), pending_at, formatter.position - len(pending) + size
            )
            del pending[:size]
        if formatter.position < skip:
            raise InvalidResumeOffset(
                f"resume offset {skip} is beyond the end of the log ({formatter.position} bytes)"
            )
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
