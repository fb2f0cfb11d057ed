"""A profile's quantities as integers, parsed once when the configuration is bound.

Why: profiles spell resources as Kubernetes quantity strings (``500m``, ``8Gi``). Parsing
them is slow (``Decimal`` arithmetic and a regular expression per value), and placement
consults every candidate profile on every Start: with thousands of runners, re-parsing per
call cost hundreds of milliseconds of event-loop time. :class:`ProfileQuantities` is built
once per resolved binding (see :class:`~sandboxd.config.loader.ResolvedProfile`), so the
scheduler and the runner's spec builder only read integers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxd.config.models import ProfileSpec
from sandboxd_protocol.quantities import cpu_millicores, memory_bytes

# What a sandbox gets when neither the request nor the profile says (admin-model.md §2.3).
DEFAULT_CPU_MILLICORES = 1000
DEFAULT_MEMORY_BYTES = 1024**3
DEFAULT_DISK_BYTES = 10 * 1024**3
DEFAULT_PIDS = 4096


def _cpu(value: str | None) -> int | None:
    return cpu_millicores(value) if value else None


def _memory(value: str | None) -> int | None:
    return memory_bytes(value) if value else None


@dataclass(frozen=True)
class ProfileQuantities:
    """Defaults and ceilings of one profile spec in millicores, bytes and counts.

    ``None`` means the profile does not set the value (no ceiling, no default). The
    ``*_or_default`` values are what a sandbox that asks for nothing gets.
    """

    cpu_request: int | None
    cpu_limit: int | None
    memory_request: int | None
    memory_limit: int | None
    max_cpu_millicores: int | None
    max_memory_bytes: int | None
    max_gpu_count: int | None
    max_disk_bytes: int | None
    max_pids: int | None
    egress_types: tuple[str, ...]

    @property
    def cpu_limit_or_default(self) -> int:
        """The CPU limit of a sandbox that names none: the profile's limit, else its request."""
        return self.cpu_limit or self.cpu_request or DEFAULT_CPU_MILLICORES

    @property
    def memory_limit_or_default(self) -> int:
        """The memory limit of a sandbox that names none, likewise."""
        return self.memory_limit or self.memory_request or DEFAULT_MEMORY_BYTES

    @property
    def disk_bytes(self) -> int:
        """The writable layer's size: the profile's disk ceiling, else the platform default."""
        return DEFAULT_DISK_BYTES if self.max_disk_bytes is None else self.max_disk_bytes

    @property
    def pids_max(self) -> int:
        """The sandbox's process limit: the profile's ceiling, else the platform default."""
        return self.max_pids or DEFAULT_PIDS


def quantities_of(spec: ProfileSpec) -> ProfileQuantities:
    """Parse ``spec``'s quantities (already validated when the configuration loaded)."""
    defaults, ceilings = spec.resource_defaults, spec.resource_ceilings
    return ProfileQuantities(
        cpu_request=_cpu(defaults.cpu_request),
        cpu_limit=_cpu(defaults.cpu_limit),
        memory_request=_memory(defaults.memory_request),
        memory_limit=_memory(defaults.memory_limit),
        max_cpu_millicores=_cpu(ceilings.cpu),
        max_memory_bytes=_memory(ceilings.memory),
        max_gpu_count=ceilings.gpu,
        max_disk_bytes=_memory(ceilings.disk),
        max_pids=ceilings.pids,
        egress_types=tuple(sorted({m.type.value for m in spec.network.egress.modes.values()})),
    )
