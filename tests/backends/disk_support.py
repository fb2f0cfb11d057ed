"""Helpers for the writable-layer tests: find a backend's loop devices, read cgroup memory.

A sandbox's layer is an unnamed image on a loop device (``backends/local/disk.py``); the
kernel names its backing file ``<data_dir>/disk/#<inode> (deleted)``, which is how a test
tells the devices of its own backend from everyone else's. A backend also keeps a few
layers ready ahead of need; they hold loop devices too, and are counted apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from sandboxd.backends.base import Backend
from sandboxd.backends.local.disk_template import TEMPLATE_VERSION


def loop_devices(disk_dir: Path) -> list[str]:
    """Loop devices whose backing file lives in ``disk_dir`` (the sandboxes' layers)."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().startswith(f"{disk_dir}/"):
                found.append(backing.parent.parent.name)
    return sorted(found)


async def wait_for_loops(disk_dir: Path, count: int, timeout: float = 10.0) -> list[str]:
    """Wait until exactly ``count`` of ``disk_dir``'s loop devices are attached.

    Also after a close: the kernel detaches a layer's loop device once the layer's last
    mount is gone, a moment after its descriptor is closed (a CI run saw one still attached
    right after ``LocalBackend.close``).
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        devices = loop_devices(disk_dir)
        if len(devices) == count or asyncio.get_running_loop().time() > deadline:
            return devices
        await asyncio.sleep(0.02)


async def wait_in_use(backend: Backend, count: int, timeout: float = 10.0) -> int:
    """Wait until ``count`` of ``backend``'s layers are in sandboxes (not made ahead)."""
    layers = getattr(backend, "_disk")  # noqa: B009
    disk_dir = Path(getattr(backend, "data_dir")) / "disk"  # noqa: B009
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await layers.settle()
        in_use = len(loop_devices(disk_dir)) - layers.ready
        if in_use == count or asyncio.get_running_loop().time() > deadline:
            return int(in_use)
        await asyncio.sleep(0.02)


def stray_files(disk_dir: Path) -> list[str]:
    """Anything in the disk directory that is not a template."""
    if not disk_dir.exists():
        return []
    return sorted(n for n in os.listdir(disk_dir) if not n.startswith(f"{TEMPLATE_VERSION}-"))


def memory_stat(cgroup: object) -> dict[str, int]:
    """``memory.stat`` of a sandbox cgroup (v1 or v2) as numbers."""
    version = getattr(cgroup, "version")  # noqa: B009
    dirs: dict[str, str] = getattr(cgroup, "dirs")  # noqa: B009
    base = dirs["memory"] if version == 1 else dirs["unified"]
    out = {}
    for line in Path(base, "memory.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out
