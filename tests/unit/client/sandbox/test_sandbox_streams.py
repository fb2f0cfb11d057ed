"""``StreamReader``/``StreamWriter`` on their own: bounds, order, closing (no server)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cwsandbox import _loop
from cwsandbox._streams import StreamReader, StreamWriter


def test_bounded_reader_makes_the_producer_wait_and_keeps_order() -> None:
    reader: StreamReader[int] = StreamReader(limit=4)
    produced: list[int] = []

    async def produce() -> None:
        for i in range(200):
            assert await reader._put(i)
            produced.append(i)
        reader._end()

    future = _loop.submit(produce())
    time.sleep(0.2)
    assert len(produced) == 4  # full: the producer waits instead of buffering more
    got = []
    for item in reader:
        got.append(item)
        if len(got) % 50 == 0:
            time.sleep(0.01)  # a slow consumer loses nothing
    future.result(5)
    assert got == list(range(200))


def test_weighted_limit_counts_bytes() -> None:
    reader: StreamReader[bytes] = StreamReader(limit=10, weigh=len)

    async def produce() -> None:
        for _ in range(3):
            await reader._put(b"x" * 6)
        reader._end()

    future = _loop.submit(produce())
    time.sleep(0.1)
    assert reader._held == 12  # one item may overshoot the limit, a second must wait
    assert b"".join(reader) == b"x" * 18
    future.result(5)


def test_close_releases_a_waiting_producer_and_calls_back() -> None:
    closed = threading.Event()
    reader: StreamReader[int] = StreamReader(limit=1, on_close=closed.set)
    results: list[bool] = []

    async def produce() -> None:
        results.append(await reader._put(1))
        results.append(await reader._put(2))  # waits: the reader is full
        results.append(await reader._put(3))

    future = _loop.submit(produce())
    time.sleep(0.1)
    assert results == [True]
    reader.close()
    future.result(5)
    assert results == [True, False, False]
    assert closed.is_set() and reader.closed
    assert list(reader) == []
    reader.close()  # idempotent


def test_error_is_raised_after_the_items() -> None:
    reader: StreamReader[str] = StreamReader()
    reader._feed("a")
    reader._end(ValueError("boom"))
    it = iter(reader)
    assert next(it) == "a"
    with pytest.raises(ValueError, match="boom"):
        next(it)


def test_async_iteration_of_a_bounded_reader() -> None:
    reader: StreamReader[int] = StreamReader(limit=2)

    async def produce() -> None:
        for i in range(20):
            await reader._put(i)
        reader._end()

    _loop.submit(produce())

    async def consume() -> list[int]:
        return [i async for i in reader]

    assert asyncio.run(consume()) == list(range(20))


def test_writer_set_exception_refuses_later_writes() -> None:
    writer = StreamWriter()
    writer.set_exception(RuntimeError("gone"))
    time.sleep(0.05)
    assert writer.closed
    with pytest.raises(ValueError):
        writer.write(b"x")
    with pytest.raises(TypeError):
        StreamWriter().write("text")  # type: ignore[arg-type]
