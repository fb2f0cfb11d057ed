"""The reservation ledger behind heartbeat resources."""

from __future__ import annotations

import pytest

from sandboxd.runner import InsufficientCapacityError, Reservation, ReservationLedger
from sandboxd_protocol.sandboxd_v1 import runner_pb2

CAPACITY = Reservation(cpu_millicores=4000, memory_bytes=8 << 30, gpu_count=2)


def resources(cpu: int, memory: int, gpus: int, running: int) -> runner_pb2.Resources:
    return runner_pb2.Resources(
        available_cpu_millicores=cpu,
        available_memory_bytes=memory,
        available_gpu_count=gpus,
        running_sandboxes=running,
    )


def test_empty_ledger_reports_full_capacity():
    ledger = ReservationLedger(CAPACITY)
    assert ledger.snapshot() == resources(4000, 8 << 30, 2, 0)
    assert len(ledger) == 0
    assert ledger.reserved() == Reservation()


def test_reserve_and_release():
    ledger = ReservationLedger(CAPACITY)
    ledger.reserve("a", Reservation(cpu_millicores=1000, memory_bytes=1 << 30, gpu_count=1))
    ledger.reserve("b", Reservation(cpu_millicores=500, memory_bytes=2 << 30))
    assert ledger.snapshot() == resources(2500, 5 << 30, 1, 2)
    assert "a" in ledger
    assert ledger.reservation("b") == Reservation(cpu_millicores=500, memory_bytes=2 << 30)

    assert ledger.release("a") is True
    assert ledger.snapshot() == resources(3500, 6 << 30, 2, 1)
    assert ledger.release("a") is False  # idempotent
    assert ledger.release("never-there") is False
    assert ledger.snapshot() == resources(3500, 6 << 30, 2, 1)
    assert ledger.release("b") is True
    assert ledger.snapshot() == resources(4000, 8 << 30, 2, 0)


def test_reserving_the_same_amount_twice_is_a_no_op():
    ledger = ReservationLedger(CAPACITY)
    amount = Reservation(cpu_millicores=1000)
    ledger.reserve("a", amount)
    ledger.reserve("a", amount)
    assert ledger.snapshot().running_sandboxes == 1
    with pytest.raises(ValueError, match="already holds"):
        ledger.reserve("a", Reservation(cpu_millicores=2000))


@pytest.mark.parametrize(
    ("amount", "resource"),
    [
        (Reservation(cpu_millicores=4001), "cpu_millicores"),
        (Reservation(memory_bytes=(8 << 30) + 1), "memory_bytes"),
        (Reservation(gpu_count=3), "gpu_count"),
    ],
)
def test_reservation_that_does_not_fit_names_the_resource(amount, resource):
    ledger = ReservationLedger(CAPACITY)
    with pytest.raises(InsufficientCapacityError) as caught:
        ledger.reserve("big", amount)
    assert caught.value.resource == resource
    assert "big" not in ledger


def test_forced_overcommit_never_reports_negative():
    ledger = ReservationLedger(CAPACITY)
    ledger.reserve("a", Reservation(cpu_millicores=3000, memory_bytes=6 << 30, gpu_count=2))
    ledger.reserve("b", Reservation(cpu_millicores=3000, memory_bytes=6 << 30), force=True)
    assert ledger.snapshot() == resources(0, 0, 0, 2)


def test_negative_amounts_are_refused():
    with pytest.raises(ValueError, match="cpu_millicores"):
        Reservation(cpu_millicores=-1)


def test_from_capabilities():
    caps = runner_pb2.Capabilities(cpu_millicores=2000, memory_bytes=1 << 30, gpu_count=1)
    ledger = ReservationLedger.from_capabilities(caps)
    assert ledger.capacity == Reservation(cpu_millicores=2000, memory_bytes=1 << 30, gpu_count=1)
