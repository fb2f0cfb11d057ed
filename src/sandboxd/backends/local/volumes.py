"""Persistent volumes of the local backend: directories under ``<data_dir>/volumes``.

Where: ``volumes/<organization>/<claim_name>[/<sub_path>]``, made by the runner as host root
(``0755``, owned by host 0). The ``volumes`` directory itself is ``0700``, so nobody on the
host but root walks in. The names are checked (``VolumeSource``) before anything is joined.

How a volume reaches a sandbox: the runner walks to the directory one component at a time
with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_XDEV)`` from the descriptor of the level above, so a symlink a sandbox left in
the volume (``sub_path`` = ``link`` → ``/etc``), a ``..`` or a mount on the way is refused,
never followed. It then clones that very directory into a detached mount (``open_tree`` of
the descriptor: no path is resolved again) and hands the mount to the agent like a scratch
file system. The agent shifts its ids through the sandbox's user namespace and makes it
read-only when asked (``rootfs.mount_volume``): on disk a file belongs to the id the
sandbox saw (its root is 0 on disk, as the image's root is), so whichever sandbox mounts
the volume next sees its own root own what an earlier one wrote, while none of them is ever
host root.

Deleting a volume's registration keeps the directory (like a Kubernetes PVC that outlives
the registration): registering the same claim again finds the data.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ..base import VolumeSource
from ..errors import BackendError, InvalidSpec, SandboxStartError, VolumeNotFound
from .resolve import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    openat2,
)
from .syscalls import clone_tree

STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
SUB_PATH = "volume.sub_path"
CLAIM = "volume.claim_name"


class VolumeDirs:
    """The runner's volume directories, and detached mounts of them for sandboxes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self, source: VolumeSource, *, create: bool) -> None:
        """Make (``create``) or find the volume's directory and its sub-path.

        ``VolumeNotFound`` when the claim's directory is missing and not to be made;
        ``InvalidSpec`` naming ``volume.sub_path`` when the sub-path crosses a symlink or
        a file.
        """
        try:
            os.close(self._open(source, create_claim=create))
        except OSError as exc:
            raise BackendError(f"the volume directory cannot be made: {exc}") from None

    def open_tree(self, source: VolumeSource) -> int:
        """A detached bind mount of the volume's directory (its sub-path made if missing)."""
        try:
            fd = self._open(source, create_claim=False)
            try:
                return clone_tree(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SandboxStartError(f"the volume cannot be bound: {exc}") from None

    def _open(self, source: VolumeSource, *, create_claim: bool) -> int:
        if create_claim:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _missing(source) from None
        steps = [(name, create_claim, CLAIM) for name in (source.organization, source.claim_name)]
        steps += [(name, True, SUB_PATH) for name in source.sub_path.split("/") if name]
        for name, create, field in steps:
            try:
                child = _step(fd, name, create=create, source=source, field=field)
            finally:
                os.close(fd)
            fd = child
        return fd


def _missing(source: VolumeSource) -> VolumeNotFound:
    return VolumeNotFound(
        f"the volume directory {source.claim_name!r} of {source.organization!r} does not "
        "exist on this runner"
    )


def _step(parent: int, name: str, *, create: bool, source: VolumeSource, field: str) -> int:
    """Open ``name`` below ``parent`` (made when missing and ``create``)."""
    try:
        try:
            return openat2(parent, name, os.O_PATH | os.O_DIRECTORY, 0, STRICT)
        except FileNotFoundError:
            if not create:
                raise _missing(source) from None
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            return openat2(parent, name, os.O_PATH | os.O_DIRECTORY, 0, STRICT)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR, errno.EEXIST):
            what = "a symlink or a mount" if exc.errno in (errno.ELOOP, errno.EXDEV) else "a file"
            raise InvalidSpec(field, f"{name!r} in the volume is {what}, not a directory") from None
        raise
