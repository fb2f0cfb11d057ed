"""The control plane's addresses, which no sandbox with egress may reach.

Why the runner and not the backend: the backend blocks what is the same on every host
(non-public ranges, the host itself; see ``backends/local/egress.py``), but only the runner
knows where its control plane lives. A control plane on a public address (a cloud load
balancer, another data centre) is otherwise "the internet" to an ``internet`` sandbox, and
its runner port is not something user code should probe. The runner resolves the host of
its ``--control-plane`` URL and hands the IPv4 addresses to the backend as
``NetworkSpec.blocked`` with every sandbox.

Resolution goes through ``getaddrinfo`` in a worker thread (it may block on DNS) and is
cached for ``ttl`` seconds; when it fails, the last good answer is kept, so a DNS hiccup
never opens the control plane nor fails a create. IPv6 answers are ignored: sandboxes have
no IPv6.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ControlPlaneAddresses"]

_log = logging.getLogger(__name__)
Resolver = Callable[..., list[tuple[Any, ...]]]


class ControlPlaneAddresses:
    """``/32`` CIDRs of the control plane named by ``url``, resolved lazily and cached."""

    def __init__(
        self, url: str, *, ttl: float = 60.0, resolve: Resolver = socket.getaddrinfo
    ) -> None:
        self.host = urlsplit(url.strip()).hostname or ""
        self._ttl = ttl
        self._resolve = resolve
        self._cidrs: tuple[str, ...] = ()
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        literal = _literal(self.host)
        if literal is not None:  # an IP in the URL needs no DNS, ever
            self._cidrs, self._fetched_at, self._ttl = literal, 0.0, float("inf")

    async def cidrs(self) -> tuple[str, ...]:
        """The current answer (resolving first when none is cached or it is stale)."""
        if self._fresh():
            return self._cidrs
        async with self._lock:
            if not self._fresh():
                await self._refresh()
        return self._cidrs

    def _fresh(self) -> bool:
        return self._fetched_at is not None and time.monotonic() - self._fetched_at < self._ttl

    async def _refresh(self) -> None:
        try:
            infos = await asyncio.to_thread(
                self._resolve, self.host, None, socket.AF_INET, socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            _log.warning("cannot resolve the control plane %r to block it: %s", self.host, exc)
            self._fetched_at = time.monotonic() - self._ttl + 5.0  # retry in 5 s
            return
        found = sorted({f"{info[4][0]}/32" for info in infos if info[0] == socket.AF_INET})
        self._cidrs, self._fetched_at = tuple(found), time.monotonic()


def _literal(host: str) -> tuple[str, ...] | None:
    """``("a.b.c.d/32",)`` for an IPv4 literal, ``()`` for IPv6, None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (f"{address}/32",) if address.version == 4 else ()
