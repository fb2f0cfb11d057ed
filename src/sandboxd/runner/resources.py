"""Track what the runner's sandboxes have reserved, so heartbeats report live free capacity.

Why a ledger and not a measurement: the scheduler needs to know what it may still *promise*,
which is capacity minus what has already been promised (reservations), not what happens to be
idle right now. A sandbox reserves when it is admitted and releases when it is gone; release is
idempotent because cleanup paths (stop, crash, recovery after restart) can overlap.

The ledger refuses a reservation that does not fit, naming the resource, so the runner's own
admission check (the second of the "checked twice" guardrails) can explain itself.

Overcommit: the control plane tells the runner, when it registers, how far its requests may
add up beyond its allocatable CPU and memory (``config/overcommit.py``); the ledger then
hands out that much (:meth:`ReservationLedger.set_overcommit`), so both checks agree. The
sums are kept as reservations come and go, so a check costs the same with 1,000 sandboxes
as with one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sandboxd_protocol.sandboxd_v1 import runner_pb2


@dataclass(frozen=True)
class Reservation:
    """An amount of runner resources: a sandbox's reservation or the runner's capacity."""

    cpu_millicores: int = 0
    memory_bytes: int = 0
    gpu_count: int = 0

    def __post_init__(self) -> None:
        for name in ("cpu_millicores", "memory_bytes", "gpu_count"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def __add__(self, other: Reservation) -> Reservation:
        return Reservation(
            cpu_millicores=self.cpu_millicores + other.cpu_millicores,
            memory_bytes=self.memory_bytes + other.memory_bytes,
            gpu_count=self.gpu_count + other.gpu_count,
        )


class InsufficientCapacityError(Exception):
    """A reservation does not fit; ``resource`` names the first field that ran out."""

    def __init__(self, resource: str, requested: int, available: int) -> None:
        super().__init__(f"{resource}: requested {requested}, available {available}")
        self.resource = resource
        self.requested = requested
        self.available = available


class ReservationLedger:
    """Capacity plus per-sandbox reservations; safe to use from several threads.

    The lock is there because backends may reserve or release from worker threads while the
    agent's event loop takes snapshots for heartbeats.
    """

    def __init__(self, capacity: Reservation) -> None:
        self._allocatable = capacity
        self._capacity = capacity
        self._reservations: dict[str, Reservation] = {}
        self._total = Reservation()
        self._lock = threading.Lock()

    @classmethod
    def from_capabilities(cls, capabilities: runner_pb2.Capabilities) -> ReservationLedger:
        """A ledger whose capacity is what the runner advertises."""
        return cls(
            Reservation(
                cpu_millicores=max(capabilities.cpu_millicores, 0),
                memory_bytes=max(capabilities.memory_bytes, 0),
                gpu_count=max(capabilities.gpu_count, 0),
            )
        )

    @property
    def capacity(self) -> Reservation:
        """The total the ledger hands out from (allocatable times the overcommit ratios)."""
        return self._capacity

    @property
    def allocatable(self) -> Reservation:
        """The runner's allocatable capacity, before overcommit."""
        return self._allocatable

    def set_overcommit(self, cpu: float, memory: float) -> None:
        """Let CPU and memory requests add up to ``cpu``/``memory`` times the allocatable.

        Ratios below 1 (or 0, from a control plane that does not send them) count as 1.
        Existing reservations are kept even if they no longer fit; ``snapshot`` then
        reports 0 free until enough of them end.
        """
        cpu, memory = max(cpu, 1.0), max(memory, 1.0)
        with self._lock:
            base = self._allocatable
            self._capacity = Reservation(
                cpu_millicores=int(base.cpu_millicores * cpu),
                memory_bytes=int(base.memory_bytes * memory),
                gpu_count=base.gpu_count,
            )

    def reserved(self) -> Reservation:
        """The sum of all current reservations."""
        with self._lock:
            return self._total_locked()

    def reservation(self, sandbox_id: str) -> Reservation | None:
        """What ``sandbox_id`` holds, or ``None``."""
        with self._lock:
            return self._reservations.get(sandbox_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reservations)

    def __contains__(self, sandbox_id: object) -> bool:
        with self._lock:
            return sandbox_id in self._reservations

    def reserve(self, sandbox_id: str, amount: Reservation, *, force: bool = False) -> None:
        """Reserve ``amount`` for ``sandbox_id``.

        Reserving again with the same amount is a no-op (retries are safe); a different amount
        for an existing id is a bug and raises ``ValueError``. Raises
        :class:`InsufficientCapacityError` when the amount does not fit in what is free, unless
        ``force`` is set: recovery after a restart must record sandboxes that already run,
        even if they now overcommit the host (``snapshot`` then reports 0 free, not less).
        """
        with self._lock:
            existing = self._reservations.get(sandbox_id)
            if existing is not None:
                if existing == amount:
                    return
                raise ValueError(f"sandbox {sandbox_id!r} already holds {existing}")
            if not force:
                self._check_fits_locked(amount)
            self._reservations[sandbox_id] = amount
            self._total = self._total + amount

    def release(self, sandbox_id: str) -> bool:
        """Drop ``sandbox_id``'s reservation; returns whether there was one (idempotent)."""
        with self._lock:
            gone = self._reservations.pop(sandbox_id, None)
            if gone is None:
                return False
            self._total = Reservation(
                cpu_millicores=self._total.cpu_millicores - gone.cpu_millicores,
                memory_bytes=self._total.memory_bytes - gone.memory_bytes,
                gpu_count=self._total.gpu_count - gone.gpu_count,
            )
            return True

    def snapshot(self) -> runner_pb2.Resources:
        """Live resources for a heartbeat: capacity minus reservations, never negative."""
        with self._lock:
            free = self._free_locked()
            running = len(self._reservations)
        return runner_pb2.Resources(
            available_cpu_millicores=free.cpu_millicores,
            available_memory_bytes=free.memory_bytes,
            available_gpu_count=free.gpu_count,
            running_sandboxes=running,
        )

    def _check_fits_locked(self, amount: Reservation) -> None:
        free = self._free_locked()
        for name in ("cpu_millicores", "memory_bytes", "gpu_count"):
            requested, available = getattr(amount, name), getattr(free, name)
            if requested > available:
                raise InsufficientCapacityError(name, requested, available)

    def _total_locked(self) -> Reservation:
        return self._total

    def _free_locked(self) -> Reservation:
        total = self._total_locked()
        return Reservation(
            cpu_millicores=max(self._capacity.cpu_millicores - total.cpu_millicores, 0),
            memory_bytes=max(self._capacity.memory_bytes - total.memory_bytes, 0),
            gpu_count=max(self._capacity.gpu_count - total.gpu_count, 0),
        )
