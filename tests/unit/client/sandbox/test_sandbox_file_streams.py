"""Large and streamed files: fallbacks, ``read_file_streaming``, ``write_file_streaming``.

Runs against the in-process stand-in gateway, whose exec emulation plays the shell scripts
the client runs in a real sandbox (client-side unit tests only; e2e runs the real ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from cwsandbox import Sandbox, SandboxFileError, SandboxNotFoundError
from cwsandbox._exec_stream import ExecChannel
from tests.unit.client.sandbox.exec_emulation import FileSystem, emulate
from tests.unit.client.sandbox.gateway_standin import Gateway, failure


@pytest.fixture
def fs(gateway: Gateway) -> FileSystem:
    return emulate(gateway.servicer)


def stdin_frame_sizes(gateway: Gateway) -> list[int]:
    return [
        len(r.stdin.data)
        for r in gateway.servicer.requests("StreamExec")
        if r.WhichOneof("request") == "stdin"
    ]


def test_write_over_the_unary_cap_streams_without_trying_unary(
    gateway: Gateway, fs: FileSystem
) -> None:
    sb = Sandbox.run()
    sb.wait()
    sb._life.file_op_cap = 100_000  # as if the cap were this small (32 MiB in real life)
    data = os.urandom(300_000)
    sb.write_file("/tmp/big", data).result()
    assert gateway.servicer.requests("AddFile") == []
    assert gateway.servicer.boxes[sb.sandbox_id or ""].files["/tmp/big"] == data
    assert max(stdin_frame_sizes(gateway)) == 64 * 1024
    assert fs.argvs[0][3:] == ["cwsandbox-write-file", "/tmp/big"]


def test_file_too_large_teaches_the_cap_and_falls_back(gateway: Gateway, fs: FileSystem) -> None:
    gateway.servicer.max_file_bytes = 1000
    sb = Sandbox.run()
    sb.write_file("/tmp/a", b"x" * 5000).result()  # refused by unary, then streamed
    sb.write_file("/tmp/b", b"y" * 2000).result()  # known too large: streamed at once
    assert len(gateway.servicer.requests("AddFile")) == 1
    assert sb._life.file_op_cap == 1000
    files = gateway.servicer.boxes[sb.sandbox_id or ""].files
    assert files["/tmp/a"] == b"x" * 5000 and files["/tmp/b"] == b"y" * 2000
    # Reads: FILE_TOO_LARGE with size_bytes, streamed back whole.
    assert sb.read_file("/tmp/a").result() == b"x" * 5000
    assert [a[3] for a in fs.argvs] == [
        "cwsandbox-write-file",
        "cwsandbox-write-file",
        "cwsandbox-read-file",
    ]


def test_huge_read_is_refused_with_a_pointer_to_streaming(gateway: Gateway, fs: FileSystem) -> None:
    sb = Sandbox.run()
    sb.wait()
    reply = failure(
        grpc.StatusCode.FAILED_PRECONDITION,
        "too large",
        "CWSANDBOX_FILE_TOO_LARGE",
        size_bytes=str(300 * 1024 * 1024),
        max_size_bytes=str(32 * 1024 * 1024),
    )
    gateway.servicer.fail("RetrieveFile", reply)
    with pytest.raises(SandboxFileError, match="read_file_streaming") as info:
        sb.read_file("/data/huge").result()
    assert info.value.reason == "CWSANDBOX_FILE_TOO_LARGE"
    assert info.value.filepath == "/data/huge"
    assert fs.argvs == []


def test_resource_exhausted_read_falls_back(gateway: Gateway, fs: FileSystem) -> None:
    sb = Sandbox.run()
    sb.write_file("/tmp/f", b"abc").result()
    gateway.servicer.fail("RetrieveFile", failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "big"))
    assert sb.read_file("/tmp/f").result() == b"abc"


def test_read_file_streaming_yields_chunks_in_order(gateway: Gateway, fs: FileSystem) -> None:
    sb = Sandbox.run()
    data = os.urandom(1_000_000)
    sb.write_file("/tmp/r", data).result()
    chunks = list(sb.read_file_streaming("/tmp/r"))
    assert len(chunks) > 1 and b"".join(chunks) == data
    assert fs.argvs[-1][:2] == ["/bin/sh", "-c"] and fs.argvs[-1][3:] == [
        "cwsandbox-read-file",
        "/tmp/r",
    ]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing", "CWSANDBOX_FILE_NOT_FOUND"),
        ("/etc", "CWSANDBOX_FILE_IS_DIRECTORY"),
        ("/secret", "CWSANDBOX_FILE_PERMISSION_DENIED"),
    ],
)
def test_streaming_file_errors(gateway: Gateway, fs: FileSystem, path: str, reason: str) -> None:
    fs.unreadable.add("/secret")
    sb = Sandbox.run()
    with pytest.raises(SandboxFileError) as info:
        list(sb.read_file_streaming(path))
    assert (info.value.reason, info.value.filepath) == (reason, path)
    assert not isinstance(info.value, SandboxNotFoundError)
    if path != "/missing":
        with pytest.raises(SandboxFileError) as info:
            sb.write_file_streaming(path, b"data").result()
        assert info.value.reason == reason


def test_short_read_is_truncation(gateway: Gateway, fs: FileSystem) -> None:
    fs.short_read = 10
    sb = Sandbox.run()
    sb.write_file("/tmp/t", b"z" * 1000).result()
    with pytest.raises(SandboxFileError, match="got 990 of 1000") as info:
        list(sb.read_file_streaming("/tmp/t"))
    assert info.value.reason == "CWSANDBOX_FILE_TRUNCATED"


def test_short_write_is_truncation(gateway: Gateway, fs: FileSystem) -> None:
    fs.short_write = 1
    with pytest.raises(SandboxFileError, match="wrote 99 of 100") as info:
        Sandbox.run().write_file_streaming("/tmp/w", b"q" * 100).result()
    assert info.value.reason == "CWSANDBOX_FILE_TRUNCATED"


def test_closing_the_reader_stops_the_transfer(gateway: Gateway, fs: FileSystem) -> None:
    sb = Sandbox.run()
    sb.write_file("/tmp/r", os.urandom(2_000_000)).result()
    with contextlib.closing(sb.read_file_streaming("/tmp/r")) as reader:
        first = next(iter(reader))
    assert len(first) == 64 * 1024
    assert list(reader) == []


def source_kinds(data: bytes) -> Iterator[object]:
    yield data
    yield io.BytesIO(data)
    yield (data[i : i + 7777] for i in range(0, len(data), 7777))
    yield [bytearray(data[:10]), memoryview(data[10:])]

    async def agen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 50_000):
            yield data[i : i + 50_000]

    yield agen()


def test_write_file_streaming_sources(gateway: Gateway, fs: FileSystem) -> None:
    sb = Sandbox.run()
    data = os.urandom(3 * 1024 * 1024 + 5)
    for n, source in enumerate(source_kinds(data)):
        sb.write_file_streaming(f"/tmp/s{n}", source).result()  # type: ignore[arg-type]
        assert gateway.servicer.boxes[sb.sandbox_id or ""].files[f"/tmp/s{n}"] == data, n
    assert max(stdin_frame_sizes(gateway)) <= 64 * 1024


def test_write_file_streaming_bad_sources(gateway: Gateway, fs: FileSystem) -> None:
    sb = Sandbox.run()
    with pytest.raises(TypeError, match="not str"):
        sb.write_file_streaming("/tmp/x", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sb.write_file_streaming("/tmp/x", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="chunks must be bytes"):
        sb.write_file_streaming("/tmp/x", iter([b"ok", "bad"])).result()  # type: ignore[list-item]
    with pytest.raises(TypeError, match="chunks must be bytes"):
        sb.write_file_streaming("/tmp/x", io.StringIO("text")).result()  # type: ignore[arg-type]

    def failing() -> Iterator[bytes]:
        yield b"part"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        sb.write_file_streaming("/tmp/x", failing()).result()


def test_write_succeeds_when_the_exit_outruns_the_sending_task(
    gateway: Gateway, fs: FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer may exit before the task that half-closed its input has returned.

    Seen in CI under load as "wrote 41943040 of -1 bytes": the whole file arrived, but the
    count of bytes sent was read before the sending task finished. Here that task is held up
    after the half-close so the exit always arrives first.
    """
    original = ExecChannel.close_stdin

    async def slow_close(self: ExecChannel) -> None:
        await original(self)
        await asyncio.sleep(0.5)

    monkeypatch.setattr(ExecChannel, "close_stdin", slow_close)
    sb = Sandbox.run()
    sb.wait()
    sb._life.file_op_cap = 1000
    data = os.urandom(200_000)
    sb.write_file("/tmp/raced", data).result()
    assert gateway.servicer.boxes[sb.sandbox_id or ""].files["/tmp/raced"] == data
