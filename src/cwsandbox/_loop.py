"""The one background event loop that runs the client's async core.

Why a thread: the sandbox API is async inside (gRPC ``aio`` channels, streaming exec) but is
mostly used from plain synchronous code. Every coroutine the client starts runs on a single
event loop in a daemon thread; sync methods submit work to it and hand back a
``concurrent.futures.Future`` (wrapped in an ``OperationRef``), and async callers await the
same future from their own loop. Keeping all gRPC objects on one loop avoids the
"attached to a different loop" class of bugs, whichever loop (if any) the caller runs.

The thread starts on first use and is recreated after ``fork()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["in_loop_thread", "loop", "submit"]

T = TypeVar("T")


class _LoopThread:
    """A lazily started event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or not self._alive():
                self._start()
            assert self._loop is not None
            return self._loop

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        new_loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(new_loop)
            new_loop.call_soon(started.set)
            new_loop.run_forever()

        thread = threading.Thread(target=run, name="cwsandbox-loop", daemon=True)
        thread.start()
        started.wait()
        self._loop, self._thread, self._pid = new_loop, thread, os.getpid()

    def is_current(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread


_RUNNER = _LoopThread()


def loop() -> asyncio.AbstractEventLoop:
    """The client's background event loop (started on first call)."""
    return _RUNNER.get()


def in_loop_thread() -> bool:
    """Whether the caller runs on the background loop (where blocking would deadlock)."""
    return _RUNNER.is_current()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the background loop; cancelling the future cancels the task."""
    return asyncio.run_coroutine_threadsafe(coro, loop())
