"""``Sandbox.exec`` over StreamExec: frames sent, frames read, results and errors (§5).

Runs against the in-process stand-in gateway (client-side unit tests only); its exec
handlers are scripted per test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import cwsandbox._exec
from cwsandbox import (
    CWSandboxAuthenticationError,
    OperationRef,
    Process,
    ProcessResult,
    Sandbox,
    SandboxCommandTimeoutError,
    SandboxError,
    SandboxExecutionError,
    SandboxNotRunningError,
    SandboxStreamBackpressureError,
    SandboxStreamTruncatedError,
    SandboxTimeoutError,
)
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.unit.client.sandbox.gateway_standin import Gateway, exit_frame, failure, out

READY = st.ExecStreamResponse(ready=st.StreamingExecReady(session_id="s"))


def frames(gateway: Gateway) -> list[str]:
    """The kinds of StreamExec request frames received ('' marks the client's half-close)."""
    return [r.WhichOneof("request") or "" for r in gateway.servicer.requests("StreamExec")]


def test_exec_without_stdin_half_closes_after_init(gateway: Gateway) -> None:
    sb = Sandbox.run()
    proc = sb.exec(["echo", "hello", "world"])
    assert isinstance(proc, Process) and isinstance(proc, OperationRef)
    result = proc.result()
    assert result == ProcessResult(
        stdout="hello world\n",
        stderr="",
        returncode=0,
        stdout_bytes=b"hello world\n",
        stderr_bytes=b"",
        command=["echo", "hello", "world"],
    )
    assert frames(gateway) == ["init", ""]
    init = gateway.servicer.requests("StreamExec")[0].init
    assert (init.sandbox_id, list(init.command), init.tty) == (
        "sb-1",
        ["echo", "hello", "world"],
        False,
    )
    assert proc.returncode == 0 and proc.poll() == 0 and proc.wait() == 0
    # The implicit wait before the first exec polled once; the second exec does not poll.
    sb.exec(["true"]).result()
    assert len(gateway.servicer.requests("Get")) == 1


def test_exec_deadline_is_timeout_plus_five(gateway: Gateway) -> None:
    Sandbox.run().exec(["echo"], timeout_seconds=20).result()
    remaining = gateway.servicer.recorded("StreamExec")[0].time_remaining
    assert remaining is not None and 24 < remaining <= 25.2


def test_cwd_is_rewritten_with_shell_quoting(gateway: Gateway) -> None:
    result = Sandbox.run().exec(["echo", "a b", "it's"], cwd="/tmp/x y").result()
    init = gateway.servicer.requests("StreamExec")[0].init
    assert list(init.command) == ["/bin/sh", "-c", "cd '/tmp/x y' && exec echo 'a b' 'it'\"'\"'s'"]
    assert result.command == ["echo", "a b", "it's"]


@pytest.mark.parametrize(
    ("command", "cwd", "error"),
    [
        ("ls -l", None, TypeError),
        ([], None, ValueError),
        (["ls", 1], None, TypeError),
        (["ls"], "tmp", ValueError),
    ],
)
def test_bad_exec_arguments(gateway: Gateway, command: Any, cwd: str | None, error: type) -> None:
    sb = Sandbox.run()
    with pytest.raises(error):
        sb.exec(command, cwd=cwd)
    assert gateway.servicer.requests("StreamExec") == []


def test_stdin_frames_are_chunked_then_closed(gateway: Gateway) -> None:
    proc = Sandbox.run().exec(["cat"], stdin=True)
    assert proc.stdin is not None
    big = bytes(range(256)) * 800  # 204800 bytes
    proc.stdin.write(big).result()
    proc.stdin.writeline("tail").result()
    proc.stdin.close().result()
    proc.stdin.close().result()  # idempotent
    result = proc.result()
    assert result.stdout_bytes == big + b"tail\n"
    received = gateway.servicer.requests("StreamExec")
    kinds = frames(gateway)
    assert kinds[0] == "init" and kinds[-1] == "close"
    sizes = [len(r.stdin.data) for r in received if r.WhichOneof("request") == "stdin"]
    assert sizes == [65536, 65536, 65536, 8192, 5]
    with pytest.raises(ValueError):
        proc.stdin.write(b"late")


def test_stdout_streams_frame_by_frame(gateway: Gateway) -> None:
    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        for part in ("one ", "two ", "thr"):
            yield out(part)
            time.sleep(0.05)
        yield out("oops\n", stderr=True)
        yield out("ee\n")
        yield exit_frame(0)

    gateway.servicer.exec_script = script
    proc = Sandbox.run().exec(["x"])
    assert list(proc.stdout) == ["one ", "two ", "thr", "ee\n"]
    assert list(proc.stderr) == ["oops\n"]
    assert list(proc.stdout) == []  # stays exhausted
    assert proc.result().stdout == "one two three\n"


def test_multibyte_character_split_across_frames(gateway: Gateway) -> None:
    snowman = "☃".encode()

    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield out(snowman[:1])
        yield out(snowman[1:])
        yield exit_frame(0)

    gateway.servicer.exec_script = script
    result = Sandbox.run().exec(["x"]).result()
    assert result.stdout == "☃"  # the final result decodes the joined bytes


def test_exit_code_and_check(gateway: Gateway) -> None:
    sb = Sandbox.run()
    assert sb.exec(["false"]).result().returncode == 1
    with pytest.raises(SandboxExecutionError, match="failed with exit code 1") as info:
        sb.exec(["false"], check=True).result()
    assert isinstance(info.value.exec_result, ProcessResult)
    assert info.value.exec_result.returncode == 1


def test_stream_without_exit_frame_reads_as_zero(gateway: Gateway) -> None:
    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield out("partial")

    gateway.servicer.exec_script = script
    result = Sandbox.run().exec(["x"], check=True).result()
    assert (result.stdout, result.returncode) == ("partial", 0)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("STREAM_BACKPRESSURE", SandboxStreamBackpressureError),
        ("STREAM_TRUNCATED", SandboxStreamTruncatedError),
        ("CWSANDBOX_EXEC_FAILED", SandboxExecutionError),
    ],
)
def test_in_band_error_frame(gateway: Gateway, code: str, error: type) -> None:
    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield out("before")
        yield st.ExecStreamResponse(error=st.ExecStreamError(message="runner lost", code=code))

    gateway.servicer.exec_script = script
    proc = Sandbox.run().exec(["x"])
    with pytest.raises(error, match="Exec stream error: runner lost") as info:
        proc.result()
    assert info.value.reason == code
    assert proc.returncode is None
    with pytest.raises(error):  # the live stream ends with the same error
        list(proc.stdout)


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, None, CWSandboxAuthenticationError),
        (grpc.StatusCode.INTERNAL, None, SandboxError),
        (grpc.StatusCode.FAILED_PRECONDITION, "CWSANDBOX_SANDBOX_NOT_FOUND", SandboxError),
        (grpc.StatusCode.UNAVAILABLE, None, SandboxError),
    ],
)
def test_grpc_errors_are_translated(
    gateway: Gateway, code: grpc.StatusCode, reason: str | None, error: type
) -> None:
    sb = Sandbox.run()
    gateway.servicer.fail("StreamExec", failure(code, "nope", reason))
    with pytest.raises(error) as info:
        sb.exec(["echo"]).result()
    assert not isinstance(info.value, grpc.RpcError)


def test_deadline_becomes_command_timeout(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cwsandbox._exec, "DEADLINE_SLACK_SECONDS", 0.0)

    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        time.sleep(1.5)
        yield exit_frame(0)

    gateway.servicer.exec_script = script
    with pytest.raises(SandboxCommandTimeoutError, match=r"did not finish within 0\.3s") as info:
        Sandbox.run().exec(["sleep", "100"], timeout_seconds=0.3).result()
    assert isinstance(info.value, SandboxTimeoutError)


def test_stdin_waits_for_ready(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cwsandbox._exec, "READY_WAIT_SECONDS", 0.3)

    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        time.sleep(1.0)  # never says ready
        yield exit_frame(0)

    gateway.servicer.exec_script = script
    proc = Sandbox.run().exec(["cat"], stdin=True)
    assert proc.stdin is not None
    proc.stdin.write(b"queued before ready")
    with pytest.raises(SandboxTimeoutError, match="stdin ready signal not received"):
        proc.result()
    assert "stdin" not in frames(gateway)  # nothing was sent before ready


def test_exec_on_stopped_sandbox_sends_nothing(gateway: Gateway) -> None:
    sb = Sandbox.run()
    sb.stop().result()
    with pytest.raises(SandboxNotRunningError):
        sb.exec(["echo"]).result()
    with pytest.raises(SandboxNotRunningError):
        list(sb.exec(["echo"]).stdout)
    assert gateway.servicer.requests("StreamExec") == []


def test_exec_waits_for_running_first(gateway: Gateway) -> None:
    gateway.servicer.start_script = [
        (gw.SandboxStatus.SANDBOX_STATUS_PENDING, None),
        (gw.SandboxStatus.SANDBOX_STATUS_RUNNING, None),
    ]
    assert Sandbox.run().exec(["echo", "ok"]).result().stdout == "ok\n"
    methods = [c.method for c in gateway.servicer.calls]
    assert methods[:4] == ["Start", "Get", "Get", "StreamExec"]


def test_exec_is_awaitable_and_async_iterable(gateway: Gateway) -> None:
    sb = Sandbox.run()

    async def main() -> tuple[ProcessResult, list[str]]:
        first = await sb.exec(["echo", "a"])
        proc = sb.exec(["echo", "b"])
        chunks = [chunk async for chunk in proc.stdout]
        await proc
        return first, chunks

    first, chunks = asyncio.run(main())
    assert first.stdout == "a\n"
    assert chunks == ["b\n"]


def test_many_concurrent_execs(gateway: Gateway) -> None:
    sb = Sandbox.run()
    procs = [sb.exec(["echo", str(i)]) for i in range(20)]
    assert [p.result().stdout for p in procs] == [f"{i}\n" for i in range(20)]


def test_cancel_process(gateway: Gateway) -> None:
    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield out("started")
        time.sleep(1.0)
        yield exit_frame(0)

    gateway.servicer.exec_script = script
    sb = Sandbox.run()
    sb.wait()
    proc = sb.exec(["sleep", "10"], stdin=True)
    assert next(iter(proc.stdout)) == "started"
    assert proc.cancel()
    with pytest.raises(SandboxExecutionError, match="cancelled"):
        list(proc.stdout)
    assert proc.returncode is None and proc.poll() is None
    assert proc.stdin is not None
    # Cancelled right away (before the task ran): the readers still end.
    early = sb.exec(["echo"])
    if early.cancel():
        with pytest.raises(SandboxExecutionError):
            list(early.stdout)
