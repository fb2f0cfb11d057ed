"""File bytes relayed as the encoded frames they arrived in, instead of parsed and re-encoded.

Why: a file's bytes cross the control plane twice per transfer (client call, runner call),
and parsing a frame into a message, copying its ``bytes`` out, putting them into the next
message and encoding that again costs four copies of every byte, the largest part of a
transfer's cost here. The data fields line up on purpose (``files.proto``): a
``WriteFileRequest`` data frame is byte for byte an ``OperationDown`` data frame (field 6),
and an ``OperationUp`` data frame is a ``ReadFileResponse`` data frame (field 4). So those
two calls take and give raw bytes (:func:`add_services`), and a data frame goes through
untouched once :func:`data_length` has checked that it is exactly one such field of an
acceptable size, which is the one validation this layer owes it: nothing else can ride
along in it (a second field would be read as another oneof member by the receiver).
Every other frame is parsed as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from sandboxd.controlplane.method_table import MethodTable
from sandboxd_protocol import one_field
from sandboxd_protocol.sandboxd_v1 import files_pb2, runner_pb2

DOWN_DATA = one_field.FILE_DATA_DOWN
"""Tag byte of ``WriteFileRequest.data`` and ``OperationDown.data`` (field 6)."""
UP_DATA = one_field.FILE_DATA_UP
"""Tag byte of ``OperationUp.data`` and ``ReadFileResponse.data`` (field 4)."""


def data_length(raw: bytes, tag: int) -> int | None:
    """The payload length when ``raw`` is exactly one ``tag`` field; otherwise None."""
    start = one_field.payload_start(raw, tag)
    return None if start is None else len(raw) - start


def payload(raw: bytes) -> memoryview:
    """The bytes of a frame :func:`data_length` accepted (no copy)."""
    start = one_field.payload_start(raw, raw[0])
    if start is None:
        raise ValueError("not a frame of exactly one data field")
    return memoryview(raw)[start:]


encode = one_field.encode


def _raw(data: bytes) -> bytes:
    return data


def _either(message_type: Any) -> Callable[[Any], bytes]:
    serialize: Callable[[Any], bytes] = message_type.SerializeToString

    def encode_frame(frame: Any) -> bytes:
        return frame if isinstance(frame, bytes) else serialize(frame)

    return encode_frame


def add_services(runner_service: Any, file_service: Any, table: MethodTable) -> None:
    """Register ``RunnerService`` and ``FileService`` with raw bytes where frames are relayed.

    ``Operate`` takes raw ``OperationUp`` frames and gives ``OperationDown`` messages or raw
    frames; ``WriteFile`` takes raw ``WriteFileRequest`` frames; ``ReadFile`` gives
    ``ReadFileResponse`` messages or raw frames. ``Connect`` is as generated.
    """
    runner = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            runner_service.Connect,
            request_deserializer=runner_pb2.RunnerMessage.FromString,
            response_serializer=runner_pb2.ControlMessage.SerializeToString,
        ),
        "Operate": grpc.stream_stream_rpc_method_handler(
            runner_service.Operate,
            request_deserializer=_raw,
            response_serializer=_either(runner_pb2.OperationDown),
        ),
    }
    files = {
        "WriteFile": grpc.stream_unary_rpc_method_handler(
            file_service.WriteFile,
            request_deserializer=_raw,
            response_serializer=files_pb2.WriteFileResponse.SerializeToString,
        ),
        "ReadFile": grpc.unary_stream_rpc_method_handler(
            file_service.ReadFile,
            request_deserializer=files_pb2.ReadFileRequest.FromString,
            response_serializer=_either(files_pb2.ReadFileResponse),
        ),
    }
    table.add_registered_method_handlers("sandboxd.runner.v1.RunnerService", runner)
    table.add_registered_method_handlers("sandboxd.files.v1.FileService", files)
