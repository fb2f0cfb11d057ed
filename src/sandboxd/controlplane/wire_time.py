"""Times on the wire: one conversion from ``datetime`` to ``google.protobuf.Timestamp``.

Why one place: every service (v1beta2, v1, admin, snapshots) answers with optional
timestamps (a sandbox not started yet, a key not revoked), and "unset" must read the same.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

__all__ = ["timestamp_or_none"]


def timestamp_or_none(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """``value`` as a Timestamp, or None (the field stays unset) when there is none."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp
