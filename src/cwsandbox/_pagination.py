"""Deadlines shared across pages, and the page-token loop every List RPC uses.

A paged listing is one user-visible operation, so it gets one deadline for all of its pages
rather than a fresh timeout per page. The loop refuses to follow a server that repeats a page
token or never stops, so a buggy server cannot make the client spin forever.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cwsandbox.exceptions import CWSandboxError

__all__ = ["MAX_PAGES", "Deadline", "collect_pages", "collect_pages_async"]

MAX_PAGES = 100

ItemT = TypeVar("ItemT")


class Deadline:
    """A point in time that several RPCs share; each gets the time that is left."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"timeout must be positive, got {seconds!r}")
        self.seconds = seconds
        self._expires_at = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._expires_at - time.monotonic())

    def expired(self) -> bool:
        """Whether no time is left for another RPC."""
        return self.remaining() <= 0.0


def collect_pages(
    fetch_page: Callable[[str], tuple[list[ItemT], str]],
    *,
    operation: str,
    error_type: type[CWSandboxError] = CWSandboxError,
    max_pages: int = MAX_PAGES,
) -> list[ItemT]:
    """Call ``fetch_page(token)`` from the empty token until it returns an empty next token.

    ``fetch_page`` returns ``(items, next_page_token)`` and re-sends every filter itself.
    A token seen twice raises ``error_type("... pagination loop detected ...")``; more than
    ``max_pages`` pages raise ``error_type`` too.
    """
    items: list[ItemT] = []
    seen: set[str] = set()
    token = ""
    for _ in range(max_pages):
        page, token = fetch_page(token)
        items.extend(page)
        if not token:
            return items
        if token in seen:
            raise error_type(
                f"{operation}: pagination loop detected (the server repeated page token {token!r})"
            )
        seen.add(token)
    raise error_type(f"{operation}: pagination exceeded {max_pages} pages; giving up")


async def collect_pages_async(
    fetch_page: Callable[[str], Awaitable[tuple[list[ItemT], str]]],
    *,
    operation: str,
    error_type: type[CWSandboxError] = CWSandboxError,
    max_pages: int = MAX_PAGES,
) -> list[ItemT]:
    """``collect_pages`` for an async ``fetch_page`` (the sandbox client's List calls)."""
    items: list[ItemT] = []
    seen: set[str] = set()
    token = ""
    for _ in range(max_pages):
        page, token = await fetch_page(token)
        items.extend(page)
        if not token:
            return items
        if token in seen:
            raise error_type(
                f"{operation}: pagination loop detected (the server repeated page token {token!r})"
            )
        seen.add(token)
    raise error_type(f"{operation}: pagination exceeded {max_pages} pages; giving up")
