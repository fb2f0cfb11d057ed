"""How many cold creates the runner's backend builds at once; the rest wait their turn.

Why a bound: a build is mostly kernel work (namespaces, a veth and its firewall rules, cgroups,
a loop-mounted layer, the zygote's forks) behind a few host-wide locks, plus the runner's own
event loop, and a burst that builds everything at once makes every build wait for all the
others. In a burst of 100 concurrent creates (``bench/sandboxes.py``, 2 cores), unbounded,
all of them finished together: p50 1.67–2.16 s against a p99 of 1.70–2.32 s. Four at a time
(alternating runs, the same machine): p50 1.00–1.37 s, p99 1.70–2.16 s, so half of the
sandboxes are ready in about half the time and none later. A create that arrives during a
burst waits behind those queued before it, and is ready about when it would have been
without the bound: the work ahead of it is the same, only no longer shared out evenly.

Only the backend's build takes a slot, in arrival order: a create's reservation is made
before it queues (capacity stays honest while it waits), and warm-pool claims, which build
nothing, never wait. The default, twice the CPUs this process may run on, kept that
behaviour on the 2-core development host; ``--max-concurrent-creates`` sets another.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_PER_CPU", "default_concurrent_creates"]

DEFAULT_PER_CPU = 2
"""Builds in flight per usable CPU by default."""


def default_concurrent_creates() -> int:
    """Twice the CPUs this process may run on (its affinity mask, not the host's count)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:  # pragma: no cover - Linux always answers for the calling process
        cpus = os.cpu_count() or 1
    return DEFAULT_PER_CPU * max(1, cpus)
