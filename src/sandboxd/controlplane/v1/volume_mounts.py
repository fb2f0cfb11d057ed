"""A v1 spec's registered volumes and their mounts, parsed into :class:`MountWish` es.

Two halves again (protocol/v1.md §4.2): ``SandboxSpec.volumes[]{name, volume_id}`` and a
``VolumeMount{volume, mount_path, read_only, sub_path}`` on the container naming it. What is
checked here, before anything is looked up or placed: the id is a volume id, each
registered volume is mounted exactly once, the mount path is absolute and normal and not
``/``, ``/proc``, ``/sys`` or ``/dev`` (whose masks a mount could undo), no two mount points
(scratch ones included) overlap, and ``sub_path`` is relative with no ``..``. Each
violation is INVALID_ARGUMENT naming the v1 field. Whether the volume exists for the
caller, is ready, and whether the sub-path crosses a symlink on its runner is
:meth:`Volumes.mounts_for`'s part.
"""

from __future__ import annotations

from sandboxd.backends.base import MAX_VOLUMES, check_mount_path, check_sub_path
from sandboxd.backends.errors import InvalidSpec
from sandboxd.controlplane.v1.scratch_volumes import check_volume_name
from sandboxd.errors import invalid_argument
from sandboxd.volumes.model import MountWish
from sandboxd_protocol.v1 import sandbox_pb2


def _checked(check: object, value: str, field: str) -> str:
    try:
        result: str = check(value, field)  # type: ignore[operator]
    except InvalidSpec as exc:
        raise invalid_argument(field, str(exc).removeprefix(f"{field}: ")) from None
    return result


def _overlap(paths: list[tuple[str, str]]) -> None:
    for i, (one, field) in enumerate(paths):
        for other, _ in paths[:i]:
            if one == other or one.startswith(other + "/") or other.startswith(one + "/"):
                raise invalid_argument(field, f"{one!r} overlaps the mount at {other!r}")


def volume_mounts(spec: sandbox_pb2.SandboxSpec, prefix: str) -> tuple[MountWish, ...]:
    """The registered volumes the container mounts (``prefix`` names the container)."""
    ids: dict[str, str] = {}
    for index, volume in enumerate(spec.volumes):
        if volume.WhichOneof("source") == "volume_id":
            field = f"spec.volumes[{index}].volume_id"
            ids[volume.name] = check_volume_name(volume.volume_id, field)
    if len(ids) > MAX_VOLUMES:
        raise invalid_argument("spec.volumes", f"at most {MAX_VOLUMES} registered volumes")
    wishes: list[MountWish] = []
    paths: list[tuple[str, str]] = []
    for index, mount in enumerate(spec.containers[0].volume_mounts):
        field = f"{prefix}.volume_mounts[{index}]"
        path = _checked(check_mount_path, mount.mount_path, f"{field}.mount_path")
        paths.append((path, f"{field}.mount_path"))
        if mount.volume not in ids:
            continue  # a scratch volume's mount (scratch_volumes.py)
        wishes.append(
            MountWish(
                name=mount.volume,
                volume_id=ids[mount.volume],
                mount_path=path,
                read_only=mount.read_only,
                sub_path=_checked(check_sub_path, mount.sub_path, f"{field}.sub_path"),
                sub_path_field=f"{field}.sub_path",
            )
        )
    _overlap(paths)
    mounted = {wish.name for wish in wishes}
    for index, volume in enumerate(spec.volumes):
        if volume.name in ids and volume.name not in mounted:
            raise invalid_argument(
                f"spec.volumes[{index}]", f"{volume.name!r} is not mounted by the container"
            )
    return tuple(wishes)
