"""What the control plane keeps of a persistent volume, in words no protocol owns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime


class VolumeState(enum.StrEnum):
    """Where a volume is: being checked on its runner, usable, unusable, going away."""

    VALIDATING = "validating"
    READY = "ready"
    ERROR = "error"
    DELETING = "deleting"


def now() -> datetime:
    """The current time, aware and in UTC (as every stored time)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class VolumeRecord:
    """One registered volume of one organization (ids are names, unique per organization).

    ``claim_name`` is the directory on ``runner_id`` (``namespace`` is kept and echoed, as
    the v1 API has it, but a local runner has no namespaces); ``sub_path`` is the part of
    it the volume is. ``request_digest`` tells a replayed create from another one that
    reuses its request id.
    """

    owner_org: str
    volume_id: str
    runner_id: str
    namespace: str
    claim_name: str
    sub_path: str = ""
    read_only: bool = False
    description: str = ""
    state: VolumeState = VolumeState.VALIDATING
    state_reason: str = ""
    request_id: str = ""
    request_digest: str = ""
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    validated_at: datetime | None = None


@dataclass(frozen=True)
class VolumeMountPlan:
    """A volume a sandbox binds, resolved at create: where it is and where it goes.

    ``sub_path`` is the volume's own joined with the mount's; ``read_only`` is the mount's
    or the volume's.
    """

    volume_id: str
    name: str
    organization: str
    claim_name: str
    sub_path: str
    mount_path: str
    read_only: bool


@dataclass(frozen=True)
class MountWish:
    """A registered volume a create asks for, as parsed (``sub_path_field`` names its field)."""

    name: str
    volume_id: str
    mount_path: str
    read_only: bool
    sub_path: str
    sub_path_field: str
