"""Resource numbers for the console's graphs: the owning runner's backend stats.

Why a pluggable source: the public API carries no live usage, but a runner's backend reads
its sandboxes' cgroups (``SandboxBackend.stats``). The all-in-one ``sandboxd up`` runs its
runner in the control plane's process and hands the console a source that reads that
backend; a control plane whose runners are elsewhere has none, and the console says the
numbers are not reachable rather than showing zeros.

A source is only ever asked about a sandbox the caller has just been allowed to read through
the gRPC API (the console asks ``Get`` first), so it needs no identity rules of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sandboxd.backends.base import SandboxStats

if TYPE_CHECKING:
    from sandboxd.runner.agent import RunnerAgent

# (runner id, sandbox id) → its stats, or None when that runner's numbers are not reachable.
StatsSource = Callable[[str, str], Awaitable[SandboxStats | None]]


def local_runner_stats(agent: RunnerAgent) -> StatsSource:
    """Stats of sandboxes on ``agent`` (a runner in this process); None for other runners."""

    async def read(runner_id: str, sandbox_id: str) -> SandboxStats | None:
        supervisor = agent.supervisor
        if runner_id != agent.runner_id or supervisor is None:
            return None
        try:
            return await supervisor.backend.stats(sandbox_id)
        except Exception:  # it ended or is not started yet: nothing to read
            return None

    return read
