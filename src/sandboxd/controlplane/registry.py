"""The live registry of runners: identity, capabilities, bound profiles, capacity and health.

Why in memory with a sorted index: discovery lists must stay fast with thousands of runners
(benchmark target: p50 < 20 ms for a 100-item page of 10,000). Runners are kept in a dict plus a
sorted id list, so a page starts with a binary search from the page token's key. Health is
computed when asked (connected and heard from within ``health_timeout``), so no timer has to
sweep every runner.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sandboxd._proto import runner_pb2
from sandboxd.config import PlatformConfig, ResolvedProfile, resolve_binding
from sandboxd.controlplane.runner_link import RunnerLink
from sandboxd.store import RunnerRecord

Clock = Callable[[], float]


@dataclass
class RunnerState:
    """Everything the control plane knows about one runner."""

    runner_id: str
    runner_group_id: str
    tags: tuple[str, ...]
    capabilities: runner_pb2.Capabilities
    version: str
    connected_at: datetime
    last_heartbeat_at: datetime
    resources: runner_pb2.Resources
    profiles: tuple[ResolvedProfile, ...] = ()
    shared: bool = False
    connection_id: int | None = None
    last_heartbeat_monotonic: float = field(default=float("-inf"))
    link: RunnerLink | None = None
    # What placed, not yet terminal sandboxes take from this runner, by sandbox id. The
    # control plane is the only one placing sandboxes, so this count is exact and changes the
    # moment a sandbox is placed or ends (discovery shows it at once).
    reservations: dict[str, runner_pb2.Reservation] = field(default_factory=dict)

    @property
    def available(self) -> runner_pb2.Resources:
        """Capacity minus what live sandboxes reserve (never negative)."""
        caps = self.capabilities
        cpu = sum(r.cpu_millicores for r in self.reservations.values())
        memory = sum(r.memory_bytes for r in self.reservations.values())
        gpus = sum(r.gpu_count for r in self.reservations.values())
        return runner_pb2.Resources(
            available_cpu_millicores=max(0, caps.cpu_millicores - cpu),
            available_memory_bytes=max(0, caps.memory_bytes - memory),
            available_gpu_count=max(0, caps.gpu_count - gpus),
            running_sandboxes=len(self.reservations),
        )

    @property
    def profile_names(self) -> tuple[str, ...]:
        """Aliases of the bound profiles, in binding order."""
        return tuple(p.profile_name for p in self.profiles)

    def profile(self, name: str) -> ResolvedProfile | None:
        """The binding called ``name`` on this runner, if any."""
        for profile in self.profiles:
            if profile.profile_name == name:
                return profile
        return None

    def gpu_types_for(self, profile: ResolvedProfile) -> tuple[str, ...]:
        """GPU types a profile offers here: its list narrowed to what the host has."""
        host = tuple(self.capabilities.gpu_types)
        wanted = profile.spec.gpu_types
        return tuple(t for t in wanted if t in host) if wanted else host

    def architectures_for(self, profile: ResolvedProfile) -> tuple[str, ...]:
        """Architectures a profile offers here: its list narrowed to the host's."""
        host = tuple(self.capabilities.architectures)
        wanted = profile.spec.architectures
        return tuple(a for a in wanted if a in host) if wanted else host

    def record(self) -> RunnerRecord:
        """The persistent part of this state."""
        return RunnerRecord(
            runner_id=self.runner_id,
            runner_group_id=self.runner_group_id,
            tags=self.tags,
            capabilities=self.capabilities.SerializeToString(),
            version=self.version,
            connected_at=self.connected_at,
            last_heartbeat_at=self.last_heartbeat_at,
        )


class RunnerRegistry:
    """Runners by id, with health, bindings from the configuration and a sorted index."""

    def __init__(
        self,
        config: PlatformConfig,
        *,
        health_timeout: float = 10.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._health_timeout = health_timeout
        self._clock = clock
        self._on_change = on_change or (lambda _runner_id: None)
        self._runners: dict[str, RunnerState] = {}
        self._sorted_ids: list[str] = []
        self._connections = itertools.count(1)

    @property
    def health_timeout(self) -> float:
        """Seconds without a heartbeat after which a runner reads as unhealthy."""
        return self._health_timeout

    def __len__(self) -> int:
        return len(self._runners)

    def restore(self, records: list[RunnerRecord]) -> None:
        """Load runners persisted by an earlier run; they stay unhealthy until they redial."""
        for record in records:
            state = RunnerState(
                runner_id=record.runner_id,
                runner_group_id=record.runner_group_id,
                tags=record.tags,
                capabilities=runner_pb2.Capabilities.FromString(record.capabilities),
                version=record.version,
                connected_at=record.connected_at,
                last_heartbeat_at=record.last_heartbeat_at,
                resources=runner_pb2.Resources(),
            )
            self._apply_config(state, state.runner_group_id)
            self._insert(state)

    def reserve(self, runner_id: str, sandbox_id: str, amount: runner_pb2.Reservation) -> None:
        """Count a placed sandbox against its runner's capacity."""
        state = self._runners.get(runner_id)
        if state is not None:
            state.reservations[sandbox_id] = amount

    def release(self, runner_id: str, sandbox_id: str) -> None:
        """Give back what a sandbox reserved (idempotent)."""
        state = self._runners.get(runner_id)
        if state is not None:
            state.reservations.pop(sandbox_id, None)

    def register(self, message: runner_pb2.Register) -> tuple[RunnerState, int]:
        """Record a (re)connected runner; returns its state and the new connection's id.

        A runner that redials keeps its id, so its entry is updated in place; the previous
        connection, if still open, is superseded (see :meth:`is_current`).
        """
        now = datetime.now(UTC)
        connection_id = next(self._connections)
        state = self._runners.get(message.runner_id)
        if state is None:
            state = RunnerState(
                runner_id=message.runner_id,
                runner_group_id="",
                tags=(),
                capabilities=message.capabilities,
                version=message.version,
                connected_at=now,
                last_heartbeat_at=now,
                resources=message.resources,
            )
            self._insert(state)
        state.tags = tuple(message.tags)
        state.capabilities = message.capabilities
        state.version = message.version
        state.connected_at = now
        state.last_heartbeat_at = now
        state.resources = message.resources
        state.connection_id = connection_id
        if state.link is not None:
            state.link.close()
        state.link = RunnerLink(state.runner_id)
        state.last_heartbeat_monotonic = self._clock()
        self._apply_config(state, message.runner_group_id or "default")
        self._on_change(state.runner_id)
        return state, connection_id

    def heartbeat(
        self,
        runner_id: str,
        connection_id: int,
        resources: runner_pb2.Resources,
        *,
        images: Sequence[str] | None = None,
    ) -> bool:
        """Record a heartbeat; False when this connection has been superseded.

        ``images`` (when the runner listed them) replaces ``capabilities.images``, so an image
        built while the runner is connected is placeable at the next heartbeat; a change is
        persisted like any other runner change.
        """
        state = self._runners.get(runner_id)
        if state is None or state.connection_id != connection_id:
            return False
        state.resources = resources
        state.last_heartbeat_monotonic = self._clock()
        state.last_heartbeat_at = datetime.now(UTC)
        if images is not None and list(images) != list(state.capabilities.images):
            capabilities = runner_pb2.Capabilities()
            capabilities.CopyFrom(state.capabilities)
            capabilities.images[:] = list(images)
            state.capabilities = capabilities
            self._on_change(runner_id)
        return True

    def disconnect(self, runner_id: str, connection_id: int) -> None:
        """Mark a runner disconnected, unless a newer connection already replaced this one."""
        state = self._runners.get(runner_id)
        if state is not None and state.connection_id == connection_id:
            state.connection_id = None
            if state.link is not None:
                state.link.close()
                state.link = None
            self._on_change(runner_id)

    def is_current(self, runner_id: str, connection_id: int) -> bool:
        """Whether ``connection_id`` is still the runner's live connection."""
        state = self._runners.get(runner_id)
        return state is not None and state.connection_id == connection_id

    def is_healthy(self, state: RunnerState) -> bool:
        """Connected and heard from within the health timeout."""
        if state.connection_id is None:
            return False
        return self._clock() - state.last_heartbeat_monotonic <= self._health_timeout

    def get(self, runner_id: str) -> RunnerState | None:
        """The runner with this id, healthy or not."""
        return self._runners.get(runner_id)

    def record(self, runner_id: str) -> RunnerRecord | None:
        """Persistent snapshot of a runner (for the store writer)."""
        state = self._runners.get(runner_id)
        return state.record() if state else None

    def iter_from(self, after: str = "", *, inclusive: bool = False) -> Iterator[RunnerState]:
        """Runners in id order, starting after ``after`` (or at it, when ``inclusive``)."""
        search = bisect.bisect_left if inclusive else bisect.bisect_right
        start = search(self._sorted_ids, after) if after else 0
        for runner_id in self._sorted_ids[start:]:
            state = self._runners.get(runner_id)
            if state is not None:
                yield state

    def reload(self, config: PlatformConfig) -> None:
        """Apply a new configuration to every known runner."""
        self._config = config
        for state in self._runners.values():
            self._apply_config(state, state.runner_group_id)

    def _insert(self, state: RunnerState) -> None:
        self._runners[state.runner_id] = state
        bisect.insort(self._sorted_ids, state.runner_id)

    def _apply_config(self, state: RunnerState, registered_group: str) -> None:
        entry = self._config.runner_config(state.runner_id)
        state.runner_group_id = (entry.runner_group_id if entry else None) or registered_group
        state.shared = entry.shared if entry else False
        state.profiles = tuple(
            resolve_binding(self._config, b) for b in self._config.bindings_for(state.runner_id)
        )
