"""``OperationRef``: the handle every non-blocking sandbox call returns.

An operation runs on the client's background loop as soon as it is created. The caller
decides how to collect it: ``.result()`` blocks a synchronous caller, ``await ref`` suspends
an async one (from any event loop), and ``cwsandbox.wait`` / ``cwsandbox.results`` handle
many at once. Errors raised by the operation are raised again by whichever of these is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, overload

from cwsandbox import _loop

if TYPE_CHECKING:
    from cwsandbox._sandbox import Sandbox

__all__ = ["OperationRef", "Waitable", "done_ref", "results", "wait"]

T = TypeVar("T")


class OperationRef(Generic[T]):
    """A running (or finished) operation whose result can be fetched or awaited."""

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> T:
        """Block until the operation ends and return its result (or raise its error).

        ``timeout`` bounds only this wait (``TimeoutError`` when it runs out); the operation
        itself keeps running.
        """
        if _loop.in_loop_thread() and not self._future.done():
            raise RuntimeError(
                "OperationRef.result() would deadlock on cwsandbox's own event loop; "
                "await the operation instead"
            )
        return self._future.result(timeout)

    def done(self) -> bool:
        """Whether the operation has finished (successfully or not)."""
        return self._future.done()

    def cancel(self) -> bool:
        """Ask the operation to stop; returns whether cancellation was requested in time."""
        return self._future.cancel()

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "running"
        return f"<{type(self).__name__} {state}>"


def done_ref(value: T) -> OperationRef[T]:
    """An ``OperationRef`` that is already finished with ``value``."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    future.set_result(value)
    return OperationRef(future)


#: What ``cwsandbox.wait`` accepts: operations (including ``Process``) and sandboxes.
Waitable: TypeAlias = "OperationRef[Any] | Sandbox"


def _future_of(item: Waitable) -> concurrent.futures.Future[Any]:
    if isinstance(item, OperationRef):
        return item._future
    return _loop.submit(item._wait_ready())


def wait(
    waitables: Sequence[Waitable],
    num_returns: int | None = None,
    timeout: float | None = None,
) -> tuple[list[Waitable], list[Waitable]]:
    """Wait until ``num_returns`` of ``waitables`` (default: all) are done, or ``timeout``.

    Returns ``(done, pending)`` in the order given. A ``Sandbox`` counts as done when it is
    running (or has ended). Errors are not raised here; fetch them with ``.result()``.
    """
    items = list(waitables)
    want = len(items) if num_returns is None else num_returns
    if not 0 <= want <= len(items):
        raise ValueError(f"num_returns must be between 0 and {len(items)}, got {num_returns}")
    futures = [_future_of(item) for item in items]
    pending = set(futures)
    finished = sum(f.done() for f in futures)
    end = None if timeout is None else time.monotonic() + timeout
    while finished < want and pending:
        left = None if end is None else max(0.0, end - time.monotonic())
        done, pending = concurrent.futures.wait(
            pending, timeout=left, return_when=concurrent.futures.FIRST_COMPLETED
        )
        finished = sum(f.done() for f in futures)
        if not done and left is not None and left <= 0:
            break
    done_items = [i for i, f in zip(items, futures, strict=True) if f.done()]
    pending_items = [i for i, f in zip(items, futures, strict=True) if not f.done()]
    return done_items, pending_items


@overload
def results(refs: OperationRef[T], /) -> T: ...
@overload
def results(refs: Sequence[OperationRef[T]], /) -> list[T]: ...
def results(refs: OperationRef[T] | Sequence[OperationRef[T]], /) -> T | list[T]:
    """Block for one operation's result, or for each of a sequence of them, in order."""
    if isinstance(refs, OperationRef):
        return refs.result()
    return [ref.result() for ref in refs]
