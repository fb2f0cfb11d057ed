"""Execs and files through ``sandboxd up`` over each runner link, by the same tests.

``sandboxd up`` connects its runner through the control plane's in-process link by default
(:mod:`sandboxd.controlplane.local_link`) and over its listening port with ``--runner-link
grpc``, as a remote runner would. Real platform, real sandboxes, our client over real gRPC;
each test runs on both. What a user notices on either: exec output, stdin and exit codes; a
command killed at its timeout; files arriving whole (unary and streamed, checked by digest),
and ``read_file`` refusing a file larger than it holds before reading it;
another organization's sandbox answering exactly like a missing one; a reader that stalls
holding the server to a few frames; and a platform killed with SIGKILL that re-adopts its
sandbox when it comes back.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cwsandbox import Sandbox, SandboxCommandTimeoutError, SandboxFileError
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.sandboxd_v1 import files_pb2 as fp
from tests.support.faults import wait_until
from tests.support.processes import Up, admin_call, all_in_one, keyed_channel

LINKS = ["in-process", "grpc"]
MIB = 1 << 20
MISSING = "sb-0123456789a00000000"
ECHO_LINES = (
    "import sys\nfor line in iter(sys.stdin.readline, ''):\n    sys.stdout.write('got ' + line)"
)


@pytest.fixture(scope="module", params=LINKS)
def linked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Up]:
    """A ``sandboxd up`` whose runner uses the link named by the parameter."""
    with all_in_one(tmp_path_factory.mktemp("links"), "--runner-link", request.param) as up:
        yield up


@pytest.fixture
def sandbox(linked: Up, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", linked.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", linked.api_key)
    with Sandbox.run() as sb:
        sb.wait()
        yield sb


def _target(up: Up) -> str:
    return up.base_url.split("://", 1)[1]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_exec_output_stdin_exit_and_timeout(sandbox: Sandbox) -> None:
    result = sandbox.exec(["sh", "-c", "echo out; echo err >&2; exit 7"]).result()
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    proc = sandbox.exec(["python3", "-u", "-c", ECHO_LINES], stdin=True)
    assert proc.stdin is not None
    chunks = iter(proc.stdout)
    for word in ("alpha", "beta"):
        proc.stdin.writeline(word).result()
        assert next(chunks) == f"got {word}\n"  # answered before stdin is closed
    proc.stdin.close().result()
    assert proc.wait() == 0
    big = sandbox.exec(["seq", "1", "100000"]).result().stdout
    assert big == "".join(f"{i}\n" for i in range(1, 100001))
    with pytest.raises(SandboxCommandTimeoutError):
        sandbox.exec(["sh", "-c", "exec sleep 321"], timeout_seconds=1).result()
    wait_until(
        "the timed-out command was killed",
        lambda: "sleep 321" not in sandbox.exec(["ps", "-eo", "args"]).result().stdout,
        timeout=15,
    )


def test_files_arrive_whole_unary_and_streamed(sandbox: Sandbox) -> None:
    small = os.urandom(5 * MIB + 7)
    sandbox.write_file("/tmp/small", small).result()
    assert sandbox.read_file("/tmp/small").result() == small
    block = os.urandom(MIB)
    digest = hashlib.sha256()
    for n in range(48):
        digest.update(block[n:] + block[:n])
    frames = (block[n:] + block[:n] for n in range(48))
    sandbox.write_file_streaming("/tmp/big", frames).result()
    remote = sandbox.exec(["sha256sum", "/tmp/big"]).result().stdout.split()[0]
    assert remote == digest.hexdigest()
    back = hashlib.sha256()
    for piece in sandbox.read_file_streaming("/tmp/big"):
        back.update(piece)
    assert back.hexdigest() == digest.hexdigest()
    with pytest.raises(Exception, match="/tmp/nope"):  # the client's not-found error
        sandbox.read_file("/tmp/nope").result()


def test_read_file_refuses_what_it_cannot_hold_before_reading_it(
    linked: Up, sandbox: Sandbox
) -> None:
    """``read_file`` learns the size from the server's answer and refuses past 256 MiB."""
    sandbox.exec(["truncate", "-s", "300M", "/tmp/sparse"]).result()
    server = linked.proc.popen.pid
    before = _rss_kib(server)
    with pytest.raises(SandboxFileError) as refused:
        sandbox.read_file("/tmp/sparse").result()
    assert refused.value.reason == "CWSANDBOX_FILE_TOO_LARGE"
    assert "read_file_streaming" in str(refused.value)
    assert (_rss_kib(server) - before) / 1024 < 64  # refused, not read into memory


def test_another_organizations_sandbox_is_like_a_missing_one(linked: Up, sandbox: Sandbox) -> None:
    key = admin_call(
        _target(linked),
        linked.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization="links-other", role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    ).secret
    sid = sandbox.sandbox_id
    assert sid is not None
    with keyed_channel(_target(linked), key) as channel:
        read = channel.unary_stream(
            "/sandboxd.files.v1.FileService/ReadFile",
            request_serializer=fp.ReadFileRequest.SerializeToString,
            response_deserializer=fp.ReadFileResponse.FromString,
        )
        answers = []
        for target in (sid, MISSING):
            with pytest.raises(grpc.RpcError) as caught:
                list(read(fp.ReadFileRequest(sandbox_id=target, path="/etc/hostname"), timeout=30))
            error = caught.value
            answers.append((error.code(), error.details().replace(sid, MISSING)))  # type: ignore[attr-defined]
        assert answers[0] == answers[1]
        assert answers[0][0] is grpc.StatusCode.NOT_FOUND


def test_a_stalled_reader_holds_the_server_to_a_few_frames(linked: Up, sandbox: Sandbox) -> None:
    size = 256 * MIB
    sandbox.exec(["sh", "-c", f"head -c {size} /dev/zero > /tmp/zeros"]).result()
    server = linked.proc.popen.pid
    before = _rss_kib(server)
    with keyed_channel(_target(linked), linked.api_key) as channel:
        read = channel.unary_stream(
            "/sandboxd.files.v1.FileService/ReadFile",
            request_serializer=fp.ReadFileRequest.SerializeToString,
            response_deserializer=fp.ReadFileResponse.FromString,
        )
        frames = read(fp.ReadFileRequest(sandbox_id=sandbox.sandbox_id, path="/tmp/zeros"))
        assert next(frames).info.size == size
        time.sleep(3)  # a reader that stopped reading (what is measured is the server's hold)
        stalled = _rss_kib(server)
        received = sum(len(frame.data) for frame in frames)
    assert received == size
    assert (stalled - before) / 1024 < 64, (before, stalled)


@pytest.mark.parametrize("link", LINKS)
def test_a_killed_platform_readopts_its_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link: str
) -> None:
    data = tmp_path / "up"
    with all_in_one(data, "--runner-link", link) as first:
        monkeypatch.setenv("CWSANDBOX_BASE_URL", first.base_url)
        monkeypatch.setenv("CWSANDBOX_API_KEY", first.api_key)
        sb = Sandbox.run()
        sb.wait()
        sb.write_file("/tmp/kept", b"still here").result()
        sid = sb.sandbox_id
        assert sid is not None
        first.proc.kill()  # SIGKILL: no goodbye, the sandbox outlives the platform
    with all_in_one(data, "--runner-link", link) as second:
        monkeypatch.setenv("CWSANDBOX_BASE_URL", second.base_url)
        back = Sandbox.from_id(sid).result()
        try:
            got = wait_until(
                "the re-adopted sandbox answers",
                lambda: _cat(back, "/tmp/kept"),
                timeout=60,
                interval=0.5,
            )
            assert got == "still here"
        finally:
            back.stop(graceful_shutdown_seconds=0).result()


def _cat(sandbox: Sandbox, path: str) -> str | None:
    try:
        result = sandbox.exec(["cat", path]).result()
    except Exception:  # the runner may still be re-adopting it: ask again
        return None
    return result.stdout if result.returncode == 0 else None
