"""Mounting a sandbox's disk: an anonymous copy of a template image on a loop device.

The agent calls :func:`mount_layer` as real root inside the sandbox's private mount
namespace, before ``pivot_root``; ``disk.py`` says why the writable layer is built this way.
The steps and why each is shaped so:

1. **An unnamed image.** The copy is an ``O_TMPFILE`` in the runner's disk directory: it has
   no name on the host at any moment, so nothing can find, reuse or leak it, and the
   kernel frees its blocks as soon as the last reference goes.
2. **Only the template's data is copied** (its extents, listed by the runner; about 100 KiB
   for a 10 GiB layer) with ``copy_file_range``; the rest stays a hole.
3. **Loop device with ``LO_FLAGS_AUTOCLEAR``** (one ``LOOP_CONFIGURE``): the device detaches
   itself when its last user goes, which is the filesystem's unmount. ``LO_FLAGS_DIRECT_IO``
   keeps the image's blocks out of the host page cache: what the sandbox writes is cached
   once, in its own filesystem, and charged to its own memory cgroup, not cached twice.
4. **Mounted here, in the sandbox's mount namespace only.** When the last process of the
   sandbox exits, the namespace goes, the filesystem is unmounted, the loop device clears
   and the image's blocks are freed: destroy, a crashed runner or a killed agent cannot
   leave a mount, a device or a file behind.

Standard library only (runs in the agent).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Any

from .syscalls import MS_NODEV, MS_NOSUID, mount

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
_LOOP_INFO64_SIZE = 232
_LO_FLAGS_OFFSET = 52  # 5 x u64, then lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags
BLOCK_SIZE = 4096
# noinit_itable: the inode tables are holes, which read as zeros; never write them.
# discard: blocks the sandbox frees are punched out of the image, so the host gets them back.
# errors=remount-ro: an I/O error (say, the host disk filled under the sparse image) stops
# writes to this sandbox's layer instead of letting it build on a damaged filesystem.
MOUNT_OPTIONS = "noinit_itable,discard,errors=remount-ro"
_ATTACH_TRIES = 64


def copy_image(template: str, disk_dir: str, size: int, extents: list[list[int]]) -> int:
    """An anonymous (``O_TMPFILE``) copy of ``template``'s data extents; its descriptor."""
    src = os.open(template, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        dst = os.open(disk_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
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


def attach_loop(image_fd: int) -> tuple[int, int]:
    """Put ``image_fd`` on a free loop device (autoclear, direct I/O); ``(number, fd)``.

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
            return number, dev
    finally:
        os.close(ctl)
    raise OSError(errno.EBUSY, "no free loop device")


def mount_layer(layer: dict[str, Any], target: str) -> None:
    """Copy the template, attach it and mount its ext4 on ``target``; keep no descriptor.

    ``layer`` is what ``disk.DiskTemplates.layer`` made: ``template`` (path), ``size``
    (bytes) and ``extents`` (``[offset, length]`` pairs holding data).
    """
    template = str(layer["template"])
    image = copy_image(template, os.path.dirname(template), int(layer["size"]), layer["extents"])
    try:
        _number, dev = attach_loop(image)
    finally:
        os.close(image)  # the loop device holds the file now
    try:
        # The device by our descriptor, not by /dev path: nothing can swap it in between.
        mount(f"/proc/self/fd/{dev}", target, "ext4", MS_NOSUID | MS_NODEV, MOUNT_OPTIONS)
    finally:
        os.close(dev)  # the mount holds the device now; unmounting it clears the device
