"""The client's hand-made ``FileService`` data frames (``cwsandbox/_file_frames.py``).

What a user would notice if they were wrong: a corrupted or truncated file, or a frame a
server bent on purpose read as file bytes. Each encoding is checked against protobuf's own.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from cwsandbox._file_frames import data_frame, read_frame, write_frame
from sandboxd_protocol.sandboxd_v1 import files_pb2 as fp

SIZES = [0, 1, 127, 128, 16383, 16384, 1 << 20, (4 << 20) - 1, 4 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_a_data_frame_is_byte_for_byte_what_protobuf_encodes(size: int) -> None:
    chunk = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
    assert data_frame(chunk) == fp.WriteFileRequest(data=chunk).SerializeToString()
    assert data_frame(memoryview(chunk)) == data_frame(chunk)
    assert fp.WriteFileRequest.FromString(data_frame(chunk)).data == chunk


def test_the_serializer_passes_frames_through_and_encodes_messages() -> None:
    init = fp.WriteFileRequest(init=fp.WriteFileInit(sandbox_id="sb", path="/tmp/x"))
    assert write_frame(init) == init.SerializeToString()
    assert write_frame(data_frame(b"abc")) == data_frame(b"abc")


@pytest.mark.parametrize("size", SIZES)
def test_a_read_data_frame_gives_its_bytes(size: int) -> None:
    chunk = b"\xff\x00" * (size // 2) + b"z" * (size % 2)
    got = read_frame(fp.ReadFileResponse(data=chunk).SerializeToString())
    assert isinstance(got, bytes) and got == chunk


def test_an_info_frame_is_parsed() -> None:
    raw = fp.ReadFileResponse(info=fp.ReadFileInfo(size=42)).SerializeToString()
    got = read_frame(raw)
    assert isinstance(got, fp.ReadFileResponse) and got.info.size == 42


def test_bent_frames_mean_what_protobuf_says() -> None:
    """A hostile server's frames: never file bytes unless protobuf reads them so."""
    data = fp.ReadFileResponse(data=b"payload").SerializeToString()
    info = fp.ReadFileResponse(info=fp.ReadFileInfo(size=7)).SerializeToString()
    # Data then info: the oneof's last member wins, so this is an info frame.
    got = read_frame(data + info)
    assert isinstance(got, fp.ReadFileResponse) and got.WhichOneof("frame") == "info"
    # Two data fields: protobuf keeps the last; so does the parsed path.
    two = read_frame(data + fp.ReadFileResponse(data=b"second").SerializeToString())
    assert isinstance(two, fp.ReadFileResponse) and two.data == b"second"
    # A length that claims more than the frame holds is a decode error, not short bytes.
    with pytest.raises(DecodeError):
        read_frame(b"\x22\x10abc")
    # An overlong varint is refused the same way.
    with pytest.raises(DecodeError):
        read_frame(b"\x22" + b"\xff" * 11 + b"\x01")
