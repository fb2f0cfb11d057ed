"""The sandbox's filesystem view, built by the agent inside its own mount namespace.

Why this shape:

* The image rootfs is only ever an overlayfs *lower* layer, so it is never written. The upper
  layer lives on a tmpfs whose ``size=`` is the sandbox's disk cap: a write past it fails with
  ``ENOSPC`` and the pages are charged to the sandbox's memory cgroup. A loop-mounted ext4
  file would keep the data on disk but costs a mkfs per sandbox, far over the startup budget.
* Everything is mounted in a private mount namespace, so the host mount table never sees a
  sandbox mount, and when the last process of the sandbox exits the kernel tears all of it
  down: destroy cannot leak mounts.
* After ``pivot_root`` every further step (``/proc``, ``/dev``, ``/sys``, mounted files)
  resolves paths inside the new root, so a hostile image (for example an absolute symlink
  ``/etc -> /host``) cannot redirect a mount onto a host path. Mounted files are opened on
  the host *before* pivoting and bound from ``/proc/self/fd`` afterwards.
* The root is ``nodev`` (an imported tarball could carry a device node of the host disk),
  and ``/proc/sys`` and friends are read-only or masked: without that, uid 0 without
  capabilities could still write many sysctls, since their check is the file mode only.

Standard library only (runs in the agent).
"""

from __future__ import annotations

import os
import socket
import stat

from .syscalls import (
    MNT_DETACH,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    bind_readonly,
    mount,
    pivot_root,
    umount2,
)

_DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
_DEV_LINKS = {
    "ptmx": "pts/ptmx",
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
_PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
_PROC_MASKED_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "kmsg")
_PROC_MASKED_DIRS = ("acpi", "scsi")


def check_overlay_path(path: str) -> None:
    """Refuse paths that would break overlayfs option parsing."""
    if any(ch in path for ch in ",:\\\n"):
        raise ValueError(f"path not usable as an overlay layer: {path!r}")


def mount_overlay(lower: str, rw_dir: str, root_dir: str, disk_bytes: int) -> None:
    """Make mounts private, then mount tmpfs (size cap) + overlay at ``root_dir``."""
    for path in (lower, rw_dir, root_dir):
        check_overlay_path(path)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("sandboxd-rw", rw_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_bytes},mode=0755")
    upper, work = os.path.join(rw_dir, "upper"), os.path.join(rw_dir, "work")
    os.mkdir(upper, 0o755)
    os.mkdir(work, 0o700)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    mount("sandboxd-root", root_dir, "overlay", MS_NODEV | MS_NOSUID, opts)


def pivot_into(root_dir: str) -> None:
    """Make ``root_dir`` the root of this mount namespace and drop the old root entirely."""
    os.chdir(root_dir)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")


def _ensure_dir(path: str, mode: int = 0o755) -> None:
    try:
        os.makedirs(path, mode, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(20, "not a directory", path) from None


def mount_proc() -> None:
    """Mount the sandbox's own /proc (its PID namespace) with sysctls read-only."""
    _ensure_dir("/proc", 0o555)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def harden_proc() -> None:
    """Read-only binds over writable kernel knobs, /dev/null over leaky files."""
    for name in _PROC_READONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            bind_readonly(path, path, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in _PROC_MASKED_FILES:
        path = f"/proc/{name}"
        if os.path.exists(path):
            bind_readonly("/dev/null", path)
    for name in _PROC_MASKED_DIRS:
        path = f"/proc/{name}"
        if os.path.isdir(path):
            mount("masked", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_dev() -> None:
    """A minimal /dev: a few character devices, a private devpts (for PTYs) and /dev/shm."""
    _ensure_dir("/dev")
    mount("sandboxd-dev", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")
    old = os.umask(0)
    try:
        for name, (major, minor) in _DEVICES.items():
            os.mknod(f"/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.mkdir("/dev/pts", 0o755)
        os.mkdir("/dev/shm", 0o1777)
    finally:
        os.umask(old)
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64m,mode=1777")
    for name, target in _DEV_LINKS.items():
        os.symlink(target, f"/dev/{name}")


def mount_sys() -> None:
    """Read-only sysfs (of the sandbox's network namespace)."""
    _ensure_dir("/sys", 0o555)
    mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def place_files(files: list[tuple[str, int]]) -> None:
    """Write each pre-opened host file at its path inside the (pivoted) root, read-only.

    The content is copied into the overlay and the file is then bound onto itself and
    remounted read-only: a bind *from* the host is impossible once the old root is detached.
    The sandbox cannot unmount the bind (no capabilities) and cannot hard-link the file to a
    writable name (links across mounts fail), so the content cannot change.
    """
    for path, fd in files:
        _ensure_dir(os.path.dirname(path))
        if os.path.isdir(path):
            raise IsADirectoryError(21, "mounted file target is a directory", path)
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o444)
        try:
            while chunk := os.read(fd, 1 << 20):
                os.write(out, chunk)
            os.fchmod(out, 0o444)
        finally:
            os.close(out)
            os.close(fd)
        bind_readonly(path, path)


def build(
    *,
    lower: str,
    rw_dir: str,
    root_dir: str,
    disk_bytes: int,
    files: list[tuple[str, int]],
    hostname: str,
) -> None:
    """The whole filesystem setup, in order; raises ``OSError`` naming the failed step."""
    mount_overlay(lower, rw_dir, root_dir, disk_bytes)
    pivot_into(root_dir)
    mount_proc()
    mount_dev()
    mount_sys()
    harden_proc()
    place_files(files)
    socket.sethostname(hostname)
