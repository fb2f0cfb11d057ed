"""Prometheus metrics of a runner: each running sandbox's CPU, memory, PIDs and disk.

Why per sandbox here and not on the control plane: a runner holds at most a few thousand
sandboxes, and an operator looking at one host wants to see which sandbox eats it; the
control plane's metrics stay bounded (no sandbox label there). The numbers come from the
backend's ``stats`` (the sandbox's cgroups, and its writable layer's file system), read
when Prometheus scrapes: the scrape runs in the metrics server's thread and asks the
runner's event loop for the stats, waiting at most :data:`SCRAPE_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sandboxd.backends.base import SandboxStats
from sandboxd.runner.agent import RunnerAgent
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["RunnerCollector"]

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_SECONDS = 5.0


class RunnerCollector(Collector):
    """Per-sandbox usage of ``agent``'s running sandboxes, read on ``loop``."""

    def __init__(self, agent: RunnerAgent, loop: asyncio.AbstractEventLoop) -> None:
        self._agent = agent
        self._loop = loop

    async def _stats(self) -> dict[str, SandboxStats]:
        supervisor = self._agent.supervisor
        if supervisor is None:
            return {}
        running = [
            event.sandbox_id
            for event in supervisor.snapshot()
            if event.phase == runner_pb2.SANDBOX_PHASE_RUNNING
        ]
        found: dict[str, SandboxStats] = {}
        for sandbox_id in running:
            try:
                found[sandbox_id] = await supervisor.backend.stats(sandbox_id)
            except Exception:  # it ended between the list and the read: leave it out
                continue
        return found

    def collect(self) -> Iterator[Metric]:
        """One sample per running sandbox and kind, plus the runner's count."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._stats(), self._loop)
            stats = future.result(SCRAPE_TIMEOUT_SECONDS)
        except Exception as exc:  # a stuck loop must not hang the scrape
            log.warning("runner metrics: could not read sandbox stats: %s", exc)
            stats = {}
        runner = self._agent.runner_id
        labels = ["runner", "sandbox"]
        cpu = CounterMetricFamily(
            "sandboxd_sandbox_cpu_seconds", "CPU time the sandbox used.", labels=labels
        )
        memory = GaugeMetricFamily(
            "sandboxd_sandbox_memory_bytes", "Memory the sandbox uses now.", labels=labels
        )
        peak = GaugeMetricFamily(
            "sandboxd_sandbox_memory_peak_bytes", "The most memory it used.", labels=labels
        )
        pids = GaugeMetricFamily("sandboxd_sandbox_pids", "Its processes.", labels=labels)
        disk = GaugeMetricFamily(
            "sandboxd_sandbox_disk_bytes", "Bytes used on its writable layer.", labels=labels
        )
        ooms = CounterMetricFamily(
            "sandboxd_sandbox_oom_kills", "Processes the kernel OOM-killed in it.", labels=labels
        )
        for sandbox_id, s in sorted(stats.items()):
            key = [runner, sandbox_id]
            cpu.add_metric(key, s.cpu_seconds)
            memory.add_metric(key, s.memory_bytes)
            peak.add_metric(key, s.memory_peak_bytes)
            pids.add_metric(key, s.pids)
            disk.add_metric(key, s.disk_bytes)
            ooms.add_metric(key, s.oom_kills)
        yield from (cpu, memory, peak, pids, disk, ooms)
        running = GaugeMetricFamily(
            "sandboxd_runner_sandboxes", "Sandboxes running on the runner.", labels=["runner"]
        )
        running.add_metric([runner], len(stats))
        yield running
        events = CounterMetricFamily(
            "sandboxd_runner_backend_events",
            "What the runner's backend did on its own (firewall_repairs: sandbox rules a "
            "firewall reload took away, put back).",
            labels=["runner", "event"],
        )
        supervisor = self._agent.supervisor
        counted = supervisor.backend.counters() if supervisor is not None else {}
        for event, count in sorted(counted.items()):
            events.add_metric([runner, event], count)
        yield events
