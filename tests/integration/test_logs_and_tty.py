"""Logs and terminals end to end: a real ``sandboxd up``, real sandboxes, raw v1beta2 stubs.

What is pinned is the wire contract of v1beta2.md §7 (StreamLogs: follow, tail, since,
server-side timestamps, logs after stop, errors) and §5 for TTY execs (``ready`` quickly,
``resize`` reaching the PTY, exit code), plus images built while the runner is connected
becoming placeable. Raw stubs, not a client, so a client's own behaviour cannot hide a
server mistake.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty, Queue

import grpc
import pytest
from google.protobuf import timestamp_pb2

from sandboxd_protocol.v1beta2 import (
    gateway_pb2,
    gateway_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
)
from tests.support.ports import free_port
from tests.support.processes import SANDBOXD, Proc, child_env, keyed_channel, printed

pytestmark = pytest.mark.e2e

S = gateway_pb2
L = streaming_pb2
SCRIPT = "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo err >&2"
TERMINAL = {S.SANDBOX_STATUS_COMPLETED, S.SANDBOX_STATUS_FAILED, S.SANDBOX_STATUS_TERMINATED}
STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")


@dataclass
class Platform:
    """A running ``sandboxd up`` and stubs on one channel to it."""

    data_dir: Path
    proc: Proc
    channel: grpc.Channel
    gateway: gateway_pb2_grpc.GatewayServiceStub
    streaming: streaming_pb2_grpc.GatewayStreamingServiceStub

    def start(self, script: str, image: str = "python:3.11") -> str:
        """Start ``sh -c script``; returns its id once it is running (or already done)."""
        response = self.gateway.Start(
            S.StartSandboxRequest(
                command="sh", args=["-c", script], container_image=image, profile_names=["default"]
            ),
            timeout=60,
        )
        self.wait(response.sandbox_id, lambda status: status != S.SANDBOX_STATUS_CREATING)
        return response.sandbox_id

    def status(self, sandbox_id: str) -> S.GetSandboxResponse:
        return self.gateway.Get(S.GetSandboxRequest(sandbox_id=sandbox_id), timeout=30)

    def wait(self, sandbox_id: str, done: object, timeout: float = 60) -> S.GetSandboxResponse:
        deadline = time.monotonic() + timeout
        while True:
            got = self.status(sandbox_id)
            if done(got.sandbox_status):  # type: ignore[operator]
                return got
            assert time.monotonic() < deadline, got
            time.sleep(0.05)

    def wait_ended(self, sandbox_id: str) -> S.GetSandboxResponse:
        return self.wait(sandbox_id, lambda status: status in TERMINAL)

    def stop(self, sandbox_id: str) -> None:
        self.gateway.Stop(
            S.StopSandboxRequest(sandbox_id=sandbox_id, graceful_shutdown_seconds=1), timeout=60
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("logs-up")
    port = free_port()
    proc = Proc(
        [*SANDBOXD, "up", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
        ],
        child_env(),
    ).start()  # fmt: skip
    channel = None
    try:
        proc.wait_for_line("CWSANDBOX_BASE_URL=", timeout=600)
        channel = keyed_channel(f"127.0.0.1:{port}", printed(proc, "CWSANDBOX_API_KEY"))
        yield Platform(
            data_dir,
            proc,
            channel,
            gateway_pb2_grpc.GatewayServiceStub(channel),
            streaming_pb2_grpc.GatewayStreamingServiceStub(channel),
        )
    finally:
        if channel is not None:
            channel.close()
        assert proc.stop() == 0, proc.output


class Requests:
    """A request iterator the test feeds by hand: ``send``, then ``half_close``."""

    def __init__(self, *first: L.LogStreamRequest | L.ExecStreamRequest) -> None:
        self._queue: Queue[object] = Queue()
        for request in first:
            self._queue.put(request)

    def send(self, request: object) -> None:
        self._queue.put(request)

    def half_close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[object]:
        while (request := self._queue.get()) is not None:
            yield request


def log_init(sandbox_id: str, **fields: object) -> L.LogStreamRequest:
    return L.LogStreamRequest(init=L.LogStreamInit(sandbox_id=sandbox_id, **fields))  # type: ignore[arg-type]


def read_logs(platform: Platform, sandbox_id: str, **fields: object) -> list[L.LogStreamResponse]:
    """A non-follow StreamLogs the way clients send it: init, then half-close at once."""
    return list(platform.streaming.StreamLogs(iter([log_init(sandbox_id, **fields)]), timeout=30))


def data_of(frames: list[L.LogStreamResponse]) -> bytes:
    return b"".join(f.data.data for f in frames if f.WhichOneof("response") == "data")


def check_ends_complete(frames: list[L.LogStreamResponse]) -> None:
    kinds = [f.WhichOneof("response") for f in frames]
    assert kinds[-1] == "complete" and set(kinds[:-1]) <= {"data"}, frames


def test_follow_streams_lines_as_produced_then_completes(platform: Platform) -> None:
    sandbox_id = platform.start("sleep 1; " + SCRIPT)
    arrivals: list[tuple[float, L.LogStreamResponse]] = []
    requests = Requests(log_init(sandbox_id, follow=True))
    for frame in platform.streaming.StreamLogs(iter(requests), timeout=60):
        arrivals.append((time.monotonic(), frame))
    frames = [frame for _, frame in arrivals]
    check_ends_complete(frames)
    assert data_of(frames) == b"line1\nline2\nline3\nerr\n"
    # Streamed as produced: the 0.2 s sleeps between lines show up between frames.
    data_times = [at for at, f in arrivals if f.WhichOneof("response") == "data"]
    assert len(data_times) >= 3 and data_times[-1] - data_times[0] >= 0.3
    for _, frame in arrivals[:-1]:
        assert frame.data.data.endswith(b"\n")  # cut at line boundaries
        assert frame.data.session_id
    offsets = [f.data.offset for f in frames[:-1]]
    assert offsets == sorted(offsets) and offsets[-1] == len(data_of(frames))
    assert platform.wait_ended(sandbox_id).sandbox_status == S.SANDBOX_STATUS_COMPLETED


def test_tail_since_and_timestamps(platform: Platform) -> None:
    sandbox_id = platform.start(SCRIPT + "; sleep 300")
    deadline = time.monotonic() + 20
    while data_of(read_logs(platform, sandbox_id)).count(b"\n") < 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    everything = read_logs(platform, sandbox_id)
    check_ends_complete(everything)
    assert data_of(everything) == b"line1\nline2\nline3\nerr\n"
    assert data_of(read_logs(platform, sandbox_id, tail_lines=2)) == b"line3\nerr\n"
    assert data_of(read_logs(platform, sandbox_id, tail_lines=10)) == data_of(everything)

    stamped = data_of(read_logs(platform, sandbox_id, timestamps=True)).splitlines(keepends=True)
    assert b"".join(STAMP.sub(b"", line) for line in stamped) == b"line1\nline2\nline3\nerr\n"
    assert len(stamped) == 4 and all(STAMP.match(line) for line in stamped), stamped
    times = [datetime.fromisoformat(line.split(b" ", 1)[0].decode()) for line in stamped]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert abs((datetime.now(UTC) - times[0]).total_seconds()) < 120

    # since_time: only what was read at or after line3's time.
    since = timestamp_pb2.Timestamp()
    since.FromDatetime(times[2])
    assert data_of(read_logs(platform, sandbox_id, since_time=since)) == b"line3\nerr\n"
    future = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
    assert data_of(read_logs(platform, sandbox_id, since_time=future)) == b""
    platform.stop(sandbox_id)


def test_logs_are_served_after_stop(platform: Platform) -> None:
    sandbox_id = platform.start("echo before-stop; echo oops >&2; sleep 300")
    deadline = time.monotonic() + 20
    while data_of(read_logs(platform, sandbox_id)) != b"before-stop\noops\n":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    platform.stop(sandbox_id)
    assert platform.wait_ended(sandbox_id).sandbox_status != S.SANDBOX_STATUS_RUNNING
    frames = read_logs(platform, sandbox_id)
    check_ends_complete(frames)
    assert data_of(frames) == b"before-stop\noops\n"
    # A follow on a terminal sandbox sends what exists, then complete (the request side
    # stays open, as a following client keeps it; a half-close would end the follow).
    requests = Requests(log_init(sandbox_id, follow=True))
    followed = list(platform.streaming.StreamLogs(iter(requests), timeout=30))
    requests.half_close()
    check_ends_complete(followed)
    assert data_of(followed) == b"before-stop\noops\n"


def test_resume_from_a_session_offset(platform: Platform) -> None:
    sandbox_id = platform.start(SCRIPT)
    platform.wait_ended(sandbox_id)
    frames = read_logs(platform, sandbox_id, tail_lines=3, timestamps=True)
    whole = data_of(frames)
    first = frames[0].data
    cut = len(whole.splitlines(keepends=True)[0])
    resumed = read_logs(platform, sandbox_id, resume_session_id=first.session_id, resume_offset=cut)
    check_ends_complete(resumed)
    assert data_of(resumed) == whole[cut:]
    bogus = read_logs(platform, sandbox_id, resume_session_id="nope", resume_offset=1)
    assert bogus[-1].error.code == "SESSION_NOT_FOUND"


def test_client_closing_a_follow_ends_it_cleanly(platform: Platform) -> None:
    sandbox_id = platform.start("i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.1; done")
    requests = Requests(log_init(sandbox_id, follow=True))
    call = platform.streaming.StreamLogs(iter(requests), timeout=60)
    got: list[L.LogStreamResponse] = []
    for frame in call:
        got.append(frame)
        if b"tick3\n" in data_of(got):
            requests.send(L.LogStreamRequest(close=L.LogStreamClose()))
            requests.half_close()
            break
    began = time.monotonic()
    rest = list(call)  # ends by itself, with complete, while the sandbox keeps running
    assert time.monotonic() - began < 5
    assert rest and rest[-1].WhichOneof("response") == "complete"
    assert call.code() == grpc.StatusCode.OK
    assert platform.status(sandbox_id).sandbox_status == S.SANDBOX_STATUS_RUNNING
    # A half-close alone also ends a follow.
    requests = Requests(log_init(sandbox_id, follow=True))
    call = platform.streaming.StreamLogs(iter(requests), timeout=60)
    threading.Timer(0.5, requests.half_close).start()
    frames = list(call)
    assert frames[-1].WhichOneof("response") == "complete" and call.code() == grpc.StatusCode.OK
    platform.stop(sandbox_id)


def test_unknown_sandbox_and_malformed_init(platform: Platform) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        read_logs(platform, "sb-does-not-exist")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = dict(caught.value.trailing_metadata() or ())
    assert b"CWSANDBOX_SANDBOX_NOT_FOUND" in details.get("grpc-status-details-bin", b"")

    sandbox_id = platform.start("echo hi")
    with pytest.raises(grpc.RpcError) as caught:
        read_logs(platform, sandbox_id, tail_lines=-1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tail_lines" in (caught.value.details() or "")

    close_first = iter([L.LogStreamRequest(close=L.LogStreamClose())])
    with pytest.raises(grpc.RpcError) as caught:
        list(platform.streaming.StreamLogs(close_first, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "init" in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        list(platform.streaming.StreamLogs(iter([]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def exec_init(sandbox_id: str, *argv: str, **fields: object) -> L.ExecStreamRequest:
    return L.ExecStreamRequest(init=L.ExecStreamInit(sandbox_id=sandbox_id, command=argv, **fields))  # type: ignore[arg-type]


def test_tty_exec_with_resize_and_exit_code(platform: Platform) -> None:
    sandbox_id = platform.start("sleep 300")
    script = 'stty size; read answer; stty size; echo "got $answer"; exit 3'
    requests = Requests(
        exec_init(sandbox_id, "sh", "-c", script, tty=True, tty_width=80, tty_height=24)
    )
    began = time.monotonic()
    responses: Queue[L.ExecStreamResponse | None] = Queue()

    def pump() -> None:
        for response in platform.streaming.StreamExec(iter(requests), timeout=60):
            responses.put(response)
        responses.put(None)

    threading.Thread(target=pump, daemon=True).start()
    first = responses.get(timeout=10)
    assert first is not None and first.WhichOneof("response") == "ready"
    assert time.monotonic() - began < 5

    output = b""

    def read_until(marker: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + 15
        while marker not in output:
            try:
                frame = responses.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                raise AssertionError(f"no {marker!r} in {output!r}") from None
            assert frame is not None and frame.WhichOneof("response") == "output", (frame, output)
            output += frame.output.data

    read_until(b"24 80")
    # Frames are applied in order: the PTY has its new size before `read` returns.
    requests.send(L.ExecStreamRequest(resize=L.ExecStreamResize(width=100, height=30)))
    requests.send(L.ExecStreamRequest(stdin=L.ExecStreamData(data=b"yes\n")))
    read_until(b"got yes")
    assert b"30 100" in output
    frames = []
    while (frame := responses.get(timeout=15)) is not None:
        frames.append(frame)
    assert frames[-1].WhichOneof("response") == "exit", frames
    assert frames[-1].exit.exit_code == 3
    requests.half_close()
    platform.stop(sandbox_id)


def test_an_image_built_while_connected_becomes_placeable(platform: Platform) -> None:
    request = S.StartSandboxRequest(
        command="sh", args=["-c", "echo from-new-image"], container_image="fresh:1"
    )
    with pytest.raises(grpc.RpcError) as caught:
        platform.gateway.Start(request, timeout=30)
    assert caught.value.code() != grpc.StatusCode.OK
    # Import a rootfs while the runner stays connected: the same store the runner reads.
    from sandboxd.images import ImageStore

    store = ImageStore(platform.data_dir)
    store.publish("fresh:1", store.resolve("python:3.11"), source="test", link=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            sandbox_id = platform.gateway.Start(request, timeout=30).sandbox_id
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the new image never became placeable"
            time.sleep(0.5)
    platform.wait_ended(sandbox_id)
    assert data_of(read_logs(platform, sandbox_id)) == b"from-new-image\n"
