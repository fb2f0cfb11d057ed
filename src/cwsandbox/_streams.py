"""Live output readers and the stdin writer of a running command.

Both sides are queues owned by the client's background loop. A ``StreamReader`` can be
iterated synchronously (``for chunk in proc.stdout``) or asynchronously (``async for``).

Readers come in two kinds, because the two uses need different things:

* **unbounded** (``Process.stdout``/``stderr``): the command's whole output is kept for its
  ``ProcessResult`` anyway, so holding the live copy costs no extra order of memory, and a
  caller that never iterates must not stall the command;
* **bounded** (terminal output, streamed file reads, logs): the producer *awaits* room
  (``_put``) instead of dropping or reordering anything. While it waits it stops reading
  the gRPC call, so HTTP/2 flow control slows the server down: a slow consumer costs
  bounded memory and loses nothing.

A ``StreamWriter``'s queue is bounded too, so a caller writing faster than the sandbox
reads is slowed down instead of buffering without limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from cwsandbox import _loop
from cwsandbox._operation import OperationRef, done_ref

__all__ = ["StreamReader", "StreamWriter"]

T = TypeVar("T")


def _one(_item: object) -> int:
    return 1


class StreamReader(Generic[T]):
    """Items produced by a running operation, readable while it runs.

    Items are handed over through a lock-protected deque rather than a loop round trip per
    item, so reading thousands of small frames stays cheap for sync and async readers alike.
    ``limit`` (with ``weigh``, default one per item) bounds what may wait unread; 0 means
    unbounded. ``close()`` ends iteration and calls ``on_close`` (e.g. to cancel the call).
    """

    def __init__(
        self,
        *,
        limit: int = 0,
        weigh: Callable[[T], int] = _one,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._limit = limit
        self._weigh = weigh
        self._held = 0
        self._space: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._on_close = on_close

    # producer side (background loop)

    def _wake(self) -> None:
        """Wake sync readers and async readers (on whichever loop they wait); lock held."""
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def _wake_producer(self) -> None:
        """Tell a producer blocked in ``_put`` that there is room (or no reader); lock held."""
        space, self._space = self._space, []
        for loop, future in space:
            loop.call_soon_threadsafe(_resolve, future)

    def _feed(self, item: T) -> None:
        """Append without waiting (unbounded readers)."""
        with self._cond:
            if self._closed or self._ended:
                return
            self._items.append(item)
            self._held += self._weigh(item)
            self._wake()

    async def _put(self, item: T) -> bool:
        """Append, first waiting while the reader is full; False once nobody reads any more."""
        while True:
            with self._cond:
                if self._closed or self._ended:
                    return False
                if not self._limit or self._held < self._limit or not self._items:
                    self._items.append(item)
                    self._held += self._weigh(item)
                    self._wake()
                    return True
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                self._space.append((loop, future))
            await future

    def _end(self, error: BaseException | None = None) -> None:
        with self._cond:
            if self._ended:
                return
            self._ended, self._error = True, error
            self._wake()
            self._wake_producer()

    @property
    def closed(self) -> bool:
        """Whether the consumer called ``close()``."""
        return self._closed

    # consumer side

    def _ready(self) -> bool:
        return bool(self._items) or self._ended or self._closed

    def _take(self) -> tuple[bool, T | None]:
        """With the lock held and ``_ready()``: (True, item), or (False, None) at the end."""
        if self._closed:
            return False, None
        if self._items:
            item = self._items.popleft()
            self._held -= self._weigh(item)
            if self._space:
                self._wake_producer()
            return True, item
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return False, None

    def __iter__(self) -> StreamReader[T]:
        return self

    def __next__(self) -> T:
        if _loop.in_loop_thread():
            raise RuntimeError("iterate cwsandbox streams with 'async for' inside its event loop")
        with self._cond:
            self._cond.wait_for(self._ready)
            more, item = self._take()
        if not more:
            raise StopIteration
        return item  # type: ignore[return-value]

    def __aiter__(self) -> StreamReader[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            with self._cond:
                if self._ready():
                    more, item = self._take()
                    if not more:
                        raise StopAsyncIteration
                    return item  # type: ignore[return-value]
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            await future

    def close(self) -> None:
        """Stop reading: iteration ends, unread items are dropped, the producer is released."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._items.clear()
            self._held = 0
            self._wake()
            self._wake_producer()
            callback, self._on_close = self._on_close, None
        if callback is not None:
            callback()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class StreamWriter:
    """The stdin of a running command: ``write``/``writeline`` bytes, then ``close``."""

    QUEUE_SIZE = 16

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(self.QUEUE_SIZE)
        self._closed = False
        self._error: BaseException | None = None

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (or the command already ended)."""
        return self._closed

    def write(self, data: bytes) -> OperationRef[None]:
        """Queue ``data`` for the command's stdin; the ref completes once it is queued."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"stdin data must be bytes, not {type(data).__name__}")
        if self._closed:
            raise ValueError("write to closed stdin")
        return OperationRef(_loop.submit(self._put(bytes(data))))

    def writeline(self, text: str, encoding: str = "utf-8") -> OperationRef[None]:
        """Write ``text`` plus a newline, encoded."""
        return self.write((text + "\n").encode(encoding))

    def close(self) -> OperationRef[None]:
        """Signal end of input (the server closes the command's stdin); idempotent."""
        if self._closed:
            return done_ref(None)
        self._closed = True
        return OperationRef(_loop.submit(self._put(None)))

    def set_exception(self, exception: BaseException) -> None:
        """Make later writes raise ``exception`` (the command can no longer take input)."""
        _loop.loop().call_soon_threadsafe(self._fail, exception)

    async def _put(self, item: bytes | None) -> None:
        if self._error is not None:
            if item is None:
                return
            raise self._error
        await self._queue.put(item)

    # consumer side (the exec driver)

    async def _get(self) -> bytes | None:
        return await self._queue.get()

    def _fail(self, error: BaseException) -> None:
        """The command ended: refuse further writes and release writers blocked on a full queue."""
        self._error = error
        self._closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
