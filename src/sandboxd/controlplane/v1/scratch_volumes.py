"""A v1 spec's scratch volumes, parsed into the protocol-neutral :class:`ScratchRequest`.

v1 carries a scratch file system as two halves (protocol/v1.md §4.2): a
``SandboxSpec.volumes[]`` entry ``{name, scratch{size, medium, restore_from_snapshot_id}}``
and a ``VolumeMount{volume, mount_path}`` on the container naming it. Both halves must agree
before anything is placed, and every mismatch is refused with INVALID_ARGUMENT naming the
v1 field (``spec.volumes[1].name``, ``spec.containers[0].volume_mounts[0].mount_path``).

What the runner offers: one scratch file system per sandbox (the backend mounts one), so a
second scratch volume is INVALID_ARGUMENT naming ``spec.volumes[1]``; memory-backed scratch,
read-only and ``sub_path`` scratch mounts answer UNIMPLEMENTED naming their field.
Registered volumes (``volume_id``) and their mounts are :mod:`.volume_mounts`' part.
Volume names become file names on the runner and in snapshot records, so they are DNS
labels: no ``/``, no ``..``, nothing a path could climb.
"""

from __future__ import annotations

import re

from sandboxd.controlplane.start_request import not_implemented
from sandboxd.errors import invalid_argument
from sandboxd.snapshots.scratch_request import ScratchRequest, parse_scratch
from sandboxd_protocol.v1 import sandbox_pb2

V = sandbox_pb2
VOLUME_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
"""A volume name: a DNS label (what the official client's default ``workspace`` is)."""
MAX_SNAPSHOT_ID_CHARS = 64


def check_volume_name(name: str, field: str) -> str:
    """``name`` if it is a DNS label, else INVALID_ARGUMENT naming ``field``."""
    if not VOLUME_NAME.fullmatch(name):
        raise invalid_argument(
            field,
            f"must be a lower-case DNS label such as 'workspace' (got {name[:80]!r})",
        )
    return name


def _scratch_entry(volume: sandbox_pb2.SandboxVolume, field: str) -> None:
    scratch = volume.scratch
    if scratch.medium not in V.StorageMedium.values():
        raise invalid_argument(f"{field}.scratch.medium", f"unknown StorageMedium {scratch.medium}")
    if scratch.medium == V.STORAGE_MEDIUM_MEMORY:
        raise not_implemented(f"{field}.scratch.medium", "memory-backed scratch volumes")
    restore = scratch.restore_from_snapshot_id
    if len(restore) > MAX_SNAPSHOT_ID_CHARS or "\x00" in restore:
        raise invalid_argument(
            f"{field}.scratch.restore_from_snapshot_id", "is not a file-system snapshot id"
        )


def scratch_request(spec: sandbox_pb2.SandboxSpec, prefix: str) -> ScratchRequest | None:
    """The spec's one scratch volume with its mount (None: none); ``prefix`` names the container.

    Raises :class:`ApiError` naming the first bad field.
    """
    scratch: tuple[int, sandbox_pb2.SandboxVolume] | None = None
    names: dict[str, str | None] = {}
    for index, volume in enumerate(spec.volumes):
        field = f"spec.volumes[{index}]"
        check_volume_name(volume.name, f"{field}.name")
        if volume.name in names:
            raise invalid_argument(f"{field}.name", f"{volume.name!r} is named twice")
        source = names[volume.name] = volume.WhichOneof("source")
        if source == "volume_id":
            continue
        if source != "scratch":
            raise invalid_argument(field, "must be a scratch volume")
        _scratch_entry(volume, field)
        if scratch is not None:
            raise invalid_argument(
                field, "one scratch volume per sandbox is offered here; this is a second"
            )
        scratch = (index, volume)
    container = spec.containers[0]
    mounted: tuple[int, sandbox_pb2.VolumeMount] | None = None
    seen: set[str] = set()
    for index, mount in enumerate(container.volume_mounts):
        field = f"{prefix}.volume_mounts[{index}]"
        if mount.volume not in names:
            raise invalid_argument(
                f"{field}.volume", f"names no volume of the spec: {mount.volume!r}"
            )
        if mount.volume in seen:
            raise invalid_argument(f"{field}.volume", f"{mount.volume!r} is mounted twice")
        seen.add(mount.volume)
        if names[mount.volume] != "scratch":
            continue
        if mount.read_only:
            raise not_implemented(f"{field}.read_only", "read-only scratch mounts")
        if mount.sub_path:
            raise not_implemented(f"{field}.sub_path", "sub-path mounts")
        mounted = (index, mount)
    if scratch is None:
        return None
    index, volume = scratch
    if mounted is None:
        raise invalid_argument(
            f"spec.volumes[{index}]", f"{volume.name!r} is not mounted by the container"
        )
    mount_index, mount = mounted
    return parse_scratch(
        mount.mount_path,
        volume.scratch.size,
        volume.scratch.restore_from_snapshot_id,
        prefix=f"{prefix}.volume_mounts[{mount_index}]",
        name=volume.name,
        size_field=f"spec.volumes[{index}].scratch.size",
    )
