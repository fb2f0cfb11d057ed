"""Log relay: an ``OpenLogs`` bound to an ``Operate`` call makes the runner serve the log there.

The server side is the in-process stand-in of ``exec_standin.py`` (a real grpc.aio server on
127.0.0.1); the log is the stand-in backend's. Pinned here: data frames with a session id
and offsets, ``complete`` last; follow until the sandbox ends; logs after stop;
in-band errors; and that ending the call stops the reading.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sandboxd.runner.failures import refuse_operation
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import streaming_pb2
from tests.unit.runner.exec_standin import ExecStandin, Rig, run_rig, spec, start, stop


def open_logs(rig: Rig, stream_id: str, sandbox_id: str = "sb-1", **fields: object) -> None:
    command = runner_pb2.OpenLogs(stream_id=stream_id, sandbox_id=sandbox_id, **fields)  # type: ignore[arg-type]
    rig.operate(logs=command)


def kinds(frames: list[streaming_pb2.LogStreamResponse]) -> list[str]:
    return [str(f.WhichOneof("response")) for f in frames]


def data(frames: list[streaming_pb2.LogStreamResponse]) -> bytes:
    return b"".join(f.data.data for f in frames if f.WhichOneof("response") == "data")


async def started(rig: Rig) -> None:
    result = await rig.run("start", **start(spec()))
    assert not result.HasField("failure")


def test_existing_logs_then_complete(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        rig.backend.log("sb-1", b"one\ntwo\n")
        rig.backend.log("sb-1", b"oops\n", stream="stderr")
        open_logs(rig, "l1")
        stream = await rig.execs.log_stream("l1")
        assert (stream.open.logs.stream_id, stream.bearer) == ("l1", "token-1")
        frames = await stream.until_end()
        assert kinds(frames)[-1] == "complete" and set(kinds(frames)[:-1]) == {"data"}
        assert data(frames) == b"one\ntwo\noops\n"
        assert frames[0].data.session_id and frames[-2].data.offset == len(b"one\ntwo\noops\n")
        await asyncio.wait_for(stream.ended.wait(), 5)
        assert rig.backend.log_readers == 0
        # Logs never produce command results or events on the control stream.
        assert rig.outbox.kinds() == ["event:SANDBOX_PHASE_RUNNING", "result:start"]

    run_rig(tmp_path, body)


def test_tail_and_resume(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        rig.backend.log("sb-1", b"a\nb\nc\nd\n")
        open_logs(rig, "l1", tail_lines=2)
        frames = await (await rig.execs.log_stream("l1")).until_end()
        assert data(frames) == b"c\nd\n"
        rig.backend.log("sb-1", b"e\n")
        session = frames[0].data.session_id
        open_logs(rig, "l2", resume_session_id=session, resume_offset=2)
        resumed = await (await rig.execs.log_stream("l2")).until_end()
        assert data(resumed) == b"d\ne\n"  # the session's stream, from byte 2 on
        assert resumed[-2].data.offset == 6 and resumed[-2].data.session_id == session

    run_rig(tmp_path, body)


def test_follow_until_the_sandbox_ends_and_after_stop(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        rig.backend.log("sb-1", b"early\n")
        open_logs(rig, "l1", follow=True)
        stream = await rig.execs.log_stream("l1")
        assert (await stream.next()).data.data == b"early\n"
        rig.backend.log("sb-1", b"later\n")
        assert (await stream.next()).data.data == b"later\n"
        await rig.run("stop", **stop())
        assert kinds(await stream.until_end()) == ["complete"]
        # Stopped: still readable, and a follow just completes.
        open_logs(rig, "l2", follow=True)
        frames = await (await rig.execs.log_stream("l2")).until_end()
        assert data(frames) == b"early\nlater\n" and kinds(frames)[-1] == "complete"

    run_rig(tmp_path, body)


def test_ending_the_call_stops_a_follow(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        rig.backend.log("sb-1", b"x\n")
        open_logs(rig, "l1", follow=True)
        stream = await rig.execs.log_stream("l1")
        await stream.next()
        assert rig.backend.log_readers == 1
        stream.end_call()
        async with asyncio.timeout(5):
            while rig.backend.log_readers:
                await asyncio.sleep(0.01)

    run_rig(tmp_path, body)


def test_errors_are_in_band(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await started(rig)
        open_logs(rig, "l1", sandbox_id="ghost")
        frames = await (await rig.execs.log_stream("l1")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "SANDBOX_NOT_FOUND"
        open_logs(rig, "l2", resume_session_id="made-up", resume_offset=3)
        frames = await (await rig.execs.log_stream("l2")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "SESSION_NOT_FOUND"
        rig.backend.log("sb-1", b"abc\n")
        open_logs(rig, "l3")
        session = (await (await rig.execs.log_stream("l3")).until_end())[0].data.session_id
        open_logs(rig, "l4", resume_session_id=session, resume_offset=99)
        frames = await (await rig.execs.log_stream("l4")).until_end()
        assert kinds(frames) == ["error"] and frames[0].error.code == "INVALID_RESUME_OFFSET"

    run_rig(tmp_path, body)


def test_a_runner_without_backend_refuses_logs_in_band() -> None:
    async def main() -> None:
        async with ExecStandin() as execs:

            async def refuse(first: runner_pb2.OperationDown, call: object) -> None:
                await refuse_operation(first, call, "no backend")  # type: ignore[arg-type]

            first = runner_pb2.OperationDown(logs=runner_pb2.OpenLogs(stream_id="l1"))
            execs.bind(first, refuse)
            frames = await (await execs.log_stream("l1")).until_end()
            assert kinds(frames) == ["error"] and frames[0].error.code == "BACKEND_UNAVAILABLE"

    asyncio.run(main())
