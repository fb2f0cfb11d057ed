"""Cordon, drain, uncordon and remove runners: what an administrator does before maintenance.

Why in the control plane and persisted: a cordon must hold across a restart of the control
plane (placement would otherwise start sandboxes on a host being taken down), and a drain's
deadline must still be enforced if the control plane restarts while it runs. The state lives
on the runner's row (``cordoned``, ``drain_deadline``, ``drain_grace_seconds``); each change is
written to the database before the call answers.

A drain is level-triggered like every sandbox change (DESIGN.md rule 11): :class:`Drainer`
looks at each draining runner every second; once the deadline has passed it records the wish
"stopped" (with the drain's grace) on every sandbox of that runner still wanted running, and
the runner's reconciler carries it out, now or when the runner is back. When the runner holds
no sandbox any more the drain is over; the runner stays cordoned until it is uncordoned.
Warm-pool sandboxes are not placed sandboxes: a cordoned runner keeps them, unclaimed, and
they end with the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from sandboxd.controlplane.lifecycle import Lifecycle, want_stopped
from sandboxd.controlplane.registry import RunnerRegistry, RunnerState
from sandboxd.errors import ApiError, invalid_argument
from sandboxd.errors import runner_not_found as runner_not_found_error

log = logging.getLogger(__name__)

MAX_DRAIN_SECONDS = 7 * 24 * 3600
"""The longest drain deadline accepted (a week): a longer one is a typo, not a plan."""
MAX_GRACE_SECONDS = 3600
DEFAULT_GRACE_SECONDS = 10
CHECK_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class RunnerLifecycleState:
    """One runner as the lifecycle commands report it."""

    runner_id: str
    cordoned: bool
    drain_deadline: datetime | None
    live_sandboxes: int
    healthy: bool
    # Starts that failed in a row because of the runner, the last one's message, and the end
    # of the placement backoff they caused (None: not backed off): ``start_backoff.py``.
    failed_starts: int = 0
    last_start_failure: str = ""
    backed_off_until: datetime | None = None

    @property
    def draining(self) -> bool:
        """Cordoned with a deadline for its sandboxes, which are not all gone yet."""
        return self.drain_deadline is not None


class RunnerLifecycle:
    """The administrator's runner commands, over the registry, the records and the store.

    ``persist(runner_id)`` writes the runner's current row and returns once it is stored;
    ``delete_row(runner_id)`` deletes it.
    """

    def __init__(
        self,
        registry: RunnerRegistry,
        lifecycle: Lifecycle,
        persist: Callable[[str], Awaitable[None]],
        delete_row: Callable[[str], Awaitable[bool]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._registry = registry
        self._lifecycle = lifecycle
        self._persist = persist
        self._delete_row = delete_row
        self._clock = clock

    def _runner(self, runner_id: str) -> RunnerState:
        if not runner_id:
            raise invalid_argument("runner_id", "must name a runner")
        state = self._registry.get(runner_id)
        if state is None:
            raise runner_not_found_error(runner_id)
        return state

    def state(self, runner_id: str) -> RunnerLifecycleState:
        """Where ``runner_id`` stands now (NOT_FOUND if no such runner is known)."""
        runner = self._runner(runner_id)
        return RunnerLifecycleState(
            runner_id=runner.runner_id,
            cordoned=runner.cordoned,
            drain_deadline=runner.drain_deadline,
            live_sandboxes=len(self._lifecycle.records.live_on(runner.runner_id)),
            healthy=self._registry.is_healthy(runner),
            failed_starts=runner.starts.failures,
            last_start_failure=runner.starts.last_failure,
            backed_off_until=self._registry.backed_off_until(runner),
        )

    async def cordon(self, runner_id: str) -> RunnerLifecycleState:
        """No new sandboxes on the runner; a drain in progress keeps its deadline."""
        runner = self._runner(runner_id)
        self._registry.set_cordon(
            runner.runner_id, True, runner.drain_deadline, runner.drain_grace_seconds
        )
        await self._persist(runner.runner_id)
        log.warning("runner %s cordoned", runner.runner_id)
        return self.state(runner.runner_id)

    async def uncordon(self, runner_id: str) -> RunnerLifecycleState:
        """Placement may pick the runner again; a drain in progress ends (nothing more stops)."""
        runner = self._runner(runner_id)
        self._registry.set_cordon(runner.runner_id, False)
        await self._persist(runner.runner_id)
        log.warning("runner %s uncordoned", runner.runner_id)
        return self.state(runner.runner_id)

    async def drain(
        self, runner_id: str, deadline_seconds: int, grace_seconds: int
    ) -> RunnerLifecycleState:
        """Cordon the runner; its sandboxes still running after ``deadline_seconds`` stop."""
        if not 0 <= deadline_seconds <= MAX_DRAIN_SECONDS:
            raise invalid_argument(
                "deadline_seconds", f"must be between 0 and {MAX_DRAIN_SECONDS} (a week)"
            )
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise invalid_argument("grace_seconds", f"must be between 0 and {MAX_GRACE_SECONDS}")
        runner = self._runner(runner_id)
        deadline = self._clock() + timedelta(seconds=deadline_seconds)
        self._registry.set_cordon(runner.runner_id, True, deadline, grace_seconds)
        await self._persist(runner.runner_id)
        log.warning(
            "runner %s draining: its sandboxes stop at %s",
            runner.runner_id,
            deadline.isoformat(timespec="seconds"),
        )
        await self.enforce(runner)  # a deadline of 0 stops them now, not a second later
        return self.state(runner.runner_id)

    async def remove(self, runner_id: str, fail_sandboxes: bool) -> int:
        """Forget a disconnected runner; returns how many of its sandboxes were failed.

        A connected runner is refused (stop it, or revoke it, first). So is one that still
        has sandboxes that did not end, unless ``fail_sandboxes``: nothing the platform knows
        about is dropped silently.
        """
        runner = self._runner(runner_id)
        if runner.connection_id is not None:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"runner {runner.runner_id!r} is connected; stop it (or revoke it with "
                "`sandboxd runners revoke`) before removing it",
                reason="CWSANDBOX_RUNNER_CONNECTED",
                metadata={"runner_id": runner.runner_id},
            )
        live = [r for r in self._lifecycle.records.live_on(runner.runner_id) if not r.terminal]
        if live and not fail_sandboxes:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"runner {runner.runner_id!r} still has {len(live)} sandbox(es) that did not "
                "end; pass fail_sandboxes (--fail-sandboxes) to mark them FAILED and remove it",
                reason="CWSANDBOX_RUNNER_HAS_SANDBOXES",
                metadata={"runner_id": runner.runner_id, "live_sandboxes": str(len(live))},
            )
        failed = 0
        if live:
            failed = await self._lifecycle.fail_runner_sandboxes(
                runner.runner_id, "its runner was removed by an administrator"
            )
        self._registry.forget(runner.runner_id)
        await self._delete_row(runner.runner_id)
        log.warning("runner %s removed (%d sandboxes failed)", runner.runner_id, failed)
        return failed

    async def enforce(self, runner: RunnerState) -> None:
        """One look at a draining runner: stop its sandboxes if due, end the drain if empty."""
        deadline = runner.drain_deadline
        if deadline is None:
            return
        records = self._lifecycle.records
        live = records.live_on(runner.runner_id)
        if not live:
            self._registry.set_cordon(runner.runner_id, True)  # drained: stays cordoned
            await self._persist(runner.runner_id)
            log.warning("runner %s drained: no sandboxes left", runner.runner_id)
            return
        if self._clock() < deadline:
            return
        grace = runner.drain_grace_seconds
        for record in live:
            await records.update(record.sandbox_id, lambda r: want_stopped(r, grace))


class Drainer:
    """Background task: every second, :meth:`RunnerLifecycle.enforce` on draining runners."""

    def __init__(self, registry: RunnerRegistry, runners: RunnerLifecycle) -> None:
        self._registry = registry
        self._runners = runners
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start enforcing (drains persisted by an earlier run included)."""
        self._task = asyncio.create_task(self._run(), name="runner-drainer")

    async def stop(self) -> None:
        """Stop enforcing; what was recorded stays recorded."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> None:
        """Enforce every draining runner once."""
        for runner in [r for r in self._registry.iter_from() if r.drain_deadline is not None]:
            await self._runners.enforce(runner)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # keep enforcing; the next sweep retries with fresh state
                log.exception("runner drain sweep failed")
            await asyncio.sleep(CHECK_INTERVAL_SECONDS)
