"""``Sandbox.stream_logs``: requests, line reassembly, end handling, errors, resume (§7).

Runs against the in-process stand-in gateway (client-side unit tests only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

import cwsandbox._logs
from cwsandbox import Sandbox, SandboxError, SandboxNotFoundError, SandboxNotRunningError
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.unit.client.sandbox.gateway_standin import Gateway, failure


def data(raw: bytes | str, session: str = "", offset: int = 0) -> st.LogStreamResponse:
    payload = raw.encode() if isinstance(raw, str) else raw
    return st.LogStreamResponse(
        data=st.LogStreamData(data=payload, session_id=session, offset=offset)
    )


COMPLETE = st.LogStreamResponse(complete=st.LogStreamComplete())


def script_of(*frames: st.LogStreamResponse) -> Any:
    def script(init: st.LogStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        if not init.follow:
            for _ in requests:  # the client half-closes right after init
                pass
        yield from frames

    return script


def test_lines_are_reassembled_across_frames(gateway: Gateway) -> None:
    snowman = "☃".encode()
    gateway.servicer.logs_script = script_of(
        data("first li"),
        data("ne\nsecond\nthi"),
        data(b"rd " + snowman[:2]),
        data(snowman[2:] + b"\n"),
        data("partial at the end"),
        COMPLETE,
    )
    lines = list(Sandbox.run().stream_logs())
    assert lines == ["first line\n", "second\n", "third ☃\n", "partial at the end"]
    received = gateway.servicer.requests("StreamLogs")
    init = received[0].init
    assert (init.follow, init.tail_lines, init.HasField("since_time")) == (False, 0, False)
    assert received[-1].WhichOneof("request") is None  # follow=False: half-closed at once


def test_end_without_complete_counts_as_end(gateway: Gateway) -> None:
    gateway.servicer.logs_script = script_of(data("a\nb"))
    assert list(Sandbox.run().stream_logs()) == ["a\n", "b"]


def test_filters_are_sent(gateway: Gateway) -> None:
    gateway.servicer.logs_script = script_of(COMPLETE)
    since = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    list(Sandbox.run().stream_logs(tail_lines=10, since_time=since, timestamps=True))
    init = gateway.servicer.requests("StreamLogs")[0].init
    assert (init.tail_lines, init.timestamps) == (10, True)
    assert init.since_time.ToDatetime(tzinfo=UTC) == since
    deadline = gateway.servicer.recorded("StreamLogs")[0].time_remaining
    assert deadline is not None and 290 < deadline <= 301.5  # request_timeout_seconds


def test_long_line_is_flushed_in_pieces(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cwsandbox._logs, "MAX_LINE_CHARS", 10)
    gateway.servicer.logs_script = script_of(data("x" * 25), data("y\n"), COMPLETE)
    assert "".join(Sandbox.run().stream_logs()) == "x" * 25 + "y\n"


def test_in_band_error_is_a_sandbox_error(gateway: Gateway) -> None:
    gateway.servicer.logs_script = script_of(
        data("ok\n"),
        st.LogStreamResponse(error=st.LogStreamError(message="no logs", code="SANDBOX_NOT_FOUND")),
    )
    reader = Sandbox.run().stream_logs()
    assert next(iter(reader)) == "ok\n"
    with pytest.raises(SandboxError, match="Log stream error: no logs") as info:
        list(reader)
    assert info.value.reason == "SANDBOX_NOT_FOUND"


def test_grpc_errors_are_translated(gateway: Gateway) -> None:
    sb = Sandbox.run()
    sb.wait()
    gateway.servicer.logs_script = script_of(COMPLETE)
    gateway.servicer.fail("StreamLogs", failure(grpc.StatusCode.NOT_FOUND, "gone"))
    with pytest.raises(SandboxNotFoundError):
        list(sb.stream_logs())


def test_follow_sends_close_when_the_reader_is_closed(gateway: Gateway) -> None:
    def live(init: st.LogStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield data("tick 1\n")
        for _ in requests:  # until the client says close and half-closes
            pass
        yield COMPLETE

    gateway.servicer.logs_script = live
    reader = Sandbox.run().stream_logs(follow=True)
    assert next(iter(reader)) == "tick 1\n"
    reader.close()
    for _ in range(50):
        kinds = [r.WhichOneof("request") for r in gateway.servicer.requests("StreamLogs")]
        if kinds[-1:] == [None]:
            break
        time.sleep(0.05)
    assert kinds == ["init", "close", None]
    remaining = gateway.servicer.recorded("StreamLogs")[0].time_remaining
    assert remaining is None or remaining > 10**6  # follow: no deadline


def test_follow_resumes_after_a_broken_stream(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cwsandbox._logs, "BACKOFF_SECONDS", (0.01, 0.01, 0.01))
    attempts: list[st.LogStreamInit] = []

    def flaky(init: st.LogStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        attempts.append(init)
        if len(attempts) == 1:
            yield data("one\ntw", session="sess-1", offset=6)
            raise RuntimeError("runner connection lost")  # the server answers UNKNOWN
        assert (init.resume_session_id, init.resume_offset) == ("sess-1", 6)
        yield data("o\nthree\n", session="sess-1", offset=14)
        yield COMPLETE

    gateway.servicer.logs_script = flaky
    lines = list(Sandbox.run().stream_logs(follow=True, tail_lines=5))
    assert lines == ["one\n", "two\n", "three\n"]
    assert (attempts[0].tail_lines, attempts[1].tail_lines) == (5, 0)


def test_follow_reinits_fresh_and_skips_what_it_already_delivered(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cwsandbox._logs, "BACKOFF_SECONDS", (0.01, 0.01, 0.01))
    attempts: list[st.LogStreamInit] = []

    def replaying(init: st.LogStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        attempts.append(init)
        if len(attempts) == 1:
            yield data("alpha\nbe")
            yield st.LogStreamResponse(
                error=st.LogStreamError(message="lost", code="SESSION_NOT_FOUND")
            )
            return
        yield data("alpha\nbeta\ngamma\n")  # a fresh stream starts from the beginning
        yield COMPLETE

    gateway.servicer.logs_script = replaying
    assert list(Sandbox.run().stream_logs(follow=True)) == ["alpha\n", "beta\n", "gamma\n"]
    assert not attempts[1].resume_session_id


def test_retries_give_up(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cwsandbox._logs, "BACKOFF_SECONDS", (0.01, 0.01, 0.01))

    def broken(init: st.LogStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        raise RuntimeError("down")
        yield  # pragma: no cover

    gateway.servicer.logs_script = broken
    with pytest.raises(SandboxError):
        list(Sandbox.run().stream_logs(follow=True))
    assert len(gateway.servicer.recorded("StreamLogs")) >= 3


def test_stopped_sandbox(gateway: Gateway) -> None:
    gateway.servicer.logs_script = script_of(data("history\n"), COMPLETE)
    sb = Sandbox.run()
    sb.stop().result()
    with pytest.raises(SandboxNotRunningError):
        sb.stream_logs(follow=True)
    assert list(sb.stream_logs()) == ["history\n"]  # history stays readable


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tail_lines": -1}, ValueError),
        ({"tail_lines": True}, ValueError),
        ({"since_time": "yesterday"}, TypeError),
        ({"timeout_seconds": 0}, ValueError),
    ],
)
def test_bad_arguments(gateway: Gateway, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        Sandbox.run().stream_logs(**kwargs)


def test_unimplemented_server_says_so(gateway: Gateway) -> None:
    with pytest.raises(SandboxError, match="not implemented"):
        list(Sandbox.run().stream_logs())
