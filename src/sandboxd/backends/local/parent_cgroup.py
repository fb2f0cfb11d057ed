"""The runner-wide parent cgroup: what all sandboxes of one backend may use *together*.

Why: each sandbox's cgroup bounds that sandbox, but the scheduler admits sandboxes by their
*requests*, so the sum of their *limits* may exceed the host (40 sandboxes × 8 GiB on a
24 GiB host). Without a common parent bound, sandboxes that all use their limits starve the
host, the runner and each other. So every sandbox cgroup lives in ``sandboxd-<key>`` (see
``cgroups.py``), and that directory gets a memory limit and a CPU quota equal to the
runner's *allocatable* capacity: what it fingerprints, minus a reservation kept for the host
(the kernel, the runner, sshd, ...). When sandboxes together reach the memory limit, the
kernel's OOM killer picks a victim among the sandboxes; the host is not touched.

The limits are written whenever the directory is created (it is removed when the last
sandbox goes and recreated on demand) and when a backend first uses an existing one (a
restarted runner may have been given another reservation); the kernel keeps them for as long
as the directory exists, so sandboxes that outlive a runner restart stay bounded.

Default reservation (``default_reserve``): memory 10 % of the capacity, at least 256 MiB
and at most 4 GiB; CPU 5 %, at least 100m and at most one core; never more than half of
either. Runners can set both (``--reserve-memory``, ``--reserve-cpu``).

cgroup v1: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` where swap
accounting exists, so swap cannot extend it), ``cpu.cfs_quota_us``/``cpu.cfs_period_us``.
cgroup v2: ``memory.max``, ``memory.swap.max`` = 0, ``cpu.max``. Limits are hierarchical in
both, so children whose own limits add up to more are still bounded by the parent.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass

CFS_PERIOD_US = 100_000
MiB = 1 << 20
GiB = 1 << 30
_UNLIMITED = 1 << 62

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParentLimits:
    """What all sandboxes of a backend may use together; ``None`` leaves that one unbounded."""

    cpu_millicores: int | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("cpu_millicores", "memory_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")


def default_reserve(cpu_millicores: int, memory_bytes: int) -> tuple[int, int]:
    """The (CPU millicores, memory bytes) kept for the host out of a capacity."""
    memory = min(max(memory_bytes // 10, 256 * MiB), 4 * GiB, memory_bytes // 2)
    cpu = min(max(cpu_millicores // 20, 100), 1000, cpu_millicores // 2)
    return cpu, memory


def allocatable(
    cpu_millicores: int,
    memory_bytes: int,
    *,
    reserve_cpu: int | None = None,
    reserve_memory: int | None = None,
) -> tuple[int, int]:
    """Capacity minus the reservation (default: ``default_reserve``), never below 1."""
    default_cpu, default_memory = default_reserve(cpu_millicores, memory_bytes)
    cpu = cpu_millicores - (default_cpu if reserve_cpu is None else reserve_cpu)
    memory = memory_bytes - (default_memory if reserve_memory is None else reserve_memory)
    return max(cpu, 1), max(memory, 1)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            fields = fh.read().split()
    except OSError:
        return None
    if not fields or fields[0] in ("max", "-1"):
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None


def host_limits(version: int, bases: dict[str, str]) -> ParentLimits:
    """Allocatable capacity of this host for a backend not told otherwise.

    CPUs this process may run on and ``MemTotal``, each capped by the limit of our own
    cgroup, minus ``default_reserve``. The runner computes its own numbers (with ancestors'
    limits and its configured reservation) and passes them explicitly.
    """
    try:
        cpu = len(os.sched_getaffinity(0)) * 1000
    except (AttributeError, OSError):
        cpu = (os.cpu_count() or 1) * 1000
    memory = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    if version == 1:
        own_memory = _read_int(os.path.join(bases.get("memory", ""), "memory.limit_in_bytes"))
        quota = _read_int(os.path.join(bases.get("cpu", ""), "cpu.cfs_quota_us"))
        period = _read_int(os.path.join(bases.get("cpu", ""), "cpu.cfs_period_us"))
    else:
        unified = bases.get("unified", "")
        own_memory = _read_int(os.path.join(unified, "memory.max"))
        fields = _read_text(os.path.join(unified, "cpu.max")).split()
        quota = int(fields[0]) if fields and fields[0].isdigit() else None
        period = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else CFS_PERIOD_US
    if own_memory is not None and 0 < own_memory < _UNLIMITED:
        memory = min(memory, own_memory) if memory else own_memory
    if quota and period and quota > 0:
        cpu = min(cpu, quota * 1000 // period)
    cpu, memory = allocatable(cpu, memory or 1)
    return ParentLimits(cpu_millicores=cpu, memory_bytes=memory)


def _read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _set_v1_memory(directory: str, limit: int) -> None:
    """``memory.limit_in_bytes`` and, where it exists, ``memsw`` to the same value.

    The kernel requires ``memsw >= limit`` after every single write, so raising writes
    ``memsw`` first and lowering writes it last; the first order that works wins.
    """
    memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
    files = [os.path.join(directory, "memory.limit_in_bytes")]
    if os.path.exists(memsw):
        files.append(memsw)
    try:
        for path in files:
            _write(path, str(limit))
    except OSError as exc:
        if exc.errno != errno.EINVAL or len(files) == 1:
            raise
        for path in reversed(files):
            _write(path, str(limit))


def apply(version: int, dirs: dict[str, str], limits: ParentLimits) -> None:
    """Write ``limits`` into the group directories (controller → directory, or "unified").

    ``FileNotFoundError`` (the directory went away meanwhile) is raised for the caller to
    retry. On v1, a smaller budget than running sandboxes already have (a restarted runner
    with a larger reservation) is logged and left: the kernel refuses a memory limit below
    the usage (``EBUSY``) and a CPU quota below a child's (``EINVAL``).
    """
    cpu, memory = limits.cpu_millicores, limits.memory_bytes
    quota = str(max(1000, cpu * CFS_PERIOD_US // 1000)) if cpu else None
    if version == 1:
        if quota is not None:
            try:
                _write(os.path.join(dirs["cpu"], "cpu.cfs_period_us"), str(CFS_PERIOD_US))
                _write(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"), quota)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # v1 refuses a parent quota below a child's: sandboxes started under a larger
                # budget keep the old one until they are gone (the group is then remade).
                _log.warning("sandboxes already have more CPU than %s cpu quota", quota)
        if memory:
            try:
                _set_v1_memory(dirs["memory"], memory)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                _log.warning(
                    "sandboxes already use more than the new memory limit of %s (%d bytes)",
                    dirs["memory"],
                    memory,
                )
        return
    unified = dirs["unified"]
    if quota is not None:
        _write(os.path.join(unified, "cpu.max"), f"{quota} {CFS_PERIOD_US}")
    if memory:
        _write(os.path.join(unified, "memory.max"), str(memory))
        swap = os.path.join(unified, "memory.swap.max")
        if os.path.exists(swap):
            _write(swap, "0")
