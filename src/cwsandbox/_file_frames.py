"""``FileService`` data frames encoded and decoded by hand, the rest by protobuf.

Why: a data frame is one ``bytes`` field, and protobuf's way round costs far more than the
bytes themselves. Building a ``WriteFileRequest`` around 1 MiB and serializing it took
2.1–2.5 ms here (its arena and its output buffer are fresh memory each time, faulted in
page by page), where a two-to-four-byte header joined to the chunk takes 40 µs: at
400 MB/s the client spent most of a write's time on that alone. Reading, parsing a frame
and then taking ``.data`` copies the bytes twice (each access to a ``bytes`` field copies
it); slicing them out of the frame copies them once.

The server does the same on its side (``sandboxd.controlplane.raw_frames``), with the
same helpers (``sandboxd_protocol.one_field``). Only frames that are exactly one data
field take the short way; anything else, including frames a hostile server might bend (a
second field, a truncated length), goes through protobuf and means what protobuf says.
"""

from __future__ import annotations

from sandboxd_protocol import one_field
from sandboxd_protocol.sandboxd_v1 import files_pb2 as fp

__all__ = ["data_frame", "read_frame", "write_frame"]

#: Tag byte of ``WriteFileRequest.data`` (field 6, length-delimited).
WRITE_DATA_TAG = one_field.FILE_DATA_DOWN
#: Tag byte of ``ReadFileResponse.data`` (field 4, length-delimited).
READ_DATA_TAG = one_field.FILE_DATA_UP


def data_frame(chunk: bytes | memoryview) -> bytes:
    """The encoded ``WriteFileRequest(data=chunk)``, byte for byte what protobuf makes."""
    return one_field.encode(WRITE_DATA_TAG, chunk)


def write_frame(frame: fp.WriteFileRequest | bytes) -> bytes:
    """The request serializer: frames from :func:`data_frame` go as they are."""
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


def read_frame(raw: bytes) -> bytes | fp.ReadFileResponse:
    """The response deserializer: a data frame's bytes, or any other frame parsed."""
    start = one_field.payload_start(raw, READ_DATA_TAG)
    if start is None:
        return fp.ReadFileResponse.FromString(raw)
    return raw[start:]
