"""Resource numbers for the console's graphs: asked of the sandbox's own runner, live.

Why through the runner: the public API carries no live usage, but a runner's backend reads
its sandboxes' cgroups (``Backend.stats``). The control plane asks the owning runner over
its control stream (runner command ``usage``), whether the runner is in this process
(``sandboxd up``) or on another host; a runner that is away, or too old to know the command,
gives no numbers, and the console says they are not reachable rather than showing zeros.

A source is only ever asked about a sandbox the caller has just been allowed to read through
the gRPC API (the console asks ``Get`` first), so it needs no identity rules of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sandboxd.backends.base import SandboxStats
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.errors import ApiError
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["StatsSource", "runner_stats"]

log = logging.getLogger(__name__)

USAGE_SECONDS = 5.0
"""How long a graph's read waits for the runner (the page polls every 2 s)."""

# (runner id, sandbox id) → its stats, or None when that runner's numbers are not reachable.
StatsSource = Callable[[str, str], Awaitable[SandboxStats | None]]


def runner_stats(registry: RunnerRegistry) -> StatsSource:
    """Stats read by each sandbox's runner, over the runner's current connection."""

    async def read(runner_id: str, sandbox_id: str) -> SandboxStats | None:
        state = registry.get(runner_id) if runner_id else None
        link = state.link if state is not None else None
        if link is None:
            return None
        command = runner_pb2.Command(usage=runner_pb2.ReadUsage(sandbox_id=sandbox_id))
        try:
            result = await link.call(command, timeout=USAGE_SECONDS)
        except ApiError as error:  # ended, not started yet, away, or an older runner
            log.debug("no usage of %s from runner %s: %s", sandbox_id, runner_id, error)
            return None
        if result.WhichOneof("result") != "usage":
            return None
        usage = result.usage
        return SandboxStats(
            cpu_seconds=usage.cpu_seconds,
            memory_bytes=usage.memory_bytes,
            memory_peak_bytes=usage.memory_peak_bytes,
            pids=usage.pids,
            oom_kills=usage.oom_kills,
            disk_bytes=usage.disk_bytes,
        )

    return read
