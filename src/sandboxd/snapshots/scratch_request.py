"""A Start's scratch file system, parsed once at the edge and resolved against the profile.

Protocol-neutral: v1beta2's ``StartSandboxRequest.file_system`` and v1's scratch volumes
both become a :class:`ScratchRequest`; the profile's disk ceiling then bounds its size when
the sandbox is placed (:func:`scratch_volume`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sandboxd.backends.base import check_mount_path
from sandboxd.backends.errors import InvalidSpec
from sandboxd.errors import invalid_argument
from sandboxd_protocol.quantities import QuantityError, memory_bytes
from sandboxd_protocol.sandboxd_v1 import runner_pb2

DEFAULT_SCRATCH_BYTES = 1 << 30
"""The size of a scratch file system whose request names none (the profile's ceiling if less)."""
MIN_SCRATCH_BYTES = 16 << 20


@dataclass(frozen=True)
class ScratchRequest:
    """Where, how big (None: the default) and from which snapshot (""): still unresolved."""

    mount_path: str
    size_bytes: int | None = None
    name: str = "workspace"
    restore_snapshot_id: str = ""
    size_field: str = "file_system.size"
    """The request's name for the size, for an error found at placement (the disk ceiling)."""


def parse_scratch(
    mount_path: str,
    size: str,
    restore_snapshot_id: str,
    *,
    prefix: str,
    name: str = "workspace",
    size_field: str = "",
) -> ScratchRequest:
    """Check the fields; INVALID_ARGUMENT names the bad one (``prefix`` + its name).

    ``size_field`` names the size where it is not beside the mount path (v1: the volume's
    ``scratch.size``, while the mount path is the container's).
    """
    size_field = size_field or f"{prefix}.size"
    try:
        normal = check_mount_path(mount_path, f"{prefix}.mount_path")
    except InvalidSpec as exc:
        raise invalid_argument(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None
    size_bytes = None
    if size:
        try:
            size_bytes = memory_bytes(size)
        except QuantityError as exc:
            raise invalid_argument(size_field, str(exc)) from None
        if size_bytes < MIN_SCRATCH_BYTES:
            least = f"must be at least {MIN_SCRATCH_BYTES >> 20}Mi"
            raise invalid_argument(size_field, least)
    return ScratchRequest(normal, size_bytes, name, restore_snapshot_id.strip(), size_field)


def scratch_volume(request: ScratchRequest, max_disk_bytes: int | None) -> runner_pb2.ScratchVolume:
    """The runner's scratch volume, its size within the profile's disk ceiling."""
    size = request.size_bytes
    if size is None:
        size = min(DEFAULT_SCRATCH_BYTES, max_disk_bytes or DEFAULT_SCRATCH_BYTES)
    elif max_disk_bytes and size > max_disk_bytes:
        raise invalid_argument(
            request.size_field,
            f"{size} bytes is more than the profile's disk ceiling ({max_disk_bytes} bytes)",
        )
    return runner_pb2.ScratchVolume(
        name=request.name,
        mount_path=request.mount_path,
        size_bytes=size,
        restore_snapshot_id=request.restore_snapshot_id,
    )
