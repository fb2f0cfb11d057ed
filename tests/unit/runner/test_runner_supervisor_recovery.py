"""Recovery after a runner restart, and state that survives lost events.

Against the in-memory stand-in backend (``backend_standin.py``; two instances sharing one
``world`` model a runner restart while sandboxes keep running). Real backends prove their
own ``recover`` in their conformance suite; this pins what the supervisor rebuilds from it
and from its own records: reservations, lifetimes, ended sandboxes with their exit codes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.errors import BackendUnavailable
from sandboxd.runner.resources import Reservation, ReservationLedger
from sandboxd.runner.supervisor import SandboxSupervisor
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.backend_standin import StandinBackend
from tests.unit.runner.exec_standin import CAPACITY, Outbox, Rig, image_store, run_rig, spec, start

RUNNING = runner_pb2.SANDBOX_PHASE_RUNNING
COMPLETED = runner_pb2.SANDBOX_PHASE_COMPLETED
FAILED = runner_pb2.SANDBOX_PHASE_FAILED


def test_lost_events_are_in_the_next_snapshot(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        rig.outbox.fail = True
        rig.backend.exit_main("sb-1", 5)
        await asyncio.sleep(0.05)
        [event] = rig.supervisor.snapshot()
        assert (event.phase, event.exit_code) == (COMPLETED, 5)

    run_rig(tmp_path, body)


def test_recovery_adopts_survivors_with_their_policy(tmp_path: Path) -> None:
    async def main() -> None:
        world: dict = {}
        images = image_store(tmp_path)
        records = tmp_path / "records"

        first_out = Outbox()
        first = SandboxSupervisor(
            StandinBackend(world, images), ReservationLedger(CAPACITY), first_out.send,
            records_dir=records,
        )  # fmt: skip
        first.handle(
            runner_pb2.Command(request_id="1", **start(spec("keeps", max_lifetime_seconds=2)))
        )
        first.handle(runner_pb2.Command(request_id="2", **start(spec("ends"))))
        first.handle(runner_pb2.Command(request_id="3", **start(spec("plain"))))
        for rid in ("1", "2", "3"):
            assert not (await first_out.result(rid)).HasField("failure")
        await first.close()  # the runner process goes away; sandboxes keep running
        StandinBackend(world).exit_main("ends", 4)  # ...and one ends meanwhile

        out = Outbox()
        ledger = ReservationLedger(CAPACITY)
        second = SandboxSupervisor(
            StandinBackend(world, images), ledger, out.send, records_dir=records
        )
        try:
            assert await second.recover() == ["keeps", "plain"]
            snap = {e.sandbox_id: e for e in second.snapshot()}
            assert snap["keeps"].phase == RUNNING and snap["plain"].phase == RUNNING
            assert (snap["ends"].phase, snap["ends"].exit_code) == (COMPLETED, 4)
            assert ledger.reservation("keeps") == Reservation(1000, 1 << 30, 0)
            assert "ends" not in ledger and len(ledger) == 2
            # The lifetime counts from the original start, not from the recovery.
            event = (await out.next("event", timeout=4)).event
            assert event.sandbox_id == "keeps" and event.reason == "max lifetime of 2 s reached"
        finally:
            await second.close()

    asyncio.run(main())


def test_recovery_marks_unstarted_leftovers_failed(tmp_path: Path) -> None:
    async def main() -> None:
        world: dict = {}
        backend = StandinBackend(world)
        await backend.create(SandboxSpec("half", image="busybox"))  # a runner died mid-start
        records = tmp_path / "records"
        records.mkdir()
        (records / "half.json").write_text('{"sandbox_id": "half", "reservation": [0, 0, 0]}')
        (records / "gone.json").write_text('{"sandbox_id": "gone", "reservation": [0, 0, 0]}')
        (records / "junk.json").write_text("{not json")

        out = Outbox()
        sup = SandboxSupervisor(
            backend, ReservationLedger(CAPACITY), out.send,
            records_dir=records,
        )  # fmt: skip
        try:
            assert await sup.recover() == []
            [event] = sup.snapshot()
            assert (event.sandbox_id, event.phase) == ("half", FAILED)
            assert not (records / "gone.json").exists()
        finally:
            await sup.close()

    asyncio.run(main())


async def killed_while_held(
    tmp_path: Path, world: dict, step: str, command: runner_pb2.Command
) -> SandboxSupervisor:
    """A runner's supervisor as a SIGKILL leaves it: held in the backend's ``step`` for good.

    ``command`` runs until it calls ``step`` (``state``, ``create_and_start``), which never
    answers; nothing of the supervisor runs again. The caller keeps the returned supervisor
    referenced, so its held task is not collected (and its clean-up run) before the end.
    """
    backend = StandinBackend(world, image_store(tmp_path))
    asked, never = asyncio.Event(), asyncio.Event()

    async def held_forever(*_args: Any) -> None:
        asked.set()
        await never.wait()

    setattr(backend, step, held_forever)
    first = SandboxSupervisor(
        backend, ReservationLedger(CAPACITY), Outbox().send, records_dir=tmp_path / "records"
    )
    first.handle(command)
    async with asyncio.timeout(5):
        await asked.wait()
    return first


def restarted(tmp_path: Path, world: dict) -> tuple[SandboxSupervisor, Outbox, ReservationLedger]:
    """The next runner's supervisor, on the same records and the same running sandboxes."""
    out, ledger = Outbox(), ReservationLedger(CAPACITY)
    supervisor = SandboxSupervisor(
        StandinBackend(world, image_store(tmp_path)),
        ledger,
        out.send,
        records_dir=tmp_path / "records",
    )
    return supervisor, out, ledger


def test_a_runner_killed_between_the_backends_answer_and_its_record_keeps_the_policy(
    tmp_path: Path,
) -> None:
    # The start is held where it asks the backend's state, after the backend runs the
    # sandbox and before the runner's record says it started. The first supervisor is then
    # abandoned as it is, nothing of it running again (as after a SIGKILL); the second
    # adopts the sandbox with the reservation, lifetime and generation of its start, from
    # the record saved before the backend was asked. Before, it adopted it "as is": no
    # reservation, no lifetime (it would have run forever), generation 0.
    async def main() -> None:
        world: dict = {}
        held = spec("cut", max_lifetime_seconds=2)
        command = runner_pb2.Command(
            request_id="1", start=runner_pb2.StartSandbox(spec=held, generation=7)
        )
        first = await killed_while_held(tmp_path, world, "state", command)
        assert world["cut"].state == "running"

        second, out, ledger = restarted(tmp_path, world)
        try:
            assert await second.recover() == ["cut"]
            [event] = second.snapshot()
            assert (event.sandbox_id, event.phase, event.generation) == ("cut", RUNNING, 7)
            assert ledger.reservation("cut") == Reservation(1000, 1 << 30, 0)
            event = (await out.next("event", timeout=4)).event
            assert event.sandbox_id == "cut" and event.reason == "max lifetime of 2 s reached"
        finally:
            await second.close()
        del first

    asyncio.run(main())


def test_a_start_that_fails_leaves_no_record(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        async def refused(spec: SandboxSpec) -> None:
            raise BackendUnavailable("the backend is down")

        rig.backend.create_and_start = refused  # type: ignore[method-assign]
        result = await rig.run("1", **start(spec()))
        assert result.HasField("failure")
        assert list((tmp_path / "records").glob("*")) == []

    run_rig(tmp_path, body)


def test_a_runner_killed_before_the_backend_made_anything_lets_the_start_come_again(
    tmp_path: Path,
) -> None:
    # Killed after the record is saved but before the backend was asked: the restarted
    # runner finds a record and no sandbox, drops the record without reporting anything
    # (the control plane still has the sandbox starting), and the start it sends again
    # makes the sandbox as if for the first time.
    async def main() -> None:
        world: dict = {}
        records = tmp_path / "records"
        command = runner_pb2.Command(request_id="1", **start(spec("early")))
        first = await killed_while_held(tmp_path, world, "create_and_start", command)
        assert (records / "early.jsonl").exists() and "early" not in world

        second, out, ledger = restarted(tmp_path, world)
        try:
            assert await second.recover() == []
            assert second.snapshot() == [] and len(ledger) == 0
            assert not (records / "early.jsonl").exists()
            second.handle(runner_pb2.Command(request_id="2", **start(spec("early"))))
            assert not (await out.result("2")).HasField("failure")
            [event] = second.snapshot()
            assert (event.sandbox_id, event.phase) == ("early", RUNNING)
        finally:
            await second.close()
        del first

    asyncio.run(main())
