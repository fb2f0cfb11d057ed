"""Cold creates take turns in the backend (``runner/create_slots.py``).

The backend is the in-memory stand-in (``backend_standin.py``) with a counter and a gate in
its build: how many builds overlap inside a backend can only be seen from inside one, which
is why a stand-in here and not a real backend (whose effect, a burst's p50 halved, is
measured by ``bench/sandboxes.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sandboxd.backends.base import SandboxSpec
from sandboxd.runner.create_slots import default_concurrent_creates
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.backend_standin import StandinBackend
from tests.unit.runner.exec_standin import Rig, image_store, run_rig, spec, start

SMALL = runner_pb2.Reservation(cpu_millicores=100, memory_bytes=64 << 20)
IDS = [f"sb-{n}" for n in "abcde"]


class CountingBackend(StandinBackend):
    """A stand-in whose builds wait at a gate, counting how many are inside at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.building = 0
        self.most = 0
        self.entered: list[str] = []

    async def create_and_start(self, spec: SandboxSpec) -> None:
        self.building += 1
        self.most = max(self.most, self.building)
        self.entered.append(spec.sandbox_id)
        try:
            await self.gate.wait()
            await super().create_and_start(spec)
        finally:
            self.building -= 1


async def _turns(count: int = 50) -> None:
    """Let every ready task run ``count`` loop turns (no wall-clock wait)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def _until(what: str, probe: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.001)
    assert probe(), what


def test_a_burst_is_built_at_most_n_at_a_time_in_arrival_order(tmp_path: Path) -> None:
    backend = CountingBackend(images=image_store(tmp_path))

    async def body(rig: Rig) -> None:
        for n, sid in enumerate(IDS):
            rig.command(str(n), **start(spec(sid, reservation=SMALL)))
        await _until("two builds under way", lambda: backend.building == 2)
        await _turns()
        assert backend.building == 2 and backend.entered == IDS[:2]
        # A queued create holds its reservation while it waits: capacity stays honest.
        assert all(sid in rig.ledger for sid in IDS)
        backend.gate.set()
        results = [await rig.outbox.result(str(n)) for n in range(len(IDS))]
        assert [r.WhichOneof("result") for r in results] == ["started"] * len(IDS)
        assert backend.most == 2
        assert backend.entered == IDS  # in the order the starts arrived

    run_rig(tmp_path, body, backend=backend, max_concurrent_creates=2)


def test_a_failed_build_gives_its_turn_to_the_next(tmp_path: Path) -> None:
    backend = CountingBackend(images=image_store(tmp_path))
    backend.fail_start.add("sb-a")
    backend.gate.set()

    async def body(rig: Rig) -> None:
        rig.command("1", **start(spec("sb-a", reservation=SMALL)))
        rig.command("2", **start(spec("sb-b", reservation=SMALL)))
        failed = await rig.outbox.result("1")
        assert failed.HasField("failure") and "sb-a" not in rig.ledger
        assert (await rig.outbox.result("2")).WhichOneof("result") == "started"
        assert backend.most == 1

    run_rig(tmp_path, body, backend=backend, max_concurrent_creates=1)


def test_a_create_cancelled_while_it_waits_leaves_nothing(tmp_path: Path) -> None:
    """The runner shutting down (its tasks cancelled) with one build under way, one queued."""
    backend = CountingBackend(images=image_store(tmp_path))

    async def body(rig: Rig) -> None:
        rig.command("1", **start(spec("sb-a", reservation=SMALL)))
        rig.command("2", **start(spec("sb-b", reservation=SMALL)))
        await _until("the first build under way", lambda: backend.building == 1)
        await _turns()
        assert backend.entered == ["sb-a"] and "sb-b" in rig.ledger
        await rig.supervisor.close()
        assert "sb-a" not in rig.ledger and "sb-b" not in rig.ledger
        assert not list((tmp_path / "records").glob("sb-*"))  # no runner record left
        assert "sb-b" not in backend.world and backend.entered == ["sb-a"]

    run_rig(tmp_path, body, backend=backend, max_concurrent_creates=1)


def test_the_default_is_twice_the_usable_cpus() -> None:
    assert default_concurrent_creates() == 2 * len(__import__("os").sched_getaffinity(0))


class FailsFirstTime(CountingBackend):
    """A stand-in whose first start of each sandbox fails (its command "does not exist")."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tried: set[str] = set()

    async def create_and_start(self, spec: SandboxSpec) -> None:
        if spec.sandbox_id in self.tried:
            self.fail_start.discard(spec.sandbox_id)
        else:
            self.tried.add(spec.sandbox_id)
            self.fail_start.add(spec.sandbox_id)
        await super().create_and_start(spec)


def test_a_start_sent_again_while_the_first_fails_is_a_new_try(tmp_path: Path) -> None:
    """The control plane restarted while a start was being built and sent it again: the
    second start waits for the first, and when the first fails (its sandbox gone), the
    second builds the sandbox anew and answers "started". Before, it answered
    ALREADY_EXISTS although nothing was there, and the control plane asked for a snapshot
    and tried once more 2 s later."""
    backend = FailsFirstTime(images=image_store(tmp_path))

    async def body(rig: Rig) -> None:
        rig.command("1", **start(spec("sb-a", reservation=SMALL)))
        await _until("the first build under way", lambda: backend.building == 1)
        rig.command("2", **start(spec("sb-a", reservation=SMALL)))
        await _turns()
        assert backend.entered == ["sb-a"]  # the second waits for the first
        backend.gate.set()
        assert (await rig.outbox.result("1")).HasField("failure")
        second = await rig.outbox.result("2")
        assert second.WhichOneof("result") == "started", second
        assert backend.entered == ["sb-a", "sb-a"]
        assert "sb-a" in rig.ledger

    run_rig(tmp_path, body, backend=backend, max_concurrent_creates=2)
