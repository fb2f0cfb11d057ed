"""What the supervisor decides about pause and resume, against the in-memory stand-in backend.

The stand-in (``backend_standin.py``) only stands in for a real backend: the local backend's
freezer has its own tests with real sandboxes (``tests/backends/test_local_pause.py``), and
the whole path has end-to-end and fault tests. These pin the supervisor's own rules: the
answer and the event carry the new phase with the command's generation, a stale command
changes nothing, work is refused while paused, and a restarted runner reports PAUSED.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sandboxd.runner.resources import ReservationLedger
from sandboxd.runner.supervisor import SandboxSupervisor
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.backend_standin import StandinBackend
from tests.unit.runner.exec_standin import (
    CAPACITY,
    Outbox,
    Rig,
    image_store,
    run_rig,
    spec,
    start,
    stop,
)

RUNNING = runner_pb2.SANDBOX_PHASE_RUNNING
PAUSED = runner_pb2.SANDBOX_PHASE_PAUSED
COMPLETED = runner_pb2.SANDBOX_PHASE_COMPLETED


def pause(generation: int, sandbox_id: str = "sb-1") -> dict[str, object]:
    return {"pause": runner_pb2.PauseSandbox(sandbox_id=sandbox_id, generation=generation)}


def resume(generation: int, sandbox_id: str = "sb-1") -> dict[str, object]:
    return {"resume": runner_pb2.ResumeSandbox(sandbox_id=sandbox_id, generation=generation)}


def test_pause_and_resume_answer_and_report_the_new_phase(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        result = await rig.run("2", **pause(2))
        assert (result.state.phase, result.state.generation) == (PAUSED, 2)
        assert rig.backend.world["sb-1"].paused
        assert rig.outbox.kinds()[-2:] == ["event:SANDBOX_PHASE_PAUSED", "result:2"]
        assert [(e.phase, e.generation) for e in rig.supervisor.snapshot()] == [(PAUSED, 2)]
        again = await rig.run("3", **pause(2))  # a repeat: idempotent
        assert again.state.phase == PAUSED and not again.HasField("failure")
        done = await rig.write_file("/tmp/x", b"x")
        assert done.failure.reason == "CWSANDBOX_SANDBOX_PAUSED", done
        assert "is paused" in done.failure.message
        result = await rig.run("4", **resume(3))
        assert (result.state.phase, result.state.generation) == (RUNNING, 3)
        assert not rig.backend.world["sb-1"].paused
        assert not (await rig.write_file("/tmp/x", b"x")).HasField("failure")

    run_rig(tmp_path, body)


def test_a_stale_pause_changes_nothing(tmp_path: Path) -> None:
    """A pause of generation 2 arriving after the resume of generation 3 is old news."""

    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        await rig.run("2", **resume(3))
        result = await rig.run("3", **pause(2))
        assert (result.state.phase, result.state.generation) == (RUNNING, 3)
        assert ("pause", "sb-1") not in rig.backend.calls

    run_rig(tmp_path, body)


def test_pausing_an_ended_sandbox_reports_its_end_and_stop_thaws(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec(command=["sh", "-c", "trap"])))
        await rig.run("2", **pause(2))
        stopped = await rig.run("3", **stop())
        assert (stopped.state.phase, stopped.state.exit_code) == (COMPLETED, 0)
        result = await rig.run("4", **pause(4))
        assert result.state.phase == COMPLETED and not result.HasField("failure")
        missing = await rig.run("5", **pause(5, sandbox_id="sb-nope"))
        assert missing.failure.reason == "CWSANDBOX_SANDBOX_NOT_FOUND"

    run_rig(tmp_path, body)


def test_a_restarted_runner_reports_a_paused_sandbox_paused(tmp_path: Path) -> None:
    async def main() -> None:
        world: dict = {}
        images = image_store(tmp_path)
        records = tmp_path / "records"
        first_out = Outbox()
        first = SandboxSupervisor(
            StandinBackend(world, images), ReservationLedger(CAPACITY), first_out.send,
            records_dir=records,
        )  # fmt: skip
        first.handle(runner_pb2.Command(request_id="1", **start(spec())))
        await first_out.result("1")
        first.handle(runner_pb2.Command(request_id="2", **pause(2)))  # type: ignore[arg-type]
        await first_out.result("2")
        await first.close()

        second = SandboxSupervisor(
            StandinBackend(world, images), ReservationLedger(CAPACITY), Outbox().send,
            records_dir=records,
        )  # fmt: skip
        assert await second.recover() == ["sb-1"]
        [event] = second.snapshot()
        assert (event.phase, event.generation) == (PAUSED, 2)  # the saved generation
        await second.close()

    asyncio.run(main())
