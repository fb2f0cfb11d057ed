"""Immutable results of discovery calls.

The field names, order and keyword-only constructors match the official cwsandbox 0.26.2
client, so code written against either client reads the same attributes. Results are frozen
dataclasses: they are snapshots of server state at call time, safe to share and to hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cwsandbox._format import format_bytes, format_cpu
from sandboxd_protocol.v1beta2 import discovery_pb2

__all__ = [
    "EgressMode",
    "Profile",
    "Runner",
    "RunnerResources",
    "ServiceExposureMode",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class ServiceExposureMode:
    """One way a profile lets a sandbox expose ports (the guide calls these ingress modes)."""

    name: str


@dataclass(frozen=True, kw_only=True)
class EgressMode:
    """One kind of outbound network access a profile allows, e.g. ``"internet"``."""

    name: str


@dataclass(frozen=True, kw_only=True)
class WarmPool:
    """A profile's warm pool on one runner (a sandboxd extension of discovery).

    ``size`` sandboxes of the profile's defaults are kept ready; ``ready`` of them are now.
    A sandbox that asks for nothing beyond the profile's defaults (its own command,
    environment, tags and lifetime are fine) starts from one in a few milliseconds.
    """

    size: int
    ready: int
    claims: int = 0  # sandboxes started from the pool since the runner started
    error: str = ""  # why the runner's last build for the pool failed ("" if it did not)


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A profile on one runner: the guardrails a sandbox placed on it runs under.

    The same profile name can exist on several runners; each (runner, profile) pair is its
    own ``Profile``. Pass ``profile_name`` to ``Sandbox.run(profile_ids=[...])`` to target it.
    """

    profile_name: str
    runner_id: str
    supported_gpu_types: tuple[str, ...]
    supported_architectures: tuple[str, ...]
    service_exposure_modes: tuple[ServiceExposureMode, ...]
    egress_modes: tuple[EgressMode, ...]
    warm_pool: WarmPool | None = None  # sandboxd servers only; None: no pool

    @property
    def ingress_modes(self) -> tuple[ServiceExposureMode, ...]:
        """The discovery guide's name for ``service_exposure_modes`` (the same tuple)."""
        return self.service_exposure_modes

    @classmethod
    def from_proto(cls, msg: discovery_pb2.ProfileSummary) -> Profile:
        """Build a ``Profile`` from the wire message ``ProfileSummary``."""
        return cls(
            profile_name=msg.profile_name,
            runner_id=msg.runner_id,
            supported_gpu_types=tuple(msg.supported_gpu_types),
            supported_architectures=tuple(msg.supported_architectures),
            service_exposure_modes=tuple(
                ServiceExposureMode(name=m.name) for m in msg.service_exposure_modes
            ),
            egress_modes=tuple(EgressMode(name=m.name) for m in msg.egress_modes),
            warm_pool=WarmPool(
                size=msg.sandboxd_warm_pool.size,
                ready=msg.sandboxd_warm_pool.ready,
                claims=msg.sandboxd_warm_pool.claims,
                error=msg.sandboxd_warm_pool.error,
            )
            if msg.HasField("sandboxd_warm_pool")
            else None,
        )


@dataclass(frozen=True, kw_only=True)
class RunnerResources:
    """Live, unreserved capacity of a runner at the time of the call (FULL view only).

    ``available_*`` is what placement will still accept. sandboxd also says how it is made
    (other servers leave these at their defaults): ``allocatable_*`` (the runner's capacity
    for sandboxes), ``requested_*`` (the requests of its sandboxes, summed) and the
    overcommit ratios requests may reach: available = allocatable × ratio − requested.
    """

    available_cpu_millicores: int
    available_memory_bytes: int
    available_gpu_count: int
    running_sandboxes: int
    allocatable_cpu_millicores: int = 0
    allocatable_memory_bytes: int = 0
    requested_cpu_millicores: int = 0
    requested_memory_bytes: int = 0
    requested_gpu_count: int = 0
    cpu_overcommit_ratio: float = 1.0
    memory_overcommit_ratio: float = 1.0

    @classmethod
    def from_proto(cls, msg: discovery_pb2.RunnerResourceSummary) -> RunnerResources:
        """Build ``RunnerResources`` from the wire message ``RunnerResourceSummary``."""
        return cls(
            available_cpu_millicores=msg.available_cpu_millicores,
            available_memory_bytes=msg.available_memory_bytes,
            available_gpu_count=msg.available_gpu_count,
            running_sandboxes=msg.running_sandboxes,
            allocatable_cpu_millicores=msg.allocatable_cpu_millicores,
            allocatable_memory_bytes=msg.allocatable_memory_bytes,
            requested_cpu_millicores=msg.requested_cpu_millicores,
            requested_memory_bytes=msg.requested_memory_bytes,
            requested_gpu_count=msg.requested_gpu_count,
            cpu_overcommit_ratio=msg.cpu_overcommit_ratio or 1.0,  # 0: not sent
            memory_overcommit_ratio=msg.memory_overcommit_ratio or 1.0,
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class Runner:
    """A registered runner: what hardware it offers, which profiles it has, whether it is up.

    ``resources`` is ``None`` unless live capacity was asked for (``include_resources=True``,
    any ``min_available_*`` filter, or ``get_runner``). The ``repr`` is a one-line summary in
    human units, because printing runners is the first thing people do with them.
    """

    runner_id: str
    runner_group_id: str
    tags: tuple[str, ...]
    healthy: bool
    profile_names: tuple[str, ...]
    connected_at: datetime
    max_cpu_millicores: int
    max_memory_bytes: int
    max_gpu_count: int
    supported_gpu_types: tuple[str, ...]
    supported_architectures: tuple[str, ...]
    supports_privileged: bool
    available_storage_classes: tuple[str, ...]
    resources: RunnerResources | None = None

    def __repr__(self) -> str:
        return (
            f"Runner(runner_id={self.runner_id!r}, healthy={self.healthy}, "
            f"cpu={format_cpu(self.max_cpu_millicores)}, "
            f"memory={format_bytes(self.max_memory_bytes)}, "
            f"gpus={self.max_gpu_count}, profiles={list(self.profile_names)!r})"
        )

    @classmethod
    def from_proto(cls, msg: discovery_pb2.AvailableRunner) -> Runner:
        """Build a ``Runner`` from the wire message ``AvailableRunner``.

        A missing ``capabilities`` reads as zeros and empty tuples, a missing
        ``connected_at`` as 1970-01-01 UTC, and ``resources`` is kept only when present.
        """
        caps = msg.capabilities
        connected_at = (
            msg.connected_at.ToDatetime(tzinfo=UTC) if msg.HasField("connected_at") else _EPOCH
        )
        return cls(
            runner_id=msg.runner_id,
            runner_group_id=msg.runner_group_id,
            tags=tuple(msg.tags),
            healthy=msg.healthy,
            profile_names=tuple(msg.profile_names),
            connected_at=connected_at,
            max_cpu_millicores=caps.max_cpu_millicores,
            max_memory_bytes=caps.max_memory_bytes,
            max_gpu_count=caps.max_gpu_count,
            supported_gpu_types=tuple(caps.supported_gpu_types),
            supported_architectures=tuple(caps.supported_architectures),
            supports_privileged=caps.supports_privileged,
            available_storage_classes=tuple(caps.available_storage_classes),
            resources=(
                RunnerResources.from_proto(msg.resources) if msg.HasField("resources") else None
            ),
        )
