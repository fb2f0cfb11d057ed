"""Which of gRPC's transport implementations the client and the server run on.

Why: gRPC's C core carries two implementations of its TCP connections, the newer
EventEngine one and the older iomgr one, and picks between them by its "experiments"
(``GRPC_EXPERIMENTS``, a comma-separated list; a name prefixed with ``-`` turns one off).
With grpcio 1.85 the EventEngine client and listener are on by default, and every call then
also wakes EventEngine's own worker threads. Measured here (2 cores, loopback, our client
against ``sandboxd up``): an exec of ``true`` took 2.91 ms p50 and 2.33 ms of CPU (client
0.75, server 1.58) with them on, 2.74 ms and 2.13 ms (client 0.64, server 1.49) with them
off; the bare gRPC floor (``bench/grpc_floor.py``) went from 0.67 to 0.53 ms for a unary
call. A burst of 100 concurrent creates was no different either way.

So both the client (``import cwsandbox``) and every ``sandboxd`` process turn the two off,
unless the process already chose its own ``GRPC_EXPERIMENTS`` (it is read when gRPC starts,
so this runs before anything imports ``grpc``). Only for the grpcio releases it was
measured with and whose experiments carry these names (:data:`TESTED_RELEASES`): a release
that no longer knows a name logs an error for it at start-up, and one that changed the
transports deserves a measurement first. The choice lands in ``os.environ``, so child
processes inherit it, as they inherit the fork setting of ``_fork_guard.py``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

__all__ = [
    "EXPERIMENTS",
    "EXPERIMENTS_ENV",
    "TESTED_RELEASES",
    "choose_transport",
    "grpc_release",
    "tested",
]

EXPERIMENTS_ENV = "GRPC_EXPERIMENTS"
EXPERIMENTS = "-event_engine_client,-event_engine_listener"
"""The value set: the iomgr transport for both outgoing and accepted connections."""
TESTED_RELEASES = ((1, 85), (1, 90))
"""``(first, end)``: the grpcio minor releases (``major, minor``) the choice applies to."""

_VERSION = re.compile(r"""__version__\s*=\s*['"]{1,3}(\d+)\.(\d+)""")


def grpc_release() -> tuple[int, int] | None:
    """The installed grpcio's ``(major, minor)``, read without importing (starting) gRPC.

    Why not ``importlib.metadata``: it scans every installed distribution, ~30 ms at import
    time of every program that uses the client; grpc's own version file is one small read.
    """
    spec = importlib.util.find_spec("grpc")
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "_grpcio_metadata.py").read_text()
    except OSError:
        return None
    found = _VERSION.search(text)
    return (int(found[1]), int(found[2])) if found else None


def tested(release: tuple[int, int] | None) -> bool:
    """Whether ``release`` (``major, minor``; None: unknown) is one the choice applies to."""
    first, end = TESTED_RELEASES
    return release is not None and first <= release < end


def choose_transport() -> None:
    """Set :data:`EXPERIMENTS` unless the process chose its own, on a tested release."""
    if EXPERIMENTS_ENV not in os.environ and tested(grpc_release()):
        os.environ[EXPERIMENTS_ENV] = EXPERIMENTS


choose_transport()
