"""What the control plane keeps of a snapshot, in words no protocol owns.

v1beta2 and v1 number the same things differently (v1beta2: trigger STOP=1, MANUAL=2; v1:
MANUAL=1, ON_DELETE=2), so the record holds enums of our own and each codec maps them.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

MANAGED_BUCKET = "sandboxd-managed"
"""The ``effective_bucket_name`` of the default destination: ``DATA_DIR/snapshots``."""


class SnapshotStatus(enum.StrEnum):
    """Where a snapshot is in its life."""

    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"


class SnapshotTrigger(enum.StrEnum):
    """Why it was taken: asked for (manual) or as its sandbox stopped."""

    MANUAL = "manual"
    STOP = "stop"


def now() -> datetime:
    """The current time, aware and in UTC (as every stored time)."""
    return datetime.now(UTC)


def new_snapshot_id() -> str:
    """A fresh, unguessable snapshot id (ids are never reused, across organizations too)."""
    return f"fss-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot: its source, state, and where and how big its content is.

    ``bucket`` is the destination's name (``MANAGED_BUCKET`` or an organization's own) and
    ``sha256``/``size_bytes`` describe the stored archive once READY.
    """

    snapshot_id: str
    owner_org: str
    source_sandbox_id: str
    volume_name: str
    trigger: SnapshotTrigger
    status: SnapshotStatus = SnapshotStatus.CREATING
    status_reason: str = ""
    idempotency_key: str = ""
    bucket: str = MANAGED_BUCKET
    size_bytes: int = 0
    sha256: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True)
class BucketConfig:
    """An organization's snapshot destination; an empty ``bucket_name`` is the managed one."""

    bucket_name: str = ""
    region: str = ""

    @property
    def effective_bucket(self) -> str:
        """The name snapshots record as their bucket."""
        return self.bucket_name or MANAGED_BUCKET
