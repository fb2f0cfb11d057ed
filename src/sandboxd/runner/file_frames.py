"""A file transfer's data frames on the runner's side of an ``Operate`` call.

Why a module of its own: on a gRPC call every frame is an ``OperationUp``/``OperationDown``
message, but on the in-process link (:mod:`sandboxd.controlplane.local_link`, ``sandboxd
up``) data frames may travel as their encoding instead: the bytes a client sent in a
``WriteFile`` frame reach the runner as they arrived (one ``data`` field, checked again
here), and a read's chunks go up encoded once, so the control plane hands them to the
client without parsing or re-encoding. That saves two copies of every byte each way; the
rest of the runner sees only bytes of the file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sandboxd.controlplane.raw_frames import DOWN_DATA, UP_DATA, data_length, encode, payload
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["WriteCut", "data_frames", "send_data"]


class WriteCut(Exception):
    """A file write's stream ended (or went wrong) before its ``end`` frame."""


async def send_data(call: Any, chunk: bytes) -> None:
    """Send ``chunk`` up ``call`` in a data frame: encoded where the call takes encodings."""
    if getattr(call, "encoded_data", False):
        await call.write(encode(UP_DATA, chunk))
    else:
        await call.write(runner_pb2.OperationUp(data=chunk))


async def data_frames(call: Any) -> AsyncIterator[bytes | memoryview]:
    """A file write's bytes, frame by frame, until its ``end``; :class:`WriteCut` if none."""
    while True:
        frame = await call.read()
        if isinstance(frame, bytes):  # an encoded data frame (the in-process link)
            if data_length(frame, DOWN_DATA) is None:
                raise WriteCut("a frame that is not one data field in the middle of the data")
            yield payload(frame)
            continue
        if not isinstance(frame, runner_pb2.OperationDown):  # grpc.aio.EOF
            raise WriteCut("the stream ended before the end of the data")
        kind = frame.WhichOneof("frame")
        if kind == "data":
            yield frame.data
        elif kind == "end":
            return
        else:
            raise WriteCut(f"a {kind!r} frame in the middle of the data")
