"""The log stream's pure parts: timestamps, tail, session ids, framing and resume offsets.

The backend side is a list of ``LogChunk`` s served by a tiny reader, so every byte position
and frame boundary can be checked exactly; the relay over gRPC is in
``test_runner_log_relay.py``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest

from sandboxd.backends.base import LogChunk
from sandboxd.runner.log_stream import (
    FRAME_BYTES,
    InvalidResumeOffset,
    LineStamper,
    LogCursor,
    LogFrame,
    SessionNotFound,
    rfc3339,
    session_frames,
    tail_start,
)

T0 = 1_700_000_000.25


def chunks(*parts: bytes, start: float = T0) -> list[LogChunk]:
    return [LogChunk(start + i, "stdout", part) for i, part in enumerate(parts)]


async def serve(items: Sequence[LogChunk]) -> AsyncIterator[LogChunk]:
    for item in items:
        yield item


def reader(items: Sequence[LogChunk]) -> Callable[[bool], AsyncIterator[LogChunk]]:
    return lambda _follow: serve(items)


async def frames_of(
    items: Sequence[LogChunk], cursor: LogCursor | None = None, skip: int = 0
) -> list[LogFrame]:
    cursor = cursor or LogCursor("sb-1", None, 0, False)
    return [f async for f in session_frames(reader(items), cursor, follow=False, skip=skip)]


def test_rfc3339_is_utc_with_microseconds() -> None:
    text = rfc3339(T0).decode()
    assert text == "2023-11-14T22:13:20.250000Z"
    assert datetime.fromisoformat(text) == datetime.fromtimestamp(T0, UTC)


def test_stamper_prefixes_every_line_once_across_chunks() -> None:
    stamper = LineStamper(enabled=True)
    out = stamper.feed(b"a\nb", 1.0) + stamper.feed(b"c\n", 2.0) + stamper.feed(b"d\n\n", 3.0)
    one, three = rfc3339(1.0), rfc3339(3.0)
    assert out == one + b" a\n" + one + b" bc\n" + three + b" d\n" + three + b" \n"
    assert LineStamper(enabled=False).feed(b"x\ny", 1.0) == b"x\ny"


@pytest.mark.parametrize(
    ("parts", "lines", "expected"),
    [
        ((b"a\nb\nc\n",), 2, b"b\nc\n"),
        ((b"a\nb\nc",), 2, b"b\nc"),  # a trailing partial line counts
        ((b"a\n", b"b\n", b"c\n"), 1, b"c\n"),
        ((b"a\nb", b"b\nc\n"), 2, b"bb\nc\n"),
        ((b"a\nb\n",), 5, b"a\nb\n"),  # fewer lines than asked: all
        ((b"",), 3, b""),
        ((b"x" * 10, b"\n" * 3), 2, b"\n\n"),
    ],
)
def test_tail_start(parts: tuple[bytes, ...], lines: int, expected: bytes) -> None:
    raw = b"".join(parts)
    base = asyncio.run(tail_start(serve(chunks(*parts)), lines))
    assert raw[base:] == expected


def test_session_ids_round_trip_and_reject_strangers() -> None:
    cursor = LogCursor("sb-1", 12.5, 42, True)
    token = cursor.encode()
    assert token and LogCursor.decode(token, "sb-1") == cursor
    for bad in ("", "nope", "l1.!!!", "l1." + "e30", token[:-3]):
        with pytest.raises(SessionNotFound):
            LogCursor.decode(bad, "sb-1")
    with pytest.raises(SessionNotFound, match="another sandbox"):
        LogCursor.decode(token, "sb-2")


def test_ready_output_is_coalesced_into_one_frame() -> None:
    frames = asyncio.run(frames_of(chunks(b"one\n", b"tw", b"o\nthr", b"ee")))
    assert [(f.data, f.offset, f.timestamp) for f in frames] == [(b"one\ntwo\nthree", 13, T0)]


def test_a_line_longer_than_a_frame_is_cut() -> None:
    big = b"x" * (FRAME_BYTES + 10) + b"\nend\n"
    frames = asyncio.run(frames_of(chunks(big)))
    assert b"".join(f.data for f in frames) == big
    assert all(len(f.data) <= FRAME_BYTES for f in frames)
    assert frames[-1].offset == len(big)


def test_follow_sends_each_line_when_it_arrives_and_flushes_a_prompt() -> None:
    async def main() -> None:
        queue: asyncio.Queue[LogChunk | None] = asyncio.Queue()

        async def live(_follow: bool) -> AsyncIterator[LogChunk]:
            while (item := await queue.get()) is not None:
                yield item

        cursor = LogCursor("sb-1", None, 0, False)
        frames = session_frames(live, cursor, follow=True, flush_after=0.05)
        for part in (b"first\n", b"sec", b"ond\nthi"):
            queue.put_nowait(LogChunk(T0, "stdout", part))
        # What is ready goes out cut after the last complete line; the rest waits a little.
        assert (await anext(frames)).data == b"first\nsecond\n"
        assert (await anext(frames)).data == b"thi"
        queue.put_nowait(LogChunk(T0, "stdout", b"rd\n"))
        assert (await anext(frames)).data == b"rd\n"
        queue.put_nowait(LogChunk(T0, "stdout", b"Password: "))
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert (await anext(frames)).data == b"Password: "  # no newline, sent after a pause
        assert loop.time() - began >= 0.04
        queue.put_nowait(None)
        with pytest.raises(StopAsyncIteration):
            await anext(frames)

    asyncio.run(main())


def test_resume_at_every_offset_gives_the_rest_of_the_same_stream() -> None:
    items = chunks(b"alpha\nbe", b"ta\n", b"gamma\ndelta", b"\n")
    cursor = LogCursor("sb-1", None, 3, True)  # starts mid-way, with timestamps
    whole = b"".join(f.data for f in asyncio.run(frames_of(items, cursor)))
    assert re.match(rb"^\S+Z ha\n\S+Z beta\n", whole)
    for skip in range(len(whole) + 1):
        frames = asyncio.run(frames_of(items, cursor, skip=skip))
        assert b"".join(f.data for f in frames) == whole[skip:]
        if frames:
            assert frames[-1].offset == len(whole)


def test_a_resume_offset_past_the_end_is_refused() -> None:
    with pytest.raises(InvalidResumeOffset):
        asyncio.run(frames_of(chunks(b"abc\n"), skip=5))


def test_backend_errors_reach_the_caller() -> None:
    async def broken(_follow: bool) -> AsyncIterator[LogChunk]:
        yield LogChunk(T0, "stdout", b"partial\n")
        raise RuntimeError("disk on fire")

    async def main() -> None:
        frames = session_frames(broken, LogCursor("sb-1", None, 0, False), follow=False)
        with pytest.raises(RuntimeError, match="disk on fire"):
            async for _ in frames:
                pass

    asyncio.run(main())
