"""Templates of the writable layer: one ext4 image per size, calibrated to the disk cap.

``mkfs.ext4`` takes several milliseconds and writes the same metadata every time for a given
size, so the runner runs it once per size and copies the result (``disk.py`` says why the
layer is a filesystem at all). The template is a sparse file (40 KiB of data for small
layers, about 180 KiB at 10 GiB, 1 MiB at 100 GiB) named ``ext4-v1-<blocks>.img`` in
``<data_dir>/disk``; it is never
changed once made, and it is made as a nameless file linked into place when complete, so a
crash leaves either a whole template or none.

Why these ``mkfs`` options: no journal, because the layer does not outlive the host
(sandboxes end with a reboot) so there is nothing to recover after a crash, and a journal
would cost writes and a kernel thread per sandbox; no resize inode, because the layer never
grows; ``-m 0``, because the sandbox's root is not the host's root, so blocks reserved for
root would only make the layer smaller than its cap; one inode per 16 KiB as ext4's default,
at least 4,096, so a small layer still holds a few thousand files and no layer holds
unbounded empty files.

Runs in the runner.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunnerExhausted
from .disk_mount import prepare_layer

BLOCK = 4096
INODE_SIZE = 256
BYTES_PER_INODE = 16384
MIN_INODES = 4096
MIN_BLOCKS = 256  # 1 MiB: smaller ext4 filesystems are not worth making
BLOCKS_PER_GROUP = 8 * BLOCK  # ext4's default and largest: one bitmap block per group
MIN_BLOCKS_PER_GROUP = 1024
TEMPLATE_VERSION = "ext4-v1"
MKFS = (
    "mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-m", "0",
    "-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=1,nodiscard",
)  # fmt: skip
_CALIBRATION_TRIES = 12
_SB_OFFSET = 1024
_EXT4_MAGIC = 0xEF53


class DiskError(RuntimeError):
    """The writable layer cannot be made (no room on the host, ``mkfs.ext4`` failed)."""


class DiskFull(DiskError, RunnerExhausted):
    """No room on the runner's disk for another writable layer (the runner's fault)."""

    def __init__(self, message: str) -> None:
        RunnerExhausted.__init__(self, "disk", message)


def disk_error(what: str, exc: OSError) -> DiskError:
    """``exc`` from making ``what`` as a DiskError; :class:`DiskFull` when it is ENOSPC."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (DiskFull if full else DiskError)(f"making {what}: {exc}")


@dataclass(frozen=True)
class Template:
    """A made template: its path, size in bytes and the ``[offset, length]`` holding data."""

    path: Path
    size: int
    extents: tuple[tuple[int, int], ...]

    def prepare(self) -> int:
        """A fresh layer from this template, mounted detached (``disk_mount.prepare_layer``)."""
        return prepare_layer(str(self.path), self.size, self.extents)


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
    disk_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
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
