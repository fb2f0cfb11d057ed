"""Polling ``Get`` until a sandbox reaches a wanted status (protocol §4.3).

Two nested loops:

* the **status loop** calls Get, stops when the status is in the wanted set, and otherwise
  sleeps 0.2 s, then 1.5× longer each round, capped at 2 s; an optional overall timeout
  ends it with ``SandboxTimeoutError``. A Get the server held for 0.25 s or more (sandboxd
  holds one for a starting sandbox until it runs, up to 0.5 s) is followed by the next one
  at once: the server has waited already, and a sleep after it would only see the sandbox
  running late (by up to the 2 s cap, in a burst of creates that each take seconds);
* the **retry loop** around each Get retries transient failures (UNAVAILABLE,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, and the runner/backend-unavailable reasons, which
  the error mapping turns into the three exception types below) for up to
  ``retry_budget`` seconds per burst, with jittered backoff or the server's ``RetryInfo``
  delay (capped at 10 s). Any success resets the budget. Everything else, NOT_FOUND
  included, is raised at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from cwsandbox._status import SandboxStatus
from cwsandbox.exceptions import (
    SandboxRequestTimeoutError,
    SandboxResourceExhaustedError,
    SandboxTimeoutError,
    SandboxUnavailableError,
)
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = [
    "HELD_GET_SECONDS",
    "RETRYABLE",
    "PollSettings",
    "backoff_delays",
    "get_with_retry",
    "poll",
]

RETRYABLE = (SandboxUnavailableError, SandboxRequestTimeoutError, SandboxResourceExhaustedError)
MAX_RETRY_DELAY = 10.0
#: A Get that took at least this long was held by the server (a long poll): the status loop
#: asks again without sleeping. An ordinary answer takes milliseconds.
HELD_GET_SECONDS = 0.25

#: One Get with a per-call deadline (seconds); raises cwsandbox errors.
Fetch = Callable[[float], Awaitable[gw.GetSandboxResponse]]


@dataclass(frozen=True)
class PollSettings:
    """Per-Get deadline and the retry budget for one burst of transient failures."""

    rpc_timeout: float = 15.0
    retry_budget: float = 30.0


def backoff_delays(first: float = 0.2, factor: float = 1.5, cap: float = 2.0) -> Iterator[float]:
    """0.2, 0.3, 0.45, 0.675, 1.0125, 1.51875, 2, 2, ..."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


def _jitter(attempt: int) -> float:
    return random.uniform(0.2, min(2.0, 0.2 * 2 ** (attempt + 1)))


async def get_with_retry(
    fetch: Fetch, settings: PollSettings, deadline: float | None = None, what: str = "sandbox"
) -> gw.GetSandboxResponse:
    """One Get, retried on transient errors within the budget and the overall ``deadline``."""
    burst_start: float | None = None
    attempt = 0
    while True:
        rpc_timeout = min(settings.rpc_timeout, settings.retry_budget)
        if deadline is not None:
            rpc_timeout = min(rpc_timeout, deadline - time.monotonic())
            if rpc_timeout <= 0:
                raise SandboxTimeoutError(f"timed out waiting for {what}")
        try:
            return await fetch(rpc_timeout)
        except RETRYABLE as err:
            now = time.monotonic()
            burst_start = now if burst_start is None else burst_start
            budget_left = settings.retry_budget - (now - burst_start)
            if budget_left <= 0:
                raise
            if err.retry_delay is not None:
                delay = min(err.retry_delay.total_seconds(), MAX_RETRY_DELAY, budget_left)
            else:
                delay = min(_jitter(attempt), budget_left)
            if deadline is not None:
                if deadline - now <= 0:
                    raise SandboxTimeoutError(f"timed out waiting for {what}: {err}") from err
                delay = min(delay, deadline - now)
            attempt += 1
            await asyncio.sleep(max(0.0, delay))


async def poll(
    fetch: Fetch,
    done: frozenset[int],
    *,
    timeout: float | None,
    settings: PollSettings,
    what: str,
    on_response: Callable[[gw.GetSandboxResponse], None] | None = None,
) -> gw.GetSandboxResponse:
    """Call Get until its status is in ``done``; ``timeout=None`` waits without limit."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delays = backoff_delays()
    last = "unknown"
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            raise SandboxTimeoutError(
                f"timed out after {timeout:g}s waiting for {what} (last status: {last})"
            )
        asked = time.monotonic()
        response = await get_with_retry(fetch, settings, deadline, what)
        if on_response is not None:
            on_response(response)
        if response.sandbox_status in done:
            return response
        last = SandboxStatus.from_proto(response.sandbox_status).value
        if time.monotonic() - asked >= HELD_GET_SECONDS:
            # The server held the Get (sandboxd does while a sandbox starts, answering the
            # moment it runs): it already waited as long as we would. Sleeping on top of
            # that would only notice the change late; ask again at once (one Get in flight).
            continue
        delay = next(delays)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(delay)
