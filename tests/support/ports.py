"""Loopback ports for the servers tests start, chosen so that nothing else takes them.

A port taken by binding port 0 comes from the kernel's ephemeral range, the same range every
outgoing connection's source port comes from. Between the moment a test learns such a port
and the moment its server binds it (or binds it again after a restart), any client on the
machine can take it for a connection: CI once failed with "Address already in use" that way.
So the ports handed out here lie below the ephemeral range, where the kernel never picks a
source port, and each pytest-xdist worker has a slice of its own, so two workers never hand
out the same port (22 slices with the default range; a 23rd worker would share the first).
Within a worker the ports go round the slice, so a port is handed out again only after all
the others.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

LOWEST = 10_000
SLICE = 1_000


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (32768 unless configured otherwise)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _worker_slice() -> range:
    """The ports this pytest-xdist worker hands out (``gw3`` is worker 3; no xdist: 0)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    slices = max(1, (_ephemeral_start() - LOWEST) // SLICE)
    start = LOWEST + (index % slices) * SLICE
    return range(start, start + SLICE)


def _cycle() -> Iterator[int]:
    ports = list(_worker_slice())
    first = random.randrange(len(ports))
    return itertools.cycle(ports[first:] + ports[:first])


_candidates = _cycle()
_lock = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, outside the ephemeral range and this worker's own."""
    with _lock:
        for _ in range(SLICE):
            port = next(_candidates)
            if _bindable(port):
                return port
    raise RuntimeError(f"no free loopback port in {_worker_slice()}")
