"""Frames that are exactly one length-delimited protobuf field, encoded and read by hand.

Why here: file bytes cross every hop in such frames (``WriteFileRequest.data``,
``ReadFileResponse.data`` and the runner's ``OperationDown``/``OperationUp.data``), and
protobuf's way round (a message built around the bytes, then encoded; or parsed, then its
field copied out) costs far more than the bytes. The server relays them unparsed
(``sandboxd.controlplane.raw_frames``) and the client builds and reads them itself
(``cwsandbox._file_frames``); both import this one light module.
"""

from __future__ import annotations

__all__ = ["FILE_DATA_DOWN", "FILE_DATA_UP", "encode", "payload_start"]

_MAX_VARINT_BYTES = 10

FILE_DATA_DOWN = 0x32
"""Tag byte of field 6, length-delimited: ``WriteFileRequest.data``, ``OperationDown.data``."""
FILE_DATA_UP = 0x22
"""Tag byte of field 4, length-delimited: ``OperationUp.data``, ``ReadFileResponse.data``."""


def payload_start(raw: bytes, tag: int) -> int | None:
    """Where the payload starts when ``raw`` is exactly one ``tag`` field; otherwise None.

    ``tag`` is the field's key byte (field number << 3 | 2, for fields 1 to 15). Anything
    else (another field, a second field after it, a length past the end or short of it, an
    overlong length) is None: the caller then parses the frame as protobuf does.
    """
    if len(raw) < 2 or raw[0] != tag:
        return None
    length, shift, i = 0, 0, 1
    while True:
        if i >= len(raw) or i > _MAX_VARINT_BYTES:
            return None
        byte = raw[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    return i if i + length == len(raw) else None


def encode(tag: int, data: bytes | memoryview) -> bytes:
    """A one-field frame carrying ``data``: byte for byte what ``Message(field=data)`` encodes."""
    length, head = len(data), bytearray([tag])
    while length >= 0x80:
        head.append((length & 0x7F) | 0x80)
        length >>= 7
    head.append(length)
    return b"".join((head, data))
