"""The runner's allocatable capacity: what the host has, minus what is kept for the host.

Why one place: the number the runner *reports* (its capabilities, which the scheduler places
against and discovery shows) and the number the kernel *enforces* (the memory limit and CPU
quota of the parent cgroup all sandboxes live in, ``backends/local/parent_cgroup.py``) must
be the same. If the runner advertised more than its parent cgroup allows, the scheduler would
promise room that does not exist; if the parent allowed more than advertised, sandboxes
together could take what the host needs. Both are computed here from the same fingerprint
(CPUs and ``MemTotal`` capped by the runner's own cgroup and its ancestors) and the same
:class:`HostReserve`.

The reservation defaults to ``parent_cgroup.default_reserve`` (memory 10 %, 256 MiB to
4 GiB; CPU 5 %, 100m to one core; at most half); ``sandboxd runner --reserve-memory 2Gi
--reserve-cpu 500m`` sets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandboxd.backends.local.parent_cgroup import ParentLimits, allocatable
from sandboxd.runner.fingerprint import host_cpu_millicores, host_memory_bytes
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["HostReserve", "allocatable_capabilities", "parent_limits"]


@dataclass(frozen=True)
class HostReserve:
    """CPU and memory kept for the host; ``None`` takes the default for this host's size."""

    cpu_millicores: int | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("cpu_millicores", "memory_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"reserved {name} must not be negative")

    def apply(self, cpu_millicores: int, memory_bytes: int) -> tuple[int, int]:
        """``(cpu, memory)`` left for sandboxes out of a capacity."""
        return allocatable(
            cpu_millicores,
            memory_bytes,
            reserve_cpu=self.cpu_millicores,
            reserve_memory=self.memory_bytes,
        )


def allocatable_capabilities(
    capabilities: runner_pb2.Capabilities, reserve: HostReserve
) -> runner_pb2.Capabilities:
    """A copy of ``capabilities`` whose CPU and memory are what sandboxes may have."""
    out = runner_pb2.Capabilities()
    out.CopyFrom(capabilities)
    if capabilities.cpu_millicores > 0 and capabilities.memory_bytes > 0:
        out.cpu_millicores, out.memory_bytes = reserve.apply(
            capabilities.cpu_millicores, capabilities.memory_bytes
        )
    return out


def parent_limits(
    reserve: HostReserve,
    *,
    proc_root: Path = Path("/proc"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> ParentLimits:
    """The bound of the parent cgroup: the same numbers ``allocatable_capabilities`` reports."""
    cpu, memory = reserve.apply(
        host_cpu_millicores(proc_root, cgroup_root), host_memory_bytes(proc_root, cgroup_root)
    )
    return ParentLimits(cpu_millicores=cpu, memory_bytes=memory)
