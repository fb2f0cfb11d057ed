"""Waiting on the event loop for something a test cannot be told about directly.

Why a helper: tests poll with a deadline, never assert after a fixed sleep, and a failure
must name what did not happen. ``faults.wait_until`` does this for blocking code; this is
the same on an asyncio loop, which keeps running while it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.02
) -> T:
    """Poll ``probe`` until it is truthy and return that; fail naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := probe()):
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(interval)
    return value
