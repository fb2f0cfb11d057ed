"""The live registry of runners: identity, capabilities, bound profiles, capacity and health.

Why in memory with sorted indexes: discovery lists and placement must stay fast with thousands
of runners (benchmark targets: p50 < 20 ms for a 100-item discovery page of 10,000; <= 2 ms
for one placement). Runners are kept in a dict plus a sorted id list, so a page starts with a
binary search from the page token's key, and in a :class:`LoadIndex` ordered by load, so
placement starts from the least loaded runner. Everything placement reads per runner is kept
incrementally: reserved totals (adjusted by :meth:`RunnerRegistry.reserve` and
:meth:`~RunnerRegistry.release`, never re-summed), what its backend supports, its images,
its bound profiles (resolved once per binding, shared by every runner with that binding).
Health is computed when asked (connected and heard from within ``health_timeout``), so no
timer has to sweep every runner; the same goes for a start backoff's end.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from sandboxd.config import PlatformConfig, ResolvedProfile, resolve_binding
from sandboxd.config.models import RunnerConfig
from sandboxd.config.overcommit import Overcommit
from sandboxd.controlplane.backend_support import BackendSupport, support_of
from sandboxd.controlplane.load_index import LoadIndex, LoadKey, load_key
from sandboxd.controlplane.runner_link import RunnerLink
from sandboxd.controlplane.start_backoff import FAILURES_BEFORE_BACKOFF, StartRecord
from sandboxd.store import RunnerRecord
from sandboxd.wakeups import Wakeups
from sandboxd_protocol.sandboxd_v1 import runner_pb2

Clock = Callable[[], float]
_log = logging.getLogger(__name__)


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
    # What placed, not yet terminal sandboxes take from this runner, by sandbox id, and their
    # sums. The control plane is the only one placing sandboxes, so this is exact and changes
    # the moment a sandbox is placed or ends (discovery shows it at once). Changed only
    # through RunnerRegistry.reserve/release, which keep the sums and the load index right.
    _reservations: dict[str, runner_pb2.Reservation] = field(default_factory=dict, repr=False)
    reserved_cpu_millicores: int = 0
    reserved_memory_bytes: int = 0
    reserved_gpu_count: int = 0
    # Derived from ``capabilities`` by the registry whenever they change.
    support: BackendSupport = field(default_factory=lambda: BackendSupport(backend="unknown"))
    images: frozenset[str] = frozenset()
    gpu_types_folded: frozenset[str] = frozenset()
    # Recent start outcomes, for backing off a runner whose starts keep failing.
    starts: StartRecord = field(default_factory=StartRecord)
    # How far requests may add up beyond the allocatable CPU and memory (config/overcommit.py).
    overcommit: Overcommit = field(default_factory=Overcommit)
    # Its warm pools as its last heartbeat reported them (controlplane/warm_pools.py).
    warm_pools: tuple[runner_pb2.WarmPoolState, ...] = ()
    # Set by an administrator (controlplane/runner_lifecycle.py), persisted with the runner:
    # cordoned runners get no new sandboxes; a drain deadline also stops theirs at that time.
    cordoned: bool = False
    drain_deadline: datetime | None = None
    drain_grace_seconds: int = 0

    @property
    def reservations(self) -> Mapping[str, runner_pb2.Reservation]:
        """Live reservations by sandbox id (read-only; see :meth:`RunnerRegistry.reserve`)."""
        return MappingProxyType(self._reservations)

    @property
    def running_sandboxes(self) -> int:
        """How many placed sandboxes have not ended yet."""
        return len(self._reservations)

    @property
    def requestable_cpu_millicores(self) -> int:
        """What CPU requests may add up to: allocatable CPU times the overcommit ratio."""
        return self.overcommit.cpu_millicores(self.capabilities.cpu_millicores)

    @property
    def requestable_memory_bytes(self) -> int:
        """What memory requests may add up to: allocatable memory times the ratio."""
        return self.overcommit.memory_bytes(self.capabilities.memory_bytes)

    @property
    def free_cpu_millicores(self) -> int:
        """Requestable CPU not reserved by live sandboxes (never negative)."""
        return max(0, self.requestable_cpu_millicores - self.reserved_cpu_millicores)

    @property
    def free_memory_bytes(self) -> int:
        """Requestable memory not reserved by live sandboxes (never negative)."""
        return max(0, self.requestable_memory_bytes - self.reserved_memory_bytes)

    @property
    def free_gpu_count(self) -> int:
        """GPUs not reserved by live sandboxes (never negative)."""
        return max(0, self.capabilities.gpu_count - self.reserved_gpu_count)

    @property
    def available(self) -> runner_pb2.Resources:
        """Capacity minus what live sandboxes reserve (never negative)."""
        return runner_pb2.Resources(
            available_cpu_millicores=self.free_cpu_millicores,
            available_memory_bytes=self.free_memory_bytes,
            available_gpu_count=self.free_gpu_count,
            running_sandboxes=len(self._reservations),
        )

    @property
    def load_key(self) -> LoadKey:
        """Where this runner sorts for placement (least loaded first)."""
        return load_key(len(self._reservations), self.free_cpu_millicores, self.runner_id)

    def hold(self, sandbox_id: str, amount: runner_pb2.Reservation) -> None:
        """Add (or replace) a reservation and adjust the sums (the registry's job)."""
        self.drop(sandbox_id)
        kept = runner_pb2.Reservation()
        kept.CopyFrom(amount)  # a caller changing its message later cannot skew the sums
        self._reservations[sandbox_id] = kept
        self.reserved_cpu_millicores += kept.cpu_millicores
        self.reserved_memory_bytes += kept.memory_bytes
        self.reserved_gpu_count += kept.gpu_count

    def drop(self, sandbox_id: str) -> bool:
        """Remove a reservation, adjusting the sums; False when there was none."""
        gone = self._reservations.pop(sandbox_id, None)
        if gone is None:
            return False
        self.reserved_cpu_millicores -= gone.cpu_millicores
        self.reserved_memory_bytes -= gone.memory_bytes
        self.reserved_gpu_count -= gone.gpu_count
        return True

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
            cordoned=self.cordoned,
            drain_deadline=self.drain_deadline,
            drain_grace_seconds=self.drain_grace_seconds,
        )


class RunnerRegistry:
    """Runners by id, with health, bindings from the configuration and sorted indexes."""

    def __init__(
        self,
        config: PlatformConfig,
        *,
        health_timeout: float = 10.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._health_timeout = health_timeout
        self._clock = clock
        self._on_change = on_change or (lambda _runner_id: None)
        self._link_waiters: Wakeups[str] = Wakeups()
        self._runners: dict[str, RunnerState] = {}
        self._sorted_ids: list[str] = []
        self._by_load = LoadIndex()
        self._gpus_by_load = LoadIndex()  # the same, only runners with GPUs
        # How many runners offer each profile alias / list each image, for Start's
        # "does this name exist at all" checks without visiting every runner.
        self._profile_names: Counter[str] = Counter()
        self._images: Counter[str] = Counter()
        self._connections = itertools.count(1)
        self._use_config(config)

    @property
    def health_timeout(self) -> float:
        """Seconds without a heartbeat after which a runner reads as unhealthy."""
        return self._health_timeout

    def __len__(self) -> int:
        return len(self._runners)

    def restore(self, records: list[RunnerRecord]) -> None:
        """Load runners persisted by an earlier run; they stay unhealthy until they redial."""
        for record in records:
            capabilities = runner_pb2.Capabilities.FromString(record.capabilities)
            state = RunnerState(
                runner_id=record.runner_id,
                runner_group_id=record.runner_group_id,
                tags=record.tags,
                capabilities=capabilities,
                version=record.version,
                connected_at=record.connected_at,
                last_heartbeat_at=record.last_heartbeat_at,
                resources=runner_pb2.Resources(),
                cordoned=record.cordoned,
                drain_deadline=record.drain_deadline,
                drain_grace_seconds=record.drain_grace_seconds,
            )
            self._insert(state)
            self._set_capabilities(state, capabilities)
            self._apply_config(state, state.runner_group_id)

    def reserve(self, runner_id: str, sandbox_id: str, amount: runner_pb2.Reservation) -> None:
        """Count a placed sandbox against its runner's capacity (again: replaces it)."""
        state = self._runners.get(runner_id)
        if state is not None:
            state.hold(sandbox_id, amount)
            self._reindex(state)

    def release(self, runner_id: str, sandbox_id: str) -> None:
        """Give back what a sandbox reserved (idempotent)."""
        state = self._runners.get(runner_id)
        if state is not None and state.drop(sandbox_id):
            self._reindex(state)

    def note_start(self, runner_id: str, ok: bool, reason: str = "") -> None:
        """Record how a sandbox start on ``runner_id`` ended, for placement's backoff.

        Call it when a start ends: ``ok=True`` when the runner started the sandbox,
        ``ok=False`` with the error's message when it failed because of the runner — decide
        with :func:`~sandboxd.controlplane.start_backoff.blames_runner`, and do not call it
        for failures that are the request's own (a command that does not exist), which
        prove nothing about the runner. After three failures in a row the runner is skipped
        by placement for 5 s, doubling per further failure up to 5 min; a success clears
        the record. Unknown runners are ignored.
        """
        state = self._runners.get(runner_id)
        if state is None:
            return
        was_backed_off = state.starts.backed_off(self._clock())
        failed_before = state.starts.failures
        state.starts.note(ok, reason, self._clock())
        if ok and failed_before >= FAILURES_BEFORE_BACKOFF:
            _log.warning(
                "runner %s: a sandbox started again after %d failed starts in a row; placement "
                "uses it again",
                runner_id,
                failed_before,
            )
        if not was_backed_off and self.backed_off(state):
            _log.warning(
                "runner %s: %d sandbox starts failed in a row (last: %s); placement skips it "
                "for %.0f s",
                runner_id,
                state.starts.failures,
                state.starts.last_failure,
                state.starts.until - self._clock(),
            )

    def backed_off(self, state: RunnerState) -> bool:
        """Whether placement skips this runner now because its starts keep failing."""
        return state.starts.backed_off(self._clock())

    def backed_off_until(self, state: RunnerState) -> datetime | None:
        """The wall-clock time the runner's current backoff ends; None when it is not backed off.

        For what people read (refusals, discovery, the admin's status), not for decisions.
        """
        if not self.backed_off(state):
            return None
        return datetime.now(UTC) + timedelta(seconds=state.starts.until - self._clock())

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
        self._set_capabilities(state, message.capabilities)
        state.version = message.version
        state.connected_at = now
        state.last_heartbeat_at = now
        state.resources = message.resources
        state.warm_pools = ()
        state.connection_id = connection_id
        if state.link is not None:
            state.link.close()
        state.link = RunnerLink(state.runner_id)
        self._link_waiters.wake(state.runner_id)
        state.last_heartbeat_monotonic = self._clock()
        self._apply_config(state, message.runner_group_id or "default")
        if not state.support.working:
            _log.warning(
                "runner %s: %s; no sandbox is placed there", state.runner_id, state.support.problem
            )
        self._on_change(state.runner_id)
        return state, connection_id

    def set_warm_pools(self, runner_id: str, pools: Sequence[runner_pb2.WarmPoolState]) -> None:
        """Keep the warm pools a runner's heartbeat reported (shown by discovery only)."""
        state = self._runners.get(runner_id)
        if state is not None:
            state.warm_pools = tuple(pools)

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
        if self._clock() - state.last_heartbeat_monotonic > self._health_timeout:
            # Silent long enough to read unhealthy (a partition): the connection is suspect.
            # Heartbeats may flow again while our sends on it still sit in TCP backoff, so
            # the runner is not called healthy on it; it redials, and a fresh connection is.
            _log.info("runner %s: heard from again after a silence; asking it to redial", runner_id)
            return False
        state.resources = resources
        state.last_heartbeat_monotonic = self._clock()
        state.last_heartbeat_at = datetime.now(UTC)
        if images is not None and list(images) != list(state.capabilities.images):
            capabilities = runner_pb2.Capabilities()
            capabilities.CopyFrom(state.capabilities)
            capabilities.images[:] = list(images)
            self._set_capabilities(state, capabilities)
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
            self._reindex(state)
            self._on_change(runner_id)

    async def next_link(
        self, runner_id: str, after: RunnerLink, timeout: float
    ) -> RunnerLink | None:
        """The runner's connection once it is another than ``after``; None after ``timeout``.

        Why: an operation whose open command went out on a connection that died (a healed
        partition, a redial) can be sent again on the runner's next connection instead of
        failing although the runner is back a second later.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = self._runners.get(runner_id)
            link = state.link if state is not None else None
            if link is not None and link is not after and not link.closed.is_set():
                return link
            left = deadline - loop.time()
            if left <= 0:
                return None
            await self._link_waiters.wait(runner_id, left)

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

    def by_load(self, *, with_gpus: bool = False) -> Iterator[RunnerState]:
        """Connected runners with a working backend and a bound profile, least loaded first.

        Least loaded: fewest sandboxes, then most free CPU, then runner id. ``with_gpus``
        keeps to runners that have GPUs (a GPU request need not walk the others). Health
        and start backoff change with time alone, so the caller checks them
        (:meth:`can_take_sandboxes`). Do not reserve or release while iterating.
        """
        for runner_id in self._gpus_by_load if with_gpus else self._by_load:
            yield self._runners[runner_id]

    def can_take_sandboxes(self, state: RunnerState) -> bool:
        """Healthy, connected, with a working backend, not cordoned, not backed off."""
        if state.connection_id is None or state.link is None or not state.support.working:
            return False
        if state.cordoned:
            return False
        now = self._clock()
        return (
            now - state.last_heartbeat_monotonic <= self._health_timeout
            and not state.starts.backed_off(now)
        )

    def set_cordon(
        self,
        runner_id: str,
        cordoned: bool,
        drain_deadline: datetime | None = None,
        drain_grace_seconds: int = 0,
    ) -> RunnerState | None:
        """Cordon (with a drain deadline, or none) or uncordon a runner; None if unknown.

        Persisted through the store writer like every runner change (``on_change``).
        """
        state = self._runners.get(runner_id)
        if state is None:
            return None
        state.cordoned = cordoned
        state.drain_deadline = drain_deadline if cordoned else None
        state.drain_grace_seconds = drain_grace_seconds if drain_deadline is not None else 0
        self._reindex(state)
        self._on_change(runner_id)
        return state

    def forget(self, runner_id: str) -> RunnerState | None:
        """Drop a disconnected runner from every index (the caller deletes its row)."""
        state = self._runners.get(runner_id)
        if state is None or state.connection_id is not None:
            return None
        del self._runners[runner_id]
        index = bisect.bisect_left(self._sorted_ids, runner_id)
        if index < len(self._sorted_ids) and self._sorted_ids[index] == runner_id:
            del self._sorted_ids[index]
        self._by_load.discard(runner_id)
        self._gpus_by_load.discard(runner_id)
        _recount(self._profile_names, state.profile_names, ())
        _recount(self._images, state.images, ())
        return state

    def offers_profile(self, name: str) -> bool:
        """Whether some known runner (healthy or not) has a binding called ``name``."""
        return self._profile_names[name] > 0

    def binding_lists(self) -> Iterable[tuple[ResolvedProfile, ...]]:
        """The distinct resolved binding lists runners have now (each shared by its runners)."""
        return self._resolved.values()

    def runners_offering(self, name: str) -> int:
        """How many known runners (healthy or not) have a binding called ``name``."""
        return self._profile_names[name]

    def lists_images(self) -> bool:
        """Whether any known runner reports its images (older runners did not)."""
        return bool(self._images)

    def lists_image(self, image: str) -> bool:
        """Whether some known runner (healthy or not) lists ``image``."""
        return self._images[image] > 0

    def reload(self, config: PlatformConfig) -> None:
        """Apply a new configuration to every known runner."""
        self._use_config(config)
        for state in self._runners.values():
            self._apply_config(state, state.runner_group_id)

    # -- keeping the indexes -----------------------------------------------------------

    def _insert(self, state: RunnerState) -> None:
        self._runners[state.runner_id] = state
        bisect.insort(self._sorted_ids, state.runner_id)

    def _set_capabilities(self, state: RunnerState, capabilities: runner_pb2.Capabilities) -> None:
        """Replace a runner's capabilities and everything derived from them."""
        images = frozenset(capabilities.images)
        if images != state.images:
            _recount(self._images, state.images, images)
            state.images = images
        state.capabilities = capabilities
        state.support = support_of(capabilities)
        state.gpu_types_folded = frozenset(t.casefold() for t in capabilities.gpu_types)
        self._reindex(state)

    def _reindex(self, state: RunnerState) -> None:
        """Put the runner where placement should find it, or take it out of the load index."""
        placeable = state.connection_id is not None and state.support.working
        if placeable and state.profiles and not state.cordoned:
            key = state.load_key
            self._by_load.put(key)
            if state.capabilities.gpu_count > 0:
                self._gpus_by_load.put(key)
            else:
                self._gpus_by_load.discard(state.runner_id)
        else:
            self._by_load.discard(state.runner_id)
            self._gpus_by_load.discard(state.runner_id)

    def _use_config(self, config: PlatformConfig) -> None:
        self._config = config
        self._entries: dict[str, RunnerConfig] = {r.runner_id: r for r in config.runners}
        # Each distinct binding list is resolved once and shared by every runner bound by
        # it (by default_bindings, or by equal entries of their own), so placement resolves
        # a request against a handful of profiles, not one per runner.
        self._resolved: dict[tuple[str, ...], tuple[ResolvedProfile, ...]] = {}

    def _resolve(self, entry: RunnerConfig | None) -> tuple[ResolvedProfile, ...]:
        bindings = entry.bindings if entry is not None else self._config.default_bindings
        key = tuple(b.model_dump_json() for b in bindings)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = tuple(resolve_binding(self._config, b) for b in bindings)
            self._resolved[key] = resolved
        return resolved

    def _apply_config(self, state: RunnerState, registered_group: str) -> None:
        entry = self._entries.get(state.runner_id)
        state.runner_group_id = (entry.runner_group_id if entry else None) or registered_group
        state.shared = entry.shared if entry else False
        state.overcommit = self._config.overcommit_for(state.runner_id)
        profiles = self._resolve(entry)
        if profiles is not state.profiles:
            _recount(self._profile_names, state.profile_names, (p.profile_name for p in profiles))
            state.profiles = profiles
        self._reindex(state)


def _recount(counter: Counter[str], old: Iterable[str], new: Iterable[str]) -> None:
    """Move one runner's names from ``old`` to ``new``, dropping names nobody has left."""
    counter.subtract(old)
    counter.update(new)
    for name in [n for n, count in counter.items() if count <= 0]:
        del counter[name]
