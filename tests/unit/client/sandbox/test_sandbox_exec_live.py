"""Streaming exec: live stdin/stdout, client-side timeouts, signals, many frames (§5).

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cwsandbox import Sandbox, SandboxCommandTimeoutError
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.unit.client.sandbox.gateway_standin import READY, Gateway, exit_frame, out


def test_stdin_and_stdout_interleave_live(gateway: Gateway) -> None:
    """Each line written comes back before the next is sent: nothing waits for EOF."""

    def echo(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        for req in requests:
            if req.HasField("stdin"):
                yield out(b"got " + req.stdin.data)
            elif req.HasField("close"):
                break
        yield exit_frame(0)

    gateway.servicer.exec_script = echo
    proc = Sandbox.run().exec(["cat"], stdin=True)
    assert proc.stdin is not None
    lines = iter(proc.stdout)
    for word in ("one", "two", "three"):
        proc.stdin.writeline(word).result()
        assert next(lines) == f"got {word}\n"
    proc.stdin.close().result()
    assert proc.wait() == 0
    assert proc.result().stdout == "got one\ngot two\ngot three\n"


def test_timeout_is_enforced_by_the_client_and_cancels_the_call(gateway: Gateway) -> None:
    cancelled: queue.Queue[bool] = queue.Queue()

    def slow(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield out("started\n")
        for _ in requests:  # until the client half-closes ...
            pass
        time.sleep(3)  # ... then the command "runs" well past its limit
        cancelled.put(True)
        yield exit_frame(0)

    gateway.servicer.exec_script = slow
    sb = Sandbox.run()
    sb.wait()
    start = time.monotonic()
    proc = sb.exec(["sleep", "100"], timeout_seconds=0.5)
    with pytest.raises(SandboxCommandTimeoutError, match=r"within 0\.5s"):
        proc.result()
    assert time.monotonic() - start < 2.5  # not the 5.5 s gRPC deadline
    chunks = []
    with pytest.raises(SandboxCommandTimeoutError):  # the live reader ends with the error
        chunks.extend(proc.stdout)
    assert chunks == ["started\n"]  # output from before the timeout was kept
    # The deadline the server sees is still timeout + 5 s (its own kill backstop).
    remaining = gateway.servicer.recorded("StreamExec")[0].time_remaining
    assert remaining is not None and 4.5 < remaining <= 5.6


@pytest.mark.parametrize(("signal_number", "code"), [(9, 137), (15, 143), (2, 130)])
def test_signal_exit_codes_pass_through(gateway: Gateway, signal_number: int, code: int) -> None:
    def killed(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield exit_frame(128 + signal_number)

    gateway.servicer.exec_script = killed
    proc = Sandbox.run().exec(["sh", "-c", f"kill -{signal_number} $$"])
    assert proc.wait() == code


def test_many_small_frames_arrive_complete_and_in_order(gateway: Gateway) -> None:
    count = 5000

    def chatty(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        for i in range(count):
            yield out(f"{i}\n", stderr=i % 7 == 0)
        yield exit_frame(0)

    gateway.servicer.exec_script = chatty
    proc = Sandbox.run().exec(["seq"])
    seen = []
    for chunk in proc.stdout:
        seen.append(int(chunk))
        if len(seen) % 1000 == 0:
            time.sleep(0.05)  # a slow reader
    assert seen == [i for i in range(count) if i % 7]
    result = proc.result()
    assert result.stdout.splitlines() == [str(i) for i in range(count) if i % 7]
    assert result.stderr.splitlines() == [str(i) for i in range(count) if i % 7 == 0]


def test_live_chunks_keep_split_characters_whole(gateway: Gateway) -> None:
    text = "héllo ☃ wörld"
    raw = text.encode()

    def split(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        for i in range(len(raw)):
            yield out(raw[i : i + 1])  # one byte per frame
        yield exit_frame(0)

    gateway.servicer.exec_script = split
    proc = Sandbox.run().exec(["x"])
    assert "".join(proc.stdout) == text
    assert "\ufffd" not in proc.result().stdout


def test_invalid_utf8_is_replaced_live_and_kept_raw(gateway: Gateway) -> None:
    def bad(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield out(b"ok \xff end")
        yield exit_frame(0)

    gateway.servicer.exec_script = bad
    proc = Sandbox.run().exec(["x"])
    assert "".join(proc.stdout) == "ok \ufffd end"
    assert proc.result().stdout_bytes == b"ok \xff end"
