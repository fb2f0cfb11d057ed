"""``sandboxd.files.v1.FileService`` attacked on a real ``sandboxd up``.

Raw gRPC, frames crafted by hand: a missing or repeated ``init``, data frames over the
4 MiB cap, bytes that do not decode, relative paths, another organization's sandbox (it must
answer exactly like a missing one), and a reader that stalls in the middle of a large file
(flow control must hold the server's memory, not the file). The client's own use of the
service is ``test_client_features.py``'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cwsandbox import Sandbox
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.sandboxd_v1 import files_pb2 as fp
from tests.e2e.conftest import Platform
from tests.support.processes import admin_call, keyed_channel

MIB = 1 << 20
MISSING = "sb-0123456789a00000000"


@pytest.fixture
def sandbox(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", platform.api_key)
    with Sandbox.run() as sb:
        sb.wait()
        yield sb


def _write(channel: grpc.Channel, frames: list[bytes]) -> grpc.RpcError | fp.WriteFileResponse:
    rpc = channel.stream_unary(
        "/sandboxd.files.v1.FileService/WriteFile",
        request_serializer=lambda raw: raw,
        response_deserializer=fp.WriteFileResponse.FromString,
    )
    try:
        return rpc(iter(frames), timeout=60)  # type: ignore[no-any-return]
    except grpc.RpcError as error:
        return error


def _init(sandbox_id: str, path: str) -> bytes:
    return fp.WriteFileRequest(
        init=fp.WriteFileInit(sandbox_id=sandbox_id, path=path)
    ).SerializeToString()


def _data(data: bytes) -> bytes:
    return fp.WriteFileRequest(data=data).SerializeToString()


def _code(answer: object) -> grpc.StatusCode | None:
    return answer.code() if isinstance(answer, grpc.RpcError) else None  # type: ignore[attr-defined]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_malformed_write_streams_are_refused(platform: Platform, sandbox: Sandbox) -> None:
    sid = sandbox.sandbox_id
    assert sid is not None
    bad = grpc.StatusCode.INVALID_ARGUMENT
    with keyed_channel(platform.target, platform.api_key) as channel:
        assert _code(_write(channel, [])) is bad  # no init at all
        assert _code(_write(channel, [_data(b"x")])) is bad  # data before init
        assert _code(_write(channel, [_init(sid, "/tmp/a"), _init(sid, "/tmp/b")])) is bad
        assert _code(_write(channel, [_init(sid, "relative/path"), _data(b"x")])) is bad
        assert _code(_write(channel, [_init(sid, "/tmp/nul\x00")])) is bad
        # Over the 4 MiB frame cap: refused, not buffered.
        assert _code(_write(channel, [_init(sid, "/tmp/big"), _data(b"x" * (4 * MIB + 1))])) is bad
        # Bytes that are no WriteFileRequest (a truncated length prefix).
        assert _code(_write(channel, [_init(sid, "/tmp/c"), b"\x32\xff\xff\xff"])) is bad
        # Still serving, and a good write works.
        answer = _write(channel, [_init(sid, "/tmp/ok"), _data(b"hello"), _data(b" there")])
        assert isinstance(answer, fp.WriteFileResponse) and answer.size == 11
    assert sandbox.read_file("/tmp/ok").result() == b"hello there"


def test_another_organizations_sandbox_is_like_a_missing_one(
    platform: Platform, sandbox: Sandbox
) -> None:
    key = admin_call(
        platform.target,
        platform.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization="files-other", role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    ).secret
    sid = sandbox.sandbox_id
    assert sid is not None
    with keyed_channel(platform.target, key) as channel:
        theirs = _write(channel, [_init(sid, "/tmp/x"), _data(b"pwned")])
        missing = _write(channel, [_init(MISSING, "/tmp/x"), _data(b"pwned")])
        assert _code(theirs) is _code(missing) is grpc.StatusCode.NOT_FOUND
        assert theirs.details().replace(sid, MISSING) == missing.details()  # type: ignore[union-attr]
        read = channel.unary_stream(
            "/sandboxd.files.v1.FileService/ReadFile",
            request_serializer=fp.ReadFileRequest.SerializeToString,
            response_deserializer=fp.ReadFileResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(read(fp.ReadFileRequest(sandbox_id=sid, path="/etc/hostname"), timeout=30))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with pytest.raises(Exception):  # noqa: B017 - any refusal: the file is not there
        sandbox.read_file("/tmp/x").result()


def test_a_stalled_reader_holds_the_server_to_a_few_frames(
    platform: Platform, sandbox: Sandbox
) -> None:
    """Flow control end to end: the server reads ahead only what the pipes and HTTP/2 hold."""
    size = 256 * MIB
    sandbox.exec(["sh", "-c", f"head -c {size} /dev/zero > /tmp/big"]).result()
    server = platform.proc.popen.pid
    before = _rss_kib(server)
    with keyed_channel(platform.target, platform.api_key) as channel:
        read = channel.unary_stream(
            "/sandboxd.files.v1.FileService/ReadFile",
            request_serializer=fp.ReadFileRequest.SerializeToString,
            response_deserializer=fp.ReadFileResponse.FromString,
        )
        frames = read(fp.ReadFileRequest(sandbox_id=sandbox.sandbox_id, path="/tmp/big"))
        first = next(frames)
        assert first.info.size == size
        time.sleep(3)  # a reader that stopped reading
        stalled = _rss_kib(server)
        received = sum(len(frame.data) for frame in frames)
    assert received == size
    assert (stalled - before) / 1024 < 64, (before, stalled)
