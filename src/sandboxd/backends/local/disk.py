"""The sandbox's writable layer: its own ext4 filesystem, on disk, exactly the disk cap in size.

What a sandbox writes (the overlay's *upper* layer) lives on a filesystem of its own: an
ext4 image whose size as ``df`` shows it is the sandbox's disk limit (``disk_bytes``),
mounted from a loop device inside the sandbox's mount namespace (``disk_mount.py``). So:

* writes go to disk, not memory: a sandbox with 1 GiB of memory can write 4 GiB (its page
  cache is charged to it and reclaimed like any file's; it is not pinned as tmpfs was);
* a write past the cap fails with ``ENOSPC`` ("No space left on device"), because the
  filesystem is full, and ``df /`` inside shows the cap as the size; inodes are capped too
  (one per 16 KiB, at least 4,096), also answered with ``ENOSPC``;
* nothing is shared: no sandbox can reach another's blocks, inodes or directories, or
  change its own limit (there is no limit to change, only the size of its filesystem);
* nothing is left behind: the image is an unnamed ``O_TMPFILE``, the loop device clears
  itself and the mount exists only in the sandbox's namespace, so when the sandbox's last
  process exits the kernel frees all of it, whether the runner destroyed it, crashed
  (SIGKILL mid-create included) or was restarted. ``recover()`` has nothing to reclaim, and
  a re-adopted sandbox keeps its layer because it never depended on the runner.

Why not the recommended XFS project quotas (one shared filesystem, a project id and a hard
block limit per sandbox directory): the kernels we run on are built without quota support
for XFS (``CONFIG_XFS_QUOTA`` is off: mounting with ``prjquota`` logs "quota support not
available in this kernel"), without the quota formats ext4 needs (``CONFIG_QFMT_V2``), and
without tmpfs quotas; and where quotas exist, only XFS answers ``ENOSPC`` at a project's
limit: ext4 and btrfs answer ``EDQUOT`` ("Disk quota exceeded"). A filesystem per sandbox
needs none of that (ext4 and loop devices are in every kernel), and it needs no project ids
to allocate, record, reclaim after a crash or guard against reuse.

What it costs. Making an ext4 filesystem takes ``mkfs.ext4`` several milliseconds, so the
runner makes one **template** per size, once (``<data_dir>/disk/ext4-v1-<blocks>.img``, a
sparse file holding 50 KiB to 1 MiB of data), calibrated so that the filesystem's size is
exactly the cap (for about one size in a thousand, up to 2 MiB more; see
:func:`make_template`). A create then copies the template's data extents into an
anonymous file and attaches and mounts it: about 1 ms (``bench/local_backend.py``). The
first create of a new size waits for its template (10 to 40 ms). Templates are never
changed after they are made; deleting them is safe when no create is running.

Images are sparse and the caps of all sandboxes may add up to more than the host's disk
(like memory limits). Online discard gives the host back what a sandbox deletes. A create
is refused while the data directory's filesystem has less free space than the smaller of
the sandbox's cap and :data:`MIN_FREE_BYTES`: that host is full. If the host disk fills up
anyway, writes into sandboxes fail with I/O errors and their layers turn read-only
(``errors=remount-ro``); the host itself is untouched. Keep the data directory on a
filesystem with room for what the sandboxes will really write.

Runs in the runner (the agent side is ``disk_mount.py``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 4096
INODE_SIZE = 256
BYTES_PER_INODE = 16384
MIN_INODES = 4096
MIN_BLOCKS = 256  # 1 MiB: smaller ext4 filesystems are not worth making
MIN_FREE_BYTES = 1 << 30
BLOCKS_PER_GROUP = 8 * BLOCK  # ext4's default and largest: one bitmap block per group
MIN_BLOCKS_PER_GROUP = 1024
TEMPLATE_VERSION = "ext4-v1"
# No journal: the layer does not outlive the host (sandboxes end with a reboot), so there
# is nothing to recover after a crash, and a journal would cost writes and a kernel thread.
# No resize inode: the layer never grows. -m 0: the sandbox's root is not the host's root,
# so blocks reserved for root would only make the layer smaller than its cap.
MKFS = (
    "mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-m", "0",
    "-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=1,nodiscard",
)  # fmt: skip
_CALIBRATION_TRIES = 12
_SB_OFFSET = 1024
_EXT4_MAGIC = 0xEF53


class DiskError(RuntimeError):
    """The writable layer cannot be made (no room on the host, ``mkfs.ext4`` failed)."""


@dataclass(frozen=True)
class Template:
    """A made template: its path, size in bytes and the ``[offset, length]`` holding data."""

    path: Path
    size: int
    extents: tuple[tuple[int, int], ...]

    def layer(self) -> dict[str, Any]:
        """What the agent needs to mount a copy (``disk_mount.mount_layer``)."""
        return {
            "template": str(self.path),
            "size": self.size,
            "extents": [list(e) for e in self.extents],
        }


def cap_blocks(disk_bytes: int) -> int:
    """The layer's usable size in 4 KiB blocks: the cap rounded up, at least 1 MiB."""
    return max(MIN_BLOCKS, -(-disk_bytes // BLOCK))


@dataclass(frozen=True)
class Superblock:
    """The few ext4 superblock fields the calibration needs."""

    blocks: int
    usable: int  # what statfs reports as f_blocks: blocks less the filesystem's overhead
    inodes_per_group: int


def read_superblock(fd: int) -> Superblock:
    """The ext4 superblock in ``fd``.

    ``mkfs`` records the filesystem's overhead there (inode tables, bitmaps, superblock
    copies), which ext4's ``statfs`` subtracts from the size.
    """
    sb = os.pread(fd, 1024, _SB_OFFSET)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != _EXT4_MAGIC:
        raise DiskError("mkfs.ext4 wrote no ext4 superblock")
    lo, hi = struct.unpack_from("<I", sb, 0x4)[0], struct.unpack_from("<I", sb, 0x150)[0]
    blocks = lo | (hi << 32)
    overhead = struct.unpack_from("<I", sb, 0x248)[0]
    return Superblock(blocks, blocks - overhead, struct.unpack_from("<I", sb, 0x28)[0])


def data_extents(fd: int) -> tuple[tuple[int, int], ...]:
    """The ``(offset, length)`` ranges of ``fd`` that hold data (``SEEK_DATA``/``SEEK_HOLE``)."""
    size = os.fstat(fd).st_size
    out = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end - start))
        offset = end
    return tuple(out)


def _mkfs(disk_dir: Path, blocks: int, inodes: int, group: int) -> int:
    """An anonymous file of ``blocks`` blocks with a fresh ext4 on it; its descriptor."""
    fd = os.open(disk_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, blocks * BLOCK)
        argv = [*MKFS, "-N", str(inodes), "-g", str(group), f"/proc/self/fd/{fd}"]
        done = subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DiskError(f"mkfs.ext4 failed: {done.stderr.strip() or done.returncode}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_template(disk_dir: Path, cap: int) -> Template:
    """Make (or load) the template whose usable size is ``cap`` blocks.

    ``mkfs`` decides the overhead from the size it is given, so the size is found by
    iteration: start at the cap plus the inode tables, add what the overhead took, repeat
    (two or three rounds). ``mkfs`` drops a last block group smaller than its own metadata
    plus 50 blocks, so the sizes just past each group boundary cannot be made: then the
    smallest kept last group gives a size a little above the cap, and smaller groups (other
    boundaries) are tried for the exact one. The smallest size at or above the cap wins: in
    sweeps of 1,149 sizes from 1 MiB to 64 GiB all but one came out exact, that one 1.6 MiB
    over (the gap is at most a group's inode table and 53 blocks, 2.2 MiB). The template
    is made as a nameless file and linked into place only when complete, so a crash
    leaves nothing half made.
    """
    path = disk_dir / f"{TEMPLATE_VERSION}-{cap}.img"
    try:
        return load_template(path, cap)
    except FileNotFoundError:
        pass
    except (OSError, DiskError):  # damaged (a crash before the data reached the disk?)
        path.unlink(missing_ok=True)
    inodes = max(MIN_INODES, cap * BLOCK // BYTES_PER_INODE)
    blocks = cap + inodes * INODE_SIZE // BLOCK  # the inode tables are the bulk of the overhead
    group = BLOCKS_PER_GROUP
    best: tuple[int, int] | None = None  # (usable, fd)
    try:
        for _ in range(_CALIBRATION_TRIES):
            fd = _mkfs(disk_dir, blocks, inodes, group)
            sb = read_superblock(fd)
            if sb.usable >= cap and (best is None or sb.usable < best[0]):
                if best is not None:
                    os.close(best[1])
                best = (sb.usable, fd)
            else:
                os.close(fd)
            if sb.usable == cap:
                break
            if sb.blocks == blocks:
                blocks += cap - sb.usable
            elif best is None:  # the last group was dropped: make it just big enough to stay
                blocks = sb.blocks + 3 + sb.inodes_per_group * INODE_SIZE // BLOCK + 50
            elif group > MIN_BLOCKS_PER_GROUP:  # with smaller groups the boundaries move
                group //= 2
            else:
                break
        if best is None:
            raise DiskError(f"no ext4 filesystem of {cap} usable blocks could be made")
        fd = best[1]
        os.fsync(fd)
        dir_fd = os.open(disk_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # a dir_fd makes Python use linkat(AT_SYMLINK_FOLLOW), as O_TMPFILE needs
            os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            pass  # made meanwhile (another runner of this data directory): the same thing
        finally:
            os.close(dir_fd)
        return load_template(path, cap)
    finally:
        if best is not None:
            os.close(best[1])


def load_template(path: Path, cap: int) -> Template:
    """A template made earlier; ``DiskError`` if it is not one for ``cap`` (then remade)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if read_superblock(fd).usable < cap:
            raise DiskError(f"{path} is not a template for {cap} blocks")
        return Template(path, os.fstat(fd).st_size, data_extents(fd))
    finally:
        os.close(fd)


class DiskTemplates:
    """The runner's templates, one per layer size, made on first use and then reused."""

    def __init__(self, disk_dir: Path) -> None:
        self.disk_dir = disk_dir
        self._made: dict[int, Template] = {}
        self._making: dict[int, asyncio.Future[Template]] = {}

    def check_room(self, disk_bytes: int) -> None:
        """Refuse a layer while the host filesystem is (nearly) full; see the module doc."""
        self.disk_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.statvfs(self.disk_dir)
        free = st.f_bavail * st.f_frsize
        if free < min(disk_bytes, MIN_FREE_BYTES):
            raise DiskError(
                f"the runner's disk is full: {free >> 20} MiB free in {self.disk_dir}, "
                f"a {disk_bytes >> 20} MiB writable layer needs at least "
                f"{min(disk_bytes, MIN_FREE_BYTES) >> 20} MiB"
            )

    async def layer(self, disk_bytes: int) -> dict[str, Any]:
        """The template for ``disk_bytes`` (made now if needed), as the agent mounts it."""
        self.check_room(disk_bytes)
        cap = cap_blocks(disk_bytes)
        template = self._made.get(cap)
        if template is not None and template.path.exists():
            return template.layer()
        making = self._making.get(cap)
        if making is None:  # one thread makes each size; concurrent creates share it
            making = asyncio.ensure_future(asyncio.to_thread(make_template, self.disk_dir, cap))
            self._making[cap] = making
            making.add_done_callback(lambda _f: self._making.pop(cap, None))
        try:
            template = await asyncio.shield(making)
        except OSError as exc:
            raise DiskError(f"making the disk template for {disk_bytes} bytes: {exc}") from exc
        self._made[cap] = template
        return template.layer()
