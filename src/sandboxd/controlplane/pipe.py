"""A bounded first-in, first-out channel between two tasks, with end markers that skip the line.

Why not ``asyncio.Queue``: the relays of exec, log and file bytes need two things a queue
does not give cheaply. A producer that is done or gone must be able to post its end marker
even while the channel is full (a full queue would make a lost connection wait for a reader
that may itself be waiting for that marker), and the hot path should cost one deque append
and at most one future per item, since every exec frame and every file chunk crosses one of
these twice.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Pipe(Generic[T]):
    """Items in order; :meth:`put` waits while ``capacity`` items are unread."""

    __slots__ = ("_capacity", "_getter", "_items", "_putters")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Append ``item``, first waiting for room."""
        while len(self._items) >= self._capacity:
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._putters:
                    self._putters.remove(waiter)
                raise
        self.put_now(item)

    def put_now(self, item: T) -> None:
        """Append ``item`` at once, whatever the capacity (end markers, small controls)."""
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def get(self) -> T:
        """The oldest item, waiting for one; one task reads at a time."""
        while not self._items:
            getter = self._getter = asyncio.get_running_loop().create_future()
            try:
                await getter
            finally:
                self._getter = None
        item = self._items.popleft()
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
                break
        return item

    def clear(self) -> None:
        """Drop what is unread and release waiting producers (the reader went away)."""
        self._items.clear()
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
