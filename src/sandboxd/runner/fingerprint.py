"""Fingerprint the real host into the ``Capabilities`` a runner registers with.

Why it matters: the scheduler places sandboxes only on runners whose capabilities cover the
request, and the discovery API shows these numbers to users. They must describe what this
runner can actually hand out, so every number honours the limits of the runner's own cgroup
(see :mod:`sandboxd.runner.cgroups`), not just the host's totals.

All inputs are injectable (``proc_root``, ``cgroup_root``, ``nvidia_smi``, and the few values
that do not come from files) so tests can describe a fake host completely.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxd.runner import cgroups
from sandboxd.runner.gpus import discover_gpus
from sandboxd_protocol.sandboxd_v1 import runner_pb2

if TYPE_CHECKING:
    from sandboxd.backends.base import Fingerprint

# Bit 21 of the capability sets is CAP_SYS_ADMIN (linux/capability.h); without it a runner
# cannot set up the mounts and namespaces a privileged sandbox needs.
CAP_SYS_ADMIN = 21

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
}

BACKENDS = ("local",)

# Why a runner has no sandbox backend, as the control plane shows it in rejections
# ("runner X: no working backend (local: needs root)").
NEEDS_ROOT = "needs root"
DISABLED = "disabled (--backend none)"
NOT_CONFIGURED = "not configured on this runner (sandboxd runner --backend local, as root)"


def normalize_architecture(machine: str) -> str:
    """Map ``platform.machine()`` to the Kubernetes name the protocol uses (``amd64``, ...)."""
    lowered = machine.strip().lower()
    return _ARCH_ALIASES.get(lowered, lowered)


def online_cpu_count() -> int:
    """CPUs this process may run on; honours cpusets and ``taskset``, unlike ``os.cpu_count``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def mem_total_bytes(proc_root: Path = Path("/proc")) -> int:
    """``MemTotal`` from ``<proc_root>/meminfo`` in bytes, or 0 when it cannot be read."""
    try:
        text = (proc_root / "meminfo").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            try:
                value = int(fields[1])
            except (IndexError, ValueError):
                return 0
            unit = fields[2].lower() if len(fields) > 2 else "b"
            return value * 1024 if unit == "kb" else value
    return 0


def _status_fields(proc_root: Path) -> dict[str, str]:
    try:
        text = (proc_root / "self" / "status").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def supports_privileged(proc_root: Path = Path("/proc")) -> bool:
    """True when the runner is effectively root and holds CAP_SYS_ADMIN.

    Read from ``/proc/self/status`` (``Uid`` effective field, ``CapEff`` mask) rather than
    ``os.geteuid`` so that user namespaces and tests are judged by the same source.
    """
    fields = _status_fields(proc_root)
    try:
        effective_uid = int(fields["Uid"].split()[1])
        cap_eff = int(fields["CapEff"], 16)
    except (KeyError, IndexError, ValueError):
        return False
    return effective_uid == 0 and bool(cap_eff & (1 << CAP_SYS_ADMIN))


def host_cpu_millicores(
    proc_root: Path = Path("/proc"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    online_cpus: int | None = None,
) -> int:
    """CPUs we may run on, capped by the tightest CPU quota of our cgroup and its ancestors."""
    cpus = online_cpus if online_cpus is not None else online_cpu_count()
    cpu_millicores = cpus * 1000
    cpu_quota = cgroups.cpu_limit_millicores(proc_root, cgroup_root)
    return min(cpu_millicores, cpu_quota) if cpu_quota is not None else cpu_millicores


def host_memory_bytes(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """``MemTotal``, capped by the tightest memory limit of our cgroup and its ancestors."""
    memory = mem_total_bytes(proc_root)
    memory_limit = cgroups.memory_limit_bytes(proc_root, cgroup_root)
    if memory_limit is not None:
        memory = min(memory, memory_limit) if memory > 0 else memory_limit
    return memory


def fingerprint(
    *,
    proc_root: Path = Path("/proc"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    nvidia_smi: str = "nvidia-smi",
    online_cpus: int | None = None,
    machine: str | None = None,
    hostname: str | None = None,
) -> runner_pb2.Capabilities:
    """Describe this host as ``Capabilities`` (its whole capacity; see ``capacity.py``).

    ``online_cpus``, ``machine`` and ``hostname`` default to the real values
    (``sched_getaffinity``, ``platform.machine()``, ``socket.gethostname()``). Runs
    ``nvidia-smi`` (up to 10 s), so call it off the event loop if latency matters.
    """
    gpus = discover_gpus(nvidia_smi)
    return runner_pb2.Capabilities(
        cpu_millicores=host_cpu_millicores(proc_root, cgroup_root, online_cpus),
        memory_bytes=host_memory_bytes(proc_root, cgroup_root),
        gpu_count=gpus.count,
        gpu_types=list(gpus.types),
        architectures=[normalize_architecture(machine or platform.machine())],
        supports_privileged=supports_privileged(proc_root),
        storage_classes=[],
        hostname=hostname if hostname is not None else socket.gethostname(),
        backends=list(BACKENDS),
    )


def backend_status(found: Fingerprint) -> runner_pb2.BackendStatus:
    """A backend's fingerprint as the control plane reads it (``Capabilities``)."""
    return runner_pb2.BackendStatus(
        name=found.name,
        available=found.available,
        reason="" if found.available else (found.reason or "unavailable"),
        egress_types=list(found.egress_types),
        ingress_types=list(found.ingress_types),
        gpus=found.gpus,
        volumes=found.volumes,
    )


def unavailable_backend(name: str, reason: str) -> runner_pb2.BackendStatus:
    """A backend this runner does not run, and why (e.g. :data:`NEEDS_ROOT`)."""
    return runner_pb2.BackendStatus(name=name, available=False, reason=reason)
