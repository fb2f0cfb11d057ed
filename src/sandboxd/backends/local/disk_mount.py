"""One writable layer, made ready: a copy of a template on a loop device, mounted detached.

``disk.py`` says why a sandbox's layer is a filesystem of its own. This module makes one,
in the runner, ahead of need, as a **detached mount**: a file descriptor that holds a
mounted filesystem which is not attached anywhere, in no mount table. The agent attaches it
inside the sandbox's private mount namespace with one ``move_mount`` (``rootfs.py``). The
steps, and why each is shaped so:

1. **An unnamed image.** The copy is an ``O_TMPFILE`` in the runner's disk directory: it has
   no name on the host at any moment, so nothing can find, reuse or leak it, and the
   kernel frees its blocks as soon as the last reference goes.
2. **Only the template's data is copied** (its extents, listed once per template; about
   180 KiB for a 10 GiB layer) with ``copy_file_range``; the rest stays a hole.
3. **Loop device with ``LO_FLAGS_AUTOCLEAR``** (one ``LOOP_CONFIGURE``): the device detaches
   itself when its last user goes, which is the filesystem's unmount. ``LO_FLAGS_DIRECT_IO``
   keeps the image's blocks out of the host page cache: what the sandbox writes is cached
   once, in its own filesystem, and charged to its own memory cgroup, not cached twice.
4. **``fsopen``/``fsconfig``/``fsmount``**: a mount that belongs to no namespace until the
   agent moves it into the sandbox's, where it ends with the sandbox's last process. If
   the descriptor is closed unattached (the runner exits or crashes, a create fails), the
   kernel unmounts it; either way the loop device then clears and the image is freed, so
   nothing here can leave a mount, a device or a file behind.

Standard library only, like the rest of the backend's system-call helpers.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence

from .syscalls import (
    FSCONFIG_SET_FLAG,
    FSCONFIG_SET_STRING,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    FsSetting,
    mount_fs_detached,
)

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
_LOOP_INFO64_SIZE = 232
_LO_FLAGS_OFFSET = 52  # 5 x u64, then lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags
BLOCK_SIZE = 4096
_ATTACH_TRIES = 64

# noinit_itable: the inode tables are holes, which read as zeros; never write them.
# discard: blocks the sandbox frees are punched out of the image, so the host gets them back.
# nobarrier: no cache flushes. The layer never outlives the host (there is nothing to make
# durable), and with flushes a sandbox's every fsync, and the superblock writes of each
# mount and unmount, would flush the host disk's cache for everyone (2-20 ms each here).
# errors=remount-ro: an I/O error (say, the host disk filled under the sparse image) stops
# writes to this sandbox's layer instead of letting it build on a damaged filesystem.
MOUNT_FLAGS = ("noinit_itable", "discard", "nobarrier")
# no_prefetch_block_bitmaps: without it the kernel's ext4lazyinit thread reads every block
# group's bitmap of each new layer after its mount (80 reads through the loop device for a
# 10 GiB layer, a fifth of a millisecond of CPU per create); a group's bitmap is read when
# the sandbox first writes there instead. Optional: a kernel older than 5.9 does not know it,
# and the layer is mounted without it.
OPTIONAL_MOUNT_FLAGS = ("no_prefetch_block_bitmaps",)
MOUNT_STRINGS = (("errors", "remount-ro"),)


def copy_image(template: str, size: int, extents: Sequence[Sequence[int]]) -> int:
    """An anonymous (``O_TMPFILE``) copy of ``template``'s data extents; its descriptor."""
    src = os.open(template, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        dst = os.open(os.path.dirname(template), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(dst, size)
            for offset, length in extents:
                done = 0
                while done < length:
                    pos = offset + done
                    n = os.copy_file_range(src, dst, length - done, pos, pos)
                    if n <= 0:
                        raise OSError(errno.EIO, "short copy of the disk template", template)
                    done += n
        except BaseException:
            os.close(dst)
            raise
    finally:
        os.close(src)
    return dst


def attach_loop(image_fd: int) -> int:
    """Put ``image_fd`` on a free loop device (autoclear, direct I/O); the device's fd.

    ``LOOP_CTL_GET_FREE`` and ``LOOP_CONFIGURE`` are two calls, so another process (a second
    runner, ``losetup``) can take the same device in between: that answers ``EBUSY`` and we
    ask for the next free one.
    """
    info = bytearray(_LOOP_INFO64_SIZE)
    struct.pack_into("I", info, _LO_FLAGS_OFFSET, LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO)
    config = struct.pack("II", image_fd, BLOCK_SIZE) + bytes(info) + bytes(64)
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_ATTACH_TRIES):
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            try:
                dev = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # not yet in /dev (or removed again): ask once more
            try:
                fcntl.ioctl(dev, LOOP_CONFIGURE, config)
            except OSError as exc:
                os.close(dev)
                if exc.errno == errno.EBUSY:
                    continue
                where = f"/dev/loop{number}"
                raise OSError(exc.errno, f"LOOP_CONFIGURE: {exc.strerror}", where) from None
            return dev
    finally:
        os.close(ctl)
    raise OSError(errno.EBUSY, "no free loop device")


def mount_detached(dev_fd: int) -> int:
    """The ext4 on ``dev_fd`` as a detached mount (nosuid, nodev); its descriptor."""
    # The device by our descriptor, not by /dev path: nothing can swap it in between.
    settings: list[FsSetting] = [
        (FSCONFIG_SET_STRING, b"source", f"/proc/self/fd/{dev_fd}".encode())
    ]
    settings += [(FSCONFIG_SET_FLAG, name.encode(), None) for name in MOUNT_FLAGS]
    settings += [(FSCONFIG_SET_STRING, k.encode(), v.encode()) for k, v in MOUNT_STRINGS]
    return mount_fs_detached(
        "ext4",
        settings,
        made="mounting the layer's ext4",
        optional_flags=OPTIONAL_MOUNT_FLAGS,
        attrs=MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )


def prepare_layer(template: str, size: int, extents: Sequence[Sequence[int]]) -> int:
    """A fresh layer from ``template``, mounted detached, with ``upper`` and ``work`` made.

    Only the returned descriptor keeps it: close it and the kernel frees everything.
    """
    image = copy_image(template, size, extents)
    try:
        dev = attach_loop(image)
    finally:
        os.close(image)  # the loop device holds the file now
    try:
        mnt = mount_detached(dev)
    finally:
        os.close(dev)  # the mount holds the device now; unmounting it clears the device
    # Made here, ahead of need, not in the template (tried: ``mkfs -d``): these two
    # mkdirs read the layer's bitmaps and inode table into memory, which the agent's
    # overlay mount then finds there (it makes ``work/work`` and probes the filesystem).
    # With the directories in the template a layer was ready 0.7 ms sooner, but that
    # reading moved onto the create path: cold creates 6-9 % slower (paired, 30-40 rounds).
    try:
        os.mkdir("upper", 0o755, dir_fd=mnt)  # chowned to the sandbox's root by the agent
        os.mkdir("work", 0o700, dir_fd=mnt)
    except BaseException:
        os.close(mnt)
        raise
    return mnt
