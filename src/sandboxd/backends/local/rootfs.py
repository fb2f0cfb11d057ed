"""The sandbox's filesystem view, built by the agent inside its own mount namespace.

Why this shape:

* The image rootfs is only ever an overlayfs *lower* layer, so it is never written, and it
  is bound through an **idmapped mount** first: host uid 0 (the image's owner) appears as
  the sandbox's root, whose host uid is unprivileged (see ``userns.py``). The upper layer
  lives on the sandbox's own ext4 filesystem, on disk, whose size is the sandbox's disk cap
  (``disk.py``), which the runner hands over as a detached mount; its root directory
  belongs to the sandbox's root, so the sandbox owns ``/`` without owning anything on the
  host.
* Overlay options name their layers by *relative* paths from the state directory, so
  ``/proc/self/mountinfo`` inside the sandbox shows ``lowerdir=lower,upperdir=rw/upper``
  and no host path.
* Everything is mounted in a private mount namespace, so the host mount table never sees a
  sandbox mount, and when the last process of the sandbox exits the kernel tears all of it
  down: destroy cannot leak mounts, and the writable layer's loop device and image go with
  them. ``/sys/devices/virtual/block`` is masked: it would show every loop device's
  backing file, a host path.
* After ``pivot_root`` every further step (``/proc``, ``/dev``, ``/sys``, mounted files)
  resolves paths inside the new root, with ``openat2(RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS)`` where the path comes from a user or an image, so a hostile image
  (an absolute symlink ``/etc -> /host``, or one into ``/proc/self/fd``) cannot redirect a
  mount or a write. Mounted files arrive as sealed memfds, never as host descriptors.
* The root is ``nodev`` (an imported tarball could carry a device node of the host disk);
  ``/proc/sys`` and friends are read-only, and the kernel's diagnostic files that leak host
  details (``kcore``, ``kallsyms``, ``config.gz``, ``cmdline``, ``slabinfo``, ACPI and
  firmware tables...) are masked, as container runtimes do.

Standard library only (runs in the agent).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from .resolve import Root
from .syscalls import (
    MNT_DETACH,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    attach_mount,
    attach_mount_at,
    bind_idmapped,
    bind_readonly,
    mount,
    pivot_root,
    set_mount_attrs,
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
PROC_READONLY = ("sys", "irq", "bus", "fs")
PROC_MASKED_FILES = (
    "kcore", "keys", "key-users", "timer_list", "sched_debug", "latency_stats", "kmsg",
    "config.gz", "cmdline", "slabinfo", "vmallocinfo", "kallsyms", "kpagecount",
    "kpageflags", "kpagecgroup", "pagetypeinfo", "iomem", "ioports", "buddyinfo",
    "zoneinfo", "sysrq-trigger", "modules", "lockdep", "lock_stat", "mtrr", "dma",
)  # fmt: skip
PROC_MASKED_DIRS = ("acpi", "scsi", "asound", "driver", "tty/driver", "dynamic_debug")
SYS_MASKED_DIRS = (
    "firmware", "kernel/debug", "kernel/tracing", "kernel/security", "kernel/config",
    "devices/virtual/powercap", "devices/virtual/block", "fs/bpf", "fs/pstore", "fs/cgroup",
)  # fmt: skip

# Names inside the state directory (relative, so no host path reaches mountinfo).
LOWER, RW, ROOT = "lower", "rw", "root"


def mount_overlay(mount_dir: str, lower: str, disk_fd: int, userns_fd: int, owner: int) -> None:
    """Private mounts; idmapped image at ``lower``; the sandbox's disk + overlay at ``root``.

    ``mount_dir`` holds the empty directories ``lower``, ``rw`` and ``root`` to mount on.
    Every sandbox of a backend mounts on the same ones (``SharedFiles.mount_points``):
    mounts belong to this mount namespace, made private first, so no other sandbox and not
    the host sees them, and a create makes no directories for them (three inodes in the
    runner's file system, made and deleted again per sandbox, 0.3-0.4 ms on its path).
    ``disk_fd`` is the writable layer, made by the runner as a detached mount with
    ``upper`` and ``work`` in it (``disk_mount.py``); from here on it lives in this
    namespace only, and the descriptor is closed.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.chdir(mount_dir)
    bind_idmapped(lower, LOWER, userns_fd, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID)
    try:
        attach_mount(disk_fd, RW)
    finally:
        os.close(disk_fd)
    upper, work = f"{RW}/upper", f"{RW}/work"
    os.chown(upper, owner, owner)  # the overlay's "/" belongs to the sandbox's root
    opts = f"lowerdir={LOWER},upperdir={upper},workdir={work}"
    mount("sandboxd-root", ROOT, "overlay", MS_NODEV | MS_NOSUID, opts)


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
    """Mount the sandbox's own /proc (its PID namespace)."""
    _ensure_dir("/proc", 0o555)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def harden_proc() -> None:
    """Read-only binds over writable kernel knobs; /dev/null or empty dirs over leaky ones."""
    for name in PROC_READONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            bind_readonly(path, path, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_MASKED_FILES:
        path = f"/proc/{name}"
        if os.path.exists(path) and not os.path.isdir(path):
            mount("/dev/null", path, None, MS_BIND)  # reads are empty, writes vanish
    for name in PROC_MASKED_DIRS:
        _mask_dir(f"/proc/{name}")


def _mask_dir(path: str) -> None:
    if os.path.isdir(path):
        flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        mount("masked", path, "tmpfs", flags, "size=4k,mode=0555")


def mount_dev(owner: int) -> None:
    """A minimal /dev: a few character devices, a private devpts (for PTYs) and /dev/shm."""
    _ensure_dir("/dev")
    mount("sandboxd-dev", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=0755")
    old = os.umask(0)
    try:
        for name, (major, minor) in _DEVICES.items():
            os.mknod(f"/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chown(f"/dev/{name}", owner, owner)
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
    os.chown("/dev/shm", owner, owner)
    for name, target in _DEV_LINKS.items():
        os.symlink(target, f"/dev/{name}")


def mount_sys() -> None:
    """Read-only sysfs (of the sandbox's network namespace), firmware and debug masked."""
    _ensure_dir("/sys", 0o555)
    mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in SYS_MASKED_DIRS:
        _mask_dir(f"/sys/{name}")


def place_files(root: Root, files: list[tuple[str, int]], owner: int) -> None:
    """Copy each sealed memfd to its path inside the (pivoted) root, then make it read-only.

    The path comes from the API and the directories on it from the image, so both are
    resolved in root without magic links; the file is then bound onto itself through the
    descriptor we opened (``/proc/self/fd/N``), so the bind hits exactly that file. The
    sandbox cannot unmount the bind (no capabilities, seccomp) and cannot hard-link the file
    to a writable name (links across mounts fail), so the content cannot change.
    """
    for path, memfd in files:
        try:
            parent = os.path.dirname(path) or "/"
            root.makedirs(parent)
            out = root.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOCTTY, 0o444)
        except IsADirectoryError:
            raise IsADirectoryError(21, "mounted file target is a directory", path) from None
        try:
            if not stat.S_ISREG(os.fstat(out).st_mode):
                raise IsADirectoryError(21, "mounted file target is not a regular file", path)
            os.lseek(memfd, 0, os.SEEK_SET)
            while chunk := os.read(memfd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fchmod(out, 0o444)
            os.fchown(out, owner, owner)
            link = f"/proc/self/fd/{out}"
            resolved = root.real_path(out)  # symlink-free; no user code runs yet to swap it
            mount(link, link, None, MS_BIND)
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
            mount(None, resolved, None, flags)
        finally:
            os.close(out)
            with contextlib.suppress(OSError):
                os.close(memfd)


def _mount_point(root: Root, mount_path: str, owner: int) -> int:
    """An ``O_PATH`` descriptor of ``mount_path`` in root, its missing directories made.

    The path is the client's (checked to be normal, and not ``/``, ``/proc``, ``/sys`` or
    ``/dev``) and the directories on it the image's, so every step is resolved in root
    without magic links, and the mount goes onto the descriptor: a symlink in the image
    cannot move it elsewhere. Directories made on the way belong to the sandbox's root.
    """
    parts = [p for p in mount_path.split("/") if p]
    prefix = ""
    for part in parts:
        parent, prefix = prefix or "/", f"{prefix}/{part}"
        try:
            os.close(root.open_dir(prefix))
            continue
        except FileNotFoundError:
            pass
        parent_fd = root.open_dir(parent)
        try:
            os.mkdir(part, 0o755, dir_fd=parent_fd)
            os.chown(part, owner, owner, dir_fd=parent_fd, follow_symlinks=False)
        except FileExistsError:
            pass
        finally:
            os.close(parent_fd)
    return root.open_dir(mount_path)


def mount_scratch(root: Root, mount_path: str, scratch_fd: int, owner: int) -> None:
    """Attach the scratch file system (a detached mount, ``scratch.py``) at ``mount_path``."""
    try:
        target = _mount_point(root, mount_path, owner)
        try:
            attach_mount_at(scratch_fd, target)
        finally:
            os.close(target)
    finally:
        os.close(scratch_fd)


def mount_volume(root: Root, volume: tuple[str, int, bool], userns_fd: int, owner: int) -> None:
    """Attach a persistent volume (a detached bind, ``volumes.py``) at its mount path.

    Its ids are shifted through the sandbox's user namespace (on-disk 0 is the sandbox's
    root, as for the image), it is ``nosuid`` and ``nodev``, and read-only when asked: the
    attributes are set on the detached mount before it is attached, so the sandbox never
    sees it writable, and it cannot remount it (no capabilities, seccomp).
    """
    mount_path, tree_fd, read_only = volume
    try:
        attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if read_only else 0)
        set_mount_attrs(tree_fd, attrs, userns_fd)
        target = _mount_point(root, mount_path, owner)
        try:
            attach_mount_at(tree_fd, target)
        finally:
            os.close(target)
    finally:
        os.close(tree_fd)


def build(
    *,
    mount_dir: str,
    lower: str,
    disk_fd: int,
    files: list[tuple[str, int]],
    hostname: str,
    userns_fd: int,
    owner: int,
    scratch: tuple[str, int] | None = None,
    volumes: tuple[tuple[str, int, bool], ...] = (),
) -> None:
    """The whole filesystem setup, in order; raises ``OSError`` naming the failed step.

    ``owner`` is the host uid (and gid) of the sandbox's root: what it must own.
    ``disk_fd`` is the writable layer (see :func:`mount_overlay`).
    """
    mount_overlay(mount_dir, lower, disk_fd, userns_fd, owner)
    pivot_into(ROOT)
    mount_proc()
    mount_dev(owner)
    mount_sys()
    harden_proc()
    with Root("/") as root:
        if scratch is not None:
            mount_scratch(root, scratch[0], scratch[1], owner)
        for volume in volumes:  # on failure the agent exits, and its descriptors with it
            try:
                mount_volume(root, volume, userns_fd, owner)
            except OSError as exc:
                raise OSError(exc.errno, f"mounting the volume at {volume[0]}: {exc}") from None
        place_files(root, files, owner)
    socket.sethostname(hostname)
