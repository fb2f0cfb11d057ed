"""A file transfer's data frames on the runner's side, as messages (gRPC) and as encodings.

The call here is a scripted stand-in (a list of frames to read, a list of what was written):
what is tested is how the runner reads and writes frames, not a transport; both links run
end to end in ``tests/e2e/test_runner_links_e2e.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc.aio
import pytest

from sandboxd.controlplane.raw_frames import DOWN_DATA, UP_DATA, data_length, encode, payload
from sandboxd.runner.file_frames import WriteCut, data_frames, send_data
from sandboxd_protocol.sandboxd_v1 import runner_pb2

EOF_: Any = grpc.aio.EOF  # type: ignore[attr-defined]


class ScriptedCall:
    """Reads return ``frames`` in order, then EOF; writes are kept."""

    def __init__(self, frames: list[Any], encoded: bool = False) -> None:
        self._frames = list(frames)
        self.written: list[Any] = []
        self.encoded_data = encoded

    async def read(self) -> Any:
        return self._frames.pop(0) if self._frames else EOF_

    async def write(self, frame: Any) -> None:
        self.written.append(frame)


def collect(call: ScriptedCall) -> list[bytes]:
    async def run() -> list[bytes]:
        return [bytes(chunk) async for chunk in data_frames(call)]

    return asyncio.run(run())


END = runner_pb2.OperationDown(end=runner_pb2.DataEnd())


def test_messages_and_encodings_give_the_same_bytes() -> None:
    as_messages = [runner_pb2.OperationDown(data=b"abc"), runner_pb2.OperationDown(data=b"de"), END]
    as_encodings = [encode(DOWN_DATA, b"abc"), encode(DOWN_DATA, b"de"), END]
    assert (
        collect(ScriptedCall(as_messages))
        == collect(ScriptedCall(as_encodings))
        == [
            b"abc",
            b"de",
        ]
    )


@pytest.mark.parametrize(
    "bad",
    [
        # a second field smuggled after the data (would be read as another oneof member)
        encode(DOWN_DATA, b"abc")
        + runner_pb2.OperationDown(end=runner_pb2.DataEnd()).SerializeToString(),
        encode(UP_DATA, b"abc"),  # the wrong field
        b"\x32\xff\xff\xff",  # a length that runs past the frame
        b"",
    ],
)
def test_an_encoding_that_is_not_one_data_field_cuts_the_write(bad: bytes) -> None:
    with pytest.raises(WriteCut):
        collect(ScriptedCall([encode(DOWN_DATA, b"ok"), bad, END]))


def test_a_stream_that_ends_before_its_end_frame_cuts_the_write() -> None:
    with pytest.raises(WriteCut):
        collect(ScriptedCall([encode(DOWN_DATA, b"ok")]))


@pytest.mark.parametrize("encoded", [False, True])
def test_read_chunks_go_up_as_the_call_takes_them(encoded: bool) -> None:
    call = ScriptedCall([], encoded=encoded)
    asyncio.run(send_data(call, b"x" * 70_000))
    (frame,) = call.written
    if encoded:
        assert data_length(frame, UP_DATA) == 70_000 and payload(frame) == b"x" * 70_000
        assert runner_pb2.OperationUp.FromString(frame).data == b"x" * 70_000
    else:
        assert frame == runner_pb2.OperationUp(data=b"x" * 70_000)
