"""``Sandbox.shell``: a PTY request, raw bytes, resize, exit codes (§5).

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import cwsandbox._exec_stream
import cwsandbox._sandbox_io
import cwsandbox._terminal
from cwsandbox import (
    Sandbox,
    SandboxExecutionError,
    SandboxTimeoutError,
    TerminalResult,
    TerminalSession,
)
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.unit.client.sandbox.gateway_standin import READY, Gateway, exit_frame, out


def tty_echo(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
    """A pretend terminal: echoes stdin (as a PTY does), reports resizes, exits on 'exit N'."""
    yield READY
    yield out(b"\x1b[1m$ \x1b[0m")
    for req in requests:
        if req.HasField("stdin"):
            data = req.stdin.data
            yield out(data.replace(b"\n", b"\r\n"), stderr=True)  # a TTY ignores the type
            if data.startswith(b"exit "):
                yield exit_frame(int(data.split()[1]))
                return
        elif req.HasField("resize"):
            yield out(f"[size {req.resize.width}x{req.resize.height}]".encode())
        elif req.HasField("close"):
            break
    yield exit_frame(0)


def test_shell_requests_a_tty_and_streams_raw_bytes(gateway: Gateway) -> None:
    gateway.servicer.exec_script = tty_echo
    session = Sandbox.run().shell(width=120, height=40)
    assert isinstance(session, TerminalSession)
    assert session.command == ["/bin/bash"]
    session.stdin.write(b"ls\n").result()
    session.resize(100, 30)
    time.sleep(0.2)
    session.stdin.write(b"exit 3\n").result()
    output = b"".join(session.output)
    assert output.startswith(b"\x1b[1m$ \x1b[0m")  # escape sequences untouched
    assert b"ls\r\n" in output and b"[size 100x30]" in output
    assert session.wait() == 3 and session.returncode == 3
    assert session.result() == TerminalResult(returncode=3, command=["/bin/bash"])
    init = gateway.servicer.requests("StreamExec")[0].init
    assert (init.tty, init.tty_width, init.tty_height) == (True, 120, 40)
    assert list(init.command) == ["/bin/bash"]
    # No deadline for a terminal: it may run for hours.
    remaining = gateway.servicer.recorded("StreamExec")[0].time_remaining
    assert remaining is None or remaining > 10**9


def test_shell_without_size_sends_none_when_there_is_no_terminal(gateway: Gateway) -> None:
    gateway.servicer.exec_script = tty_echo
    session = Sandbox.run().shell(["/bin/sh"])
    session.stdin.close().result()
    assert session.wait() == 0
    init = gateway.servicer.requests("StreamExec")[0].init
    assert (init.tty, init.tty_width, init.tty_height) == (True, 0, 0)
    assert list(init.command) == ["/bin/sh"]


def test_shell_uses_the_local_terminal_size(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.servicer.exec_script = tty_echo
    monkeypatch.setattr(cwsandbox._sandbox_io, "local_terminal_size", lambda: (91, 27))
    session = Sandbox.run().shell()
    session.stdin.close().result()
    session.wait()
    init = gateway.servicer.requests("StreamExec")[0].init
    assert (init.tty_width, init.tty_height) == (91, 27)


def test_shell_without_exit_frame_is_minus_one(gateway: Gateway) -> None:
    def ends(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield out(b"bye")

    gateway.servicer.exec_script = ends
    session = Sandbox.run().shell()
    assert b"".join(session.output) == b"bye"
    assert session.wait() == -1


def test_shell_waits_for_ready(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cwsandbox._terminal, "READY_WAIT_SECONDS", 0.3)

    def mute(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        time.sleep(1.0)
        yield exit_frame(0)

    gateway.servicer.exec_script = mute
    session = Sandbox.run().shell()
    with pytest.raises(SandboxTimeoutError, match="ready"):
        session.result()
    with pytest.raises(SandboxTimeoutError):
        list(session.output)


def test_slow_terminal_reader_loses_nothing(gateway: Gateway) -> None:
    frames = [f"line {i}\r\n".encode() for i in range(2000)]

    def flood(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield from (out(f) for f in frames)
        yield exit_frame(0)

    gateway.servicer.exec_script = flood
    session = Sandbox.run().shell()
    got = []
    for chunk in session.output:
        got.append(chunk)
        if len(got) % 500 == 0:
            time.sleep(0.05)
    assert b"".join(got) == b"".join(frames)
    assert session.wait() == 0


def test_in_band_error_and_cancel(gateway: Gateway) -> None:
    def broken(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield st.ExecStreamResponse(error=st.ExecStreamError(message="pty failed", code="X"))

    gateway.servicer.exec_script = broken
    with pytest.raises(SandboxExecutionError, match="pty failed"):
        Sandbox.run().shell().wait()

    def forever(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield out(b"$ ")
        time.sleep(2)
        yield exit_frame(0)

    gateway.servicer.exec_script = forever
    session = Sandbox.run().shell()
    assert next(iter(session.output)) == b"$ "
    assert session.cancel()
    with pytest.raises(SandboxExecutionError, match="cancelled"):
        list(session.output)
    assert session.returncode is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"width": 0}, ValueError), ({"height": -1}, ValueError), ({"command": []}, ValueError)],
)
def test_bad_shell_arguments(gateway: Gateway, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        Sandbox.run().shell(**kwargs)


def test_resize_validation(gateway: Gateway) -> None:
    gateway.servicer.exec_script = tty_echo
    session = Sandbox.run().shell()
    with pytest.raises(ValueError):
        session.resize(0, 10)
    session.stdin.close().result()
    session.wait()
    session.resize(80, 24)  # after the end: ignored
    assert cwsandbox._exec_stream.READY_WAIT_SECONDS == 5.0
