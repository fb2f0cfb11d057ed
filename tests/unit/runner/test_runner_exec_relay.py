"""Exec relay: the runner carries one process's frames on the ``Operate`` call it is bound to.

The server side is the in-process stand-in in ``exec_standin.py`` (a real grpc.aio server on
127.0.0.1); the process side is the stand-in backend's scripted ``StandinExec``. What is
pinned here is the runner's half of v1beta2.md §5: no ``ready`` (the control plane sends it
when it binds) unless the open asks for one (``announce_running``), output as produced,
``exit`` last, in-band ``error`` frames, stdin/resize/close (or stdin closed from the open),
and kill on cancel.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxd.backends.errors import SandboxNotFound
from sandboxd.runner import start_arrivals
from sandboxd.runner.sandbox_state import Sandbox
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import streaming_pb2
from tests.unit.runner.exec_standin import Rig, run_rig, spec, start

STDOUT = streaming_pb2.ExecStreamOutput.STREAM_TYPE_STDOUT
STDERR = streaming_pb2.ExecStreamOutput.STREAM_TYPE_STDERR


def open_exec(rig: Rig, stream_id: str, *argv: str, sandbox_id: str = "sb-1", **kw: object) -> None:
    command = runner_pb2.OpenExec(stream_id=stream_id, sandbox_id=sandbox_id, command=argv, **kw)
    rig.operate(exec=command)


def kinds(frames: list[streaming_pb2.ExecStreamResponse]) -> list[str]:
    return [str(f.WhichOneof("response")) for f in frames]


async def running(rig: Rig, count: int = 1) -> None:
    """Wait until ``count`` processes were started in sb-1."""
    async with asyncio.timeout(5):
        while len(rig.backend.world["sb-1"].execs) < count:
            await asyncio.sleep(0.01)


async def started(rig: Rig) -> None:
    result = await rig.run("start", **start(spec()))
    assert not result.HasField("failure")


def test_output_then_exit_in_order(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "echo", "hi")
        stream = await rig.execs.stream("e1")
        assert stream.bearer == "token-1"  # the runner's credential, in call metadata
        frames = await stream.until_end()
        assert kinds(frames) == ["output", "exit"]
        assert (frames[0].output.stream_type, frames[0].output.data) == (STDOUT, b"hi\n")
        assert frames[1].exit.exit_code == 0
        await asyncio.wait_for(stream.ended.wait(), 5)
        # Execs never produce command results or events on the control stream.
        assert rig.outbox.kinds() == ["event:SANDBOX_PHASE_RUNNING", "result:start"]

    run_rig(tmp_path, body)


def test_stderr_and_exit_code(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "fail", "7")
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames) == ["output", "exit"]
        assert (frames[0].output.stream_type, frames[0].output.data) == (STDERR, b"boom\n")
        assert frames[1].exit.exit_code == 7

    run_rig(tmp_path, body)


def test_missing_program_is_stderr_and_127(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "/no/such/program")
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames) == ["output", "exit"]
        assert frames[0].output.stream_type == STDERR and frames[1].exit.exit_code == 127

    run_rig(tmp_path, body)


def test_stdin_then_close_is_eof(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "cat")
        stream = await rig.execs.stream("e1")
        stream.push(stdin=streaming_pb2.ExecStreamData(data=b"abc"))
        first = await stream.next()
        assert first.output.data == b"abc"  # streamed as produced, before stdin ends
        stream.push(stdin=streaming_pb2.ExecStreamData(data=b"def"))
        stream.push(close=streaming_pb2.ExecStreamClose())
        stream.push(stdin=streaming_pb2.ExecStreamData(data=b"ignored after close"))
        rest = await stream.until_end()
        assert kinds(rest) == ["output", "exit"]
        assert rest[0].output.data == b"def" and rest[1].exit.exit_code == 0

    run_rig(tmp_path, body)


def test_stdin_closed_in_the_open_is_eof_at_once(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "cat", stdin_closed=True)
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames) == ["exit"] and frames[0].exit.exit_code == 0

    run_rig(tmp_path, body)


def test_an_operation_bound_again_is_not_run_twice(tmp_path: Path) -> None:
    """The control plane binds an exec again when its first stream died unanswered."""

    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "echo", "once")
        assert kinds(await (await rig.execs.stream("e1")).until_end()) == ["output", "exit"]
        del rig.execs.streams["e1"]
        open_exec(rig, "e1", "echo", "once")
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "RUNNER_UNAVAILABLE"
        assert len(rig.backend.world["sb-1"].execs) == 1

    run_rig(tmp_path, body)


def test_tty_size_and_resize_reach_the_session(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "cat", tty=True, tty_width=80, tty_height=24)
        stream = await rig.execs.stream("e1")
        await running(rig)
        stream.push(resize=streaming_pb2.ExecStreamResize(width=120, height=40))
        stream.push(close=streaming_pb2.ExecStreamClose())
        await stream.until_end()
        session = rig.backend.world["sb-1"].execs[0]
        assert session.tty and session.resizes == [(120, 40)]

    run_rig(tmp_path, body)


def test_lots_of_output_arrives_whole_and_before_exit(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "flood", "500")
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames)[-1] == "exit"
        data = b"".join(f.output.data for f in frames[:-1])
        assert len(data) == 500 * 1024

    run_rig(tmp_path, body)


def test_not_running_and_unknown_sandbox_are_in_band_errors(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "echo", sandbox_id="ghost")
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "SANDBOX_NOT_FOUND"
        await rig.run("stop", stop=runner_pb2.StopSandbox(sandbox_id="sb-1"))
        open_exec(rig, "e2", "echo")
        frames = await (await rig.execs.stream("e2")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "SANDBOX_NOT_RUNNING"
        open_exec(rig, "e3", sandbox_id="sb-1")
        frames = await (await rig.execs.stream("e3")).until_end()
        assert kinds(frames) == ["error"]

    run_rig(tmp_path, body)


def test_control_plane_ending_the_call_kills_the_process(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "sleep")
        stream = await rig.execs.stream("e1")
        await running(rig)
        session = rig.backend.world["sb-1"].execs[0]
        stream.end_call()
        async with asyncio.timeout(5):
            while not session.closed:
                await asyncio.sleep(0.01)
        assert session.killed_with == 9 and await session.wait() == 137

    run_rig(tmp_path, body)


def test_a_slow_exec_does_not_block_another(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "slow", "sleep")
        await rig.execs.stream("slow")
        await running(rig)
        began = time.monotonic()
        open_exec(rig, "fast", "echo", "quick")
        frames = await (await rig.execs.stream("fast")).until_end()
        assert kinds(frames) == ["output", "exit"]
        assert time.monotonic() - began < 2
        # The control stream stays free too.
        await rig.run("r", stop=runner_pb2.StopSandbox(sandbox_id="sb-9"))
        assert rig.backend.world["sb-1"].execs[0].killed_with is None

    run_rig(tmp_path, body)


def test_shutdown_kills_running_execs(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_exec(rig, "e1", "sleep")
        await rig.execs.stream("e1")
        await running(rig)
        await rig.supervisor.close()
        assert rig.backend.world["sb-1"].execs[0].closed

    run_rig(tmp_path, body)


def test_an_exec_sent_before_its_start_runs_once_the_start_is_done(tmp_path: Path) -> None:
    # Our client's first exec comes right after Start and may overtake the start command
    # (OpenExec.wait_start): the runner holds it until the sandbox runs, then runs it once.
    async def body(rig: Rig) -> None:
        rig.backend.start_delay = 0.2
        open_exec(rig, "e1", "echo", "hi", wait_start=True)
        stream = await rig.execs.stream("e1")  # bound, with nothing to run it in yet
        rig.command("start", **start(spec()))
        frames = await stream.until_end()
        assert kinds(frames) == ["output", "exit"]
        assert frames[0].output.data == b"hi\n"
        assert len(rig.backend.world["sb-1"].execs) == 1
        kinds_sent = rig.outbox.kinds()
        assert kinds_sent.index("event:SANDBOX_PHASE_RUNNING") < kinds_sent.index("result:start")
        # Without wait_start an exec that comes first is refused at once, as before.
        open_exec(rig, "e2", "echo", sandbox_id="sb-2")
        frames = await (await rig.execs.stream("e2")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "SANDBOX_NOT_FOUND"

    run_rig(tmp_path, body)


def test_a_waiting_exec_asked_to_announce_says_ready_once_it_runs(tmp_path: Path) -> None:
    # OpenExec.announce_running: one `ready` before anything else, once the process runs, so
    # the control plane tells its client while the command runs. Only when asked: the
    # control plane never passes it on, and one that does not know it expects none.
    async def body(rig: Rig) -> None:
        rig.backend.start_delay = 0.2
        open_exec(rig, "e1", "echo", "hi", wait_start=True, announce_running=True)
        stream = await rig.execs.stream("e1")
        rig.command("start", **start(spec()))
        frames = await stream.until_end()
        assert kinds(frames) == ["ready", "output", "exit"]
        assert frames[0].ready.session_id == "e1"
        assert frames[0].ready.ready_at.seconds > 0
        assert frames[1].output.data == b"hi\n"
        assert len(rig.backend.world["sb-1"].execs) == 1

    run_rig(tmp_path, body)


def test_a_waiting_exec_goes_as_the_sandbox_runs_not_after_the_starts_report(
    tmp_path: Path,
) -> None:
    # It used to wait for the whole start, the RUNNING report to the control plane
    # included (0.4 ms of a warm create's first exec); the sandbox runs before that.
    async def body(rig: Rig) -> None:
        report = rig.supervisor._emit
        exec_ran_first: list[bool] = []

        async def slow_report(sb: Sandbox) -> None:
            if sb.phase == runner_pb2.SANDBOX_PHASE_RUNNING and not exec_ran_first:
                deadline = time.monotonic() + 3
                while not rig.backend.world["sb-1"].execs and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                exec_ran_first.append(bool(rig.backend.world["sb-1"].execs))
            await report(sb)

        rig.supervisor._emit = slow_report  # type: ignore[method-assign]
        rig.backend.start_delay = 0.2  # the exec is waiting well before the sandbox runs
        open_exec(rig, "e1", "echo", "hi", wait_start=True)
        stream = await rig.execs.stream("e1")
        starting = asyncio.ensure_future(rig.run("start", **start(spec())))
        frames = await stream.until_end()
        assert kinds(frames) == ["output", "exit"]
        assert not (await starting).HasField("failure")
        assert exec_ran_first == [True]
        assert "event:SANDBOX_PHASE_RUNNING" in rig.outbox.kinds()

    run_rig(tmp_path, body)


def hold_state(rig: Rig, *, fail: bool = False) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the start at ``backend.state`` (its first step after the backend's answer).

    Returns ``(asked, release)``: set when the start asks, and what lets it go on; with
    ``fail`` the state then cannot be read (``SandboxNotFound``), and the start fails.
    """
    asked, release = asyncio.Event(), asyncio.Event()
    state = rig.backend.state

    async def held(sandbox_id: str) -> Any:
        asked.set()
        await release.wait()
        answer = await state(sandbox_id)
        if fail:
            raise SandboxNotFound(sandbox_id)
        return answer

    rig.backend.state = held  # type: ignore[method-assign]
    return asked, release


def test_a_waiting_exec_goes_once_the_backend_runs_the_sandbox_before_its_bookkeeping(
    tmp_path: Path,
) -> None:
    # After the backend's answer the start still asks the backend's state, saves the
    # runner's record and reports RUNNING; the exec no longer waits for any of it. Held
    # here at the first of them: the exec runs to its end, and the start then completes.
    async def body(rig: Rig) -> None:
        asked, release = hold_state(rig)
        open_exec(rig, "e1", "echo", "hi", wait_start=True)
        stream = await rig.execs.stream("e1")
        starting = asyncio.ensure_future(rig.run("start", **start(spec())))
        async with asyncio.timeout(5):
            await asked.wait()
            frames = await stream.until_end()
        assert kinds(frames) == ["output", "exit"]
        assert frames[0].output.data == b"hi\n"
        assert not starting.done()
        assert "event:SANDBOX_PHASE_RUNNING" not in rig.outbox.kinds()
        # Other operations see it as running too: a second exec, not waiting, runs.
        open_exec(rig, "e2", "echo", "again")
        frames = await (await rig.execs.stream("e2")).until_end()
        assert kinds(frames) == ["output", "exit"]
        release.set()
        assert not (await starting).HasField("failure")
        assert "event:SANDBOX_PHASE_RUNNING" in rig.outbox.kinds()

    run_rig(tmp_path, body)


def test_an_exec_in_a_sandbox_whose_start_fails_after_the_backend_ran_it_ends(
    tmp_path: Path,
) -> None:
    # The start fails after the backend ran the sandbox (its state cannot be read): the
    # sandbox is destroyed, and an exec already running in it ends instead of hanging.
    async def body(rig: Rig) -> None:
        _, release = hold_state(rig, fail=True)
        open_exec(rig, "e1", "sleep", wait_start=True)
        stream = await rig.execs.stream("e1")
        starting = asyncio.ensure_future(rig.run("start", **start(spec())))
        async with asyncio.timeout(5):
            while "sb-1" not in rig.backend.world or not rig.backend.world["sb-1"].execs:
                await asyncio.sleep(0.01)
        release.set()
        assert (await starting).HasField("failure")
        async with asyncio.timeout(5):
            frames = await stream.until_end()
        assert kinds(frames)[-1] in ("exit", "error")
        assert "sb-1" not in rig.backend.world
        assert "event:SANDBOX_PHASE_RUNNING" not in rig.outbox.kinds()

    run_rig(tmp_path, body)


@pytest.mark.parametrize("announce", [False, True])
def test_a_waiting_exec_of_a_start_that_fails_is_refused_unrun(
    tmp_path: Path, announce: bool
) -> None:
    # Asked to announce (OpenExec.announce_running) or not: nothing ran, so no ready.
    async def body(rig: Rig) -> None:
        rig.backend.fail_start.add("sb-1")
        rig.backend.start_delay = 0.1
        open_exec(rig, "e1", "echo", wait_start=True, announce_running=announce)
        stream = await rig.execs.stream("e1")
        result = await rig.run("start", **start(spec()))
        assert result.HasField("failure")
        frames = await stream.until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "SANDBOX_NOT_FOUND"

    run_rig(tmp_path, body)


def test_a_waiting_exec_whose_start_never_comes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(start_arrivals, "ARRIVAL_WAIT_SECONDS", 0.2)

    async def body(rig: Rig) -> None:
        began = time.monotonic()
        open_exec(rig, "e1", "echo", sandbox_id="never", wait_start=True)
        frames = await (await rig.execs.stream("e1")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "SANDBOX_NOT_FOUND"
        assert time.monotonic() - began >= 0.2  # it did wait for the start

    run_rig(tmp_path, body)
