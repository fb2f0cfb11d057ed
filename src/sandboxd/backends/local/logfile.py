r"""The on-disk log of a sandbox's main process: timestamped chunks, binary safe.

Why this format: the agent writes each chunk it reads from the main process's stdout or
stderr as one ``write(2)`` of ``"<unix-time> <o|e> <length>\n" + data + "\n"``, so a reader
never needs a lock: a record is either complete or is the tail still being written, and the
reader simply stops before an incomplete record and resumes from that offset later. Keeping
the chunk boundaries and times lets the runner serve ``timestamps``, ``since_time`` and
``tail_lines`` after the sandbox has stopped (the file outlives the sandbox until destroy).
Standard library only (the writer runs in the agent).
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

STREAM_CODES = {"stdout": b"o", "stderr": b"e"}
_CODE_STREAMS = {b"o": "stdout", b"e": "stderr"}
TRUNCATION_NOTICE = b"[sandboxd: log limit reached, further output dropped]\n"


class Record(NamedTuple):
    """One chunk of main-process output as the agent read it."""

    timestamp: float
    stream: str
    data: bytes


def encode_record(stream: str, data: bytes, timestamp: float | None = None) -> bytes:
    """One record, ready for a single ``write(2)``."""
    ts = time.time() if timestamp is None else timestamp
    return b"%.6f %s %d\n" % (ts, STREAM_CODES[stream], len(data)) + data + b"\n"


class LogWriter:
    """Appends records to an open file descriptor, up to ``limit`` bytes of output."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.written = os.fstat(fd).st_size
        self.truncated = False

    def write(self, stream: str, data: bytes) -> None:
        """Append one chunk (dropped, with a single notice, once the limit is reached)."""
        if self.truncated or not data:
            return
        if self.written + len(data) > self.limit:
            self.truncated = True
            data = TRUNCATION_NOTICE
            stream = "stderr"
        record = encode_record(stream, data)
        try:
            os.write(self.fd, record)
        except OSError:
            self.truncated = True
            return
        self.written += len(record)


def parse(buf: bytes) -> tuple[list[Record], int]:
    """Parse complete records from ``buf``; returns them and the bytes consumed."""
    records: list[Record] = []
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            break
        try:
            ts_raw, code, size_raw = buf[pos:nl].split(b" ")
            size = int(size_raw)
            timestamp = float(ts_raw)
            stream = _CODE_STREAMS[code]
        except (ValueError, KeyError):
            break  # corrupt tail: stop here rather than guess
        end = nl + 1 + size
        if end + 1 > len(buf):
            break
        records.append(Record(timestamp, stream, buf[nl + 1 : end]))
        pos = end + 1
    return records, pos


def read_records(path: str, offset: int = 0) -> tuple[list[Record], int]:
    """Read complete records from ``path`` starting at byte ``offset``; returns the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            buf = fh.read()
    except FileNotFoundError:
        return [], offset
    records, used = parse(buf)
    return records, offset + used
