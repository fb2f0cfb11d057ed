"""Warm pools: sandboxes of a profile's defaults kept ready, claimed by matching Starts.

Why server-side pools: most Starts ask for nothing but a profile's defaults, and most of a
cold create (user namespace, cgroup, writable layer, network namespace, keeper and agent)
does not depend on what the sandbox will run. A profile with ``warm_pool: {size: N}`` has
the control plane send, in ``Registered.warm_pools``, what a Start on it that asks for
nothing special resolves to; the runner keeps N such sandboxes built and not started
(``Backend.prepare``), and a Start whose backend spec equals the pool's in everything but
what only matters at start — id, hostname, command, environment, working directory and
lifetime (tags never reach the runner) — claims one (``Backend.claim``) instead of
building it. Mounted files and exposed ports are part of the match (a request with either
goes cold), as are image, resources, disk and network.

How it stays out of the way:

* **A claim never waits.** It takes a ready slot from a list (no lock, no await before the
  pop), and a failed claim (the slot died, say) destroys what it made and the Start goes
  cold, so a pool can only make a Start faster.
* **Refills run in the background**, one build at a time on the whole runner (a build
  costs about what a cold create does, and Starts must keep the CPU), starting 50 ms after
  the claim that emptied the slot, when its Start has answered and its first exec has
  usually run. A pool whose builds fail (its image was removed, say)
  backs off from 1 s to 60 s and reports why in its state.
* **Pool sandboxes are nobody's**: they are not in the runner's sandbox table or ledger,
  so neither snapshots, heartbeat capacity nor the control plane count them; discovery
  shows each pool's size and how many are ready (``Heartbeat.warm_pools``).
* **Nothing leaks**: the runner destroys its slots when it shuts down, and a runner that
  was killed has its successor destroy them (``discard_prepared``) before it recovers or
  creates anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from sandboxd.backends.base import Backend, SandboxSpec
from sandboxd.backends.errors import BackendError, SandboxExists
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["WarmPools", "match_key"]

_log = logging.getLogger(__name__)

MAX_CONCURRENT_BUILDS = 1
REFILL_DELAY_SECONDS = 0.05
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
_KEY_ID = "warm"

Resolve = Callable[[runner_pb2.SandboxSpec], Awaitable[SandboxSpec]]


def match_key(spec: SandboxSpec) -> SandboxSpec:
    """``spec`` without what a claim applies at start: equal keys may share a slot."""
    return dataclasses.replace(
        spec,
        sandbox_id=_KEY_ID,
        command=SandboxSpec.__dataclass_fields__["command"].default,  # type: ignore[arg-type]
        env={},
        workdir="/",
        max_lifetime_seconds=None,
        hostname=None,
    )


@dataclasses.dataclass
class _Pool:
    """One profile's pool: what the control plane asked for and what is ready."""

    profile_name: str
    size: int
    template: runner_pb2.SandboxSpec
    ready: list[tuple[str, SandboxSpec]] = dataclasses.field(default_factory=list)
    building: int = 0
    error: str = ""
    retry_at: float = 0.0
    backoff: float = BACKOFF_FIRST_SECONDS
    claims: int = 0


class WarmPools:
    """The runner's warm pools over one backend (see the module docstring).

    ``resolve`` turns a control-plane spec into the backend's, exactly as a Start's is
    turned (profile limits, image, blocked destinations), so a pool's slots and a Start
    on its profile compare equal when they should.
    """

    def __init__(self, backend: Backend, resolve: Resolve) -> None:
        self._backend = backend
        self._resolve = resolve
        self._pools: dict[str, _Pool] = {}
        self._wake = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._builds = asyncio.Semaphore(MAX_CONCURRENT_BUILDS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether the backend can keep warm sandboxes at all."""
        return self._backend.supports_warm_pools

    async def discard_leftovers(self) -> None:
        """Destroy the slots a previous runner process left (before anything is created)."""
        if not self.enabled:
            return
        try:
            found = await self._backend.discard_prepared()
        except (BackendError, OSError) as exc:
            _log.warning("cannot destroy the warm sandboxes of a previous runner: %s", exc)
            return
        if found:
            _log.info("destroyed %d warm sandboxes a previous runner process left", found)

    def configure(self, pools: Sequence[runner_pb2.WarmPool]) -> None:
        """Keep the pools the control plane asks for; drain those it no longer does."""
        if not self.enabled or self._closed:
            return
        wanted = {p.profile_name: p for p in pools if p.size > 0 and p.profile_name}
        for name, old in list(self._pools.items()):
            new = wanted.get(name)
            if new is None or new.spec != old.template:
                self._drain(old, 0)
                del self._pools[name]
        for name, p in wanted.items():
            pool = self._pools.get(name)
            if pool is None:
                self._pools[name] = _Pool(name, p.size, p.spec)
                _log.info("warm pool of profile %s: keeping %d sandboxes ready", name, p.size)
            elif pool.size != p.size:
                pool.size = p.size
                self._drain(pool, p.size)
        self._kick()

    def states(self) -> list[runner_pb2.WarmPoolState]:
        """Size and readiness of each pool, for heartbeats (and so for discovery)."""
        return [
            runner_pb2.WarmPoolState(
                profile_name=pool.profile_name,
                size=pool.size,
                ready=len(pool.ready),
                claims=pool.claims,
                error=pool.error,
            )
            for pool in self._pools.values()
        ]

    async def claim(self, profile_name: str, spec: SandboxSpec) -> bool:
        """Start sandbox ``spec`` from a ready slot; False when none fits (go cold)."""
        pool = self._pools.get(profile_name)
        if pool is None or not pool.ready:
            return False
        key = match_key(spec)
        found = next((i for i, (_slot, k) in enumerate(pool.ready) if k == key), None)
        if found is None:
            return False
        slot, _key = pool.ready.pop(found)
        # Refill a little later, so the build does not compete with this Start and the
        # client's first exec for the CPU.
        asyncio.get_running_loop().call_later(REFILL_DELAY_SECONDS, self._kick)
        try:
            await self._backend.claim(slot, spec)
        except SandboxExists:  # the id is taken (a cold create would fail too): keep the slot
            pool.ready.append((slot, key))
            raise
        except BackendError as exc:
            _log.info("warm sandbox %s of %s unusable (%s): going cold", slot, profile_name, exc)
            with contextlib.suppress(BackendError):
                await self._backend.destroy(spec.sandbox_id)
            return False
        except BaseException:
            with contextlib.suppress(BackendError):
                await self._backend.destroy(spec.sandbox_id)
            raise
        pool.claims += 1
        return True

    async def close(self) -> None:
        """Stop refilling and destroy every ready slot (runner shutdown).

        Only the filler is cancelled (a build cleans up after itself). Discards under way
        are waited for, never cancelled: their slot has already left the backend's list, so
        a discard cut short would leave its sandbox, user-id range and network to nobody.
        """
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
        tasks = [t for t in (self._filler, *self._tasks) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        slots = [slot for pool in self._pools.values() for slot, _key in pool.ready]
        self._pools.clear()
        await asyncio.gather(*(self._backend.discard(s) for s in slots), return_exceptions=True)

    # -- refilling ---------------------------------------------------------------------------
    def _drain(self, pool: _Pool, keep: int) -> None:
        while len(pool.ready) > keep:
            slot, _key = pool.ready.pop()
            self._spawn(self._backend.discard(slot))

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            with contextlib.suppress(BackendError, OSError):
                await coro

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _kick(self) -> None:
        if self._closed:
            return
        self._wake.set()
        if self._filler is None or self._filler.done():
            if not self._pools:
                return
            self._filler = asyncio.create_task(self._fill(), name="warm-pool-filler")

    def _wanted(self, now: float) -> _Pool | None:
        """The pool furthest below its size that may build now (not backed off)."""
        short = [
            p
            for p in self._pools.values()
            if len(p.ready) + p.building < p.size and p.retry_at <= now
        ]
        return min(short, key=lambda p: (len(p.ready) + p.building) / p.size, default=None)

    def _next_retry(self) -> float | None:
        waits = [p.retry_at for p in self._pools.values() if len(p.ready) + p.building < p.size]
        return min(waits) if waits else None

    async def _fill(self) -> None:
        while not self._closed:
            self._wake.clear()
            pool = self._wanted(time.monotonic())
            if pool is None:
                retry = self._next_retry()
                timeout = None if retry is None else max(0.0, retry - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                continue
            async with self._builds:
                await self._build(pool)

    async def _build(self, pool: _Pool) -> None:
        pool.building += 1
        template = pool.template
        slot: str | None = None
        try:
            named = runner_pb2.SandboxSpec()
            named.CopyFrom(template)
            named.sandbox_id = _KEY_ID  # the slot gets a name of the backend's own
            spec = await self._resolve(named)
            slot = await self._backend.prepare(spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported in the pool's state, retried after a backoff
            pool.error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            pool.retry_at = time.monotonic() + pool.backoff
            pool.backoff = min(pool.backoff * 2, BACKOFF_MAX_SECONDS)
            _log.warning("warm pool of profile %s: build failed: %s", pool.profile_name, exc)
            return
        finally:
            pool.building -= 1
        current = self._pools.get(pool.profile_name) is pool and pool.template is template
        if not current or len(pool.ready) >= pool.size:
            self._spawn(self._backend.discard(slot))  # reconfigured meanwhile
            return
        pool.error = ""
        pool.backoff = BACKOFF_FIRST_SECONDS
        pool.ready.append((slot, match_key(spec)))
