"""Data frames relayed encoded: exactly one data field passes, nothing can ride along."""

from __future__ import annotations

import pytest

from sandboxd.controlplane.raw_frames import DOWN_DATA, UP_DATA, data_length, encode, payload
from sandboxd_protocol.sandboxd_v1 import files_pb2, runner_pb2


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20, (4 << 20) + 1])
def test_a_client_data_frame_is_an_operation_down_data_frame(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = files_pb2.WriteFileRequest(data=data).SerializeToString()
    assert data_length(raw, DOWN_DATA) == size
    assert runner_pb2.OperationDown.FromString(raw).data == data
    assert bytes(payload(raw)) == data
    assert encode(DOWN_DATA, data) == raw


def test_a_runner_data_frame_is_a_read_file_response_data_frame() -> None:
    raw = runner_pb2.OperationUp(data=b"abc").SerializeToString()
    assert data_length(raw, UP_DATA) == 3
    assert files_pb2.ReadFileResponse.FromString(raw).data == b"abc"


def test_anything_else_is_refused() -> None:
    data = runner_pb2.OperationDown(data=b"abc").SerializeToString()
    smuggled = (
        data
        + runner_pb2.OperationDown(
            exec=runner_pb2.OpenExec(sandbox_id="x", command=["sh"])
        ).SerializeToString()
    )
    assert data_length(smuggled, DOWN_DATA) is None  # a second field riding along
    assert data_length(data[:-1], DOWN_DATA) is None  # truncated payload
    assert data_length(b"\x32\xff\xff\xff", DOWN_DATA) is None  # truncated length
    assert data_length(b"\x32" + b"\xff" * 11 + b"\x01", DOWN_DATA) is None  # overlong varint
    assert data_length(b"", DOWN_DATA) is None
    assert data_length(b"\x32", DOWN_DATA) is None
    init = files_pb2.WriteFileRequest(init=files_pb2.WriteFileInit(path="/x"))
    assert data_length(init.SerializeToString(), DOWN_DATA) is None  # another field
    assert data_length(data, UP_DATA) is None  # the other direction's tag


@pytest.mark.parametrize(
    "raw", [b"\x32\x05ab", b"\x32\x01ab", b"\x32\xff\xff\xff", b"\x12\x01a" + b"\x32\x00"]
)
def test_the_payload_of_a_frame_that_is_not_one_data_field_is_refused(raw: bytes) -> None:
    """Callers check with data_length first; one that did not gets an error, not bytes."""
    with pytest.raises(ValueError, match="exactly one data field"):
        payload(raw)
