"""Attacks on the disk cap: a sandbox must not grow, share, leave or see past its own layer.

The layer is a filesystem of the sandbox's own (``backends/local/disk.py``), so the cap is
its size and nothing inside the sandbox can change it: the attributes a quota would hang on
(project ids, immutable flags) are refused, the filesystem cannot be resized or remounted,
and no other sandbox's layer, loop device or image is reachable or even named. Each attack
runs as the sandbox's root through ``exec``, the way user code would try it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sandboxd.backends.conformance import Harness, run, sh

from .disk_support import loop_devices
from .image_refs import PYTHON

MiB = 1 << 20

ATTRIBUTES = r"""
import ctypes, errno, fcntl, json, os, stat, struct
out = {}
fd = os.open("/tmp/f", os.O_CREAT | os.O_RDWR)
def attempt(name, fn):
    try:
        fn()
        out[name] = "done"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def set_project():  # what a quota would hang on: FS_IOC_FSSETXATTR with a new project id
    attrs = bytearray(fcntl.ioctl(fd, 0x801C581F, bytes(28)))
    struct.pack_into("I", attrs, 0, struct.unpack_from("I", attrs, 0)[0] | 0x200)
    struct.pack_into("I", attrs, 12, 4242)
    fcntl.ioctl(fd, 0x401C5820, bytes(attrs))
def set_flag(flag):
    flags = struct.unpack("l", fcntl.ioctl(fd, 0x80086601, bytes(8)))[0]
    fcntl.ioctl(fd, 0x40086602, struct.pack("l", flags | flag))
attempt("project_id", set_project)
attempt("immutable", lambda: set_flag(0x10))
attempt("append_only", lambda: set_flag(0x20))
# EXT4_IOC_RESIZE_FS: grow the filesystem under the layer
attempt("resize", lambda: fcntl.ioctl(fd, 0x40086610, struct.pack("Q", 1 << 30)))
attempt("fitrim", lambda: fcntl.ioctl(os.open("/", os.O_RDONLY), 0xC0185879, bytes(24)))
libc = ctypes.CDLL(None, use_errno=True)
def call(result):
    if result != 0:
        raise OSError(ctypes.get_errno(), "failed")
attempt("remount", lambda: call(libc.mount(None, b"/", None, 0x20, b"size=1g")))  # MS_REMOUNT
attempt("unmount", lambda: call(libc.umount2(b"/", 2)))  # MNT_DETACH
attempt("mknod_loop", lambda: os.mknod("/tmp/loop0", stat.S_IFBLK | 0o600, os.makedev(7, 0)))
attempt("loop_control", lambda: os.open("/dev/loop-control", os.O_RDWR))
print(json.dumps(out))
"""

AROUND_A_FULL_LAYER = r"""
import errno, json, os, subprocess
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "done"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def fill(path):
    with open(path, "ab", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 65536)
attempt("fill", lambda: fill("/full"))
def via_proc_fd():
    fd = os.open("/full", os.O_WRONLY | os.O_APPEND)
    with open(f"/proc/self/fd/{fd}", "ab", buffering=0) as fh:
        fh.write(b"x" * (1 << 20))
attempt("proc_self_fd", via_proc_fd)
def fallocate():
    fd = os.open("/prealloc", os.O_CREAT | os.O_WRONLY)
    os.posix_fallocate(fd, 0, 8 << 20)
attempt("fallocate", fallocate)
def sparse_then_fill():
    with open("/sparse", "wb", buffering=0) as fh:
        fh.truncate(1 << 40)  # a hole costs nothing ...
        fh.seek(1 << 39)
        fh.write(b"y" * (1 << 20))  # ... writing into it does
attempt("sparse", sparse_then_fill)
attempt("hardlink_elsewhere", lambda: os.link("/full", "/dev/shm/full"))
attempt("rename_elsewhere", lambda: os.rename("/full", "/dev/shm/full"))
def many_links():
    os.mkdir("/links")
    for i in range(100):
        os.link("/full", f"/links/{i}")
attempt("links", many_links)
attempt("xattr", lambda: os.setxattr("/full", "user.big", b"z" * 60000))
def copy_up():  # an image file rewritten: the overlay must copy it into the full layer
    with open("/usr/lib/python3.11/os.py", "r+b") as fh:
        fh.write(b"x")
attempt("copy_up", copy_up)
df = subprocess.run(["df", "-k", "/"], capture_output=True, text=True).stdout.split()
out["df_size"], out["df_used"] = int(df[-5]), int(df[-4])
print(json.dumps(out))
"""


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def test_the_sandbox_cannot_change_what_caps_its_layer(
    aio: asyncio.Runner, local_harness: Harness, python_rootfs: Path
) -> None:
    async def attack() -> None:
        async with local_harness.sandbox(image=PYTHON, disk_bytes=32 * MiB) as sid:
            r = await run(local_harness, sid, ["python3", "-c", ATTRIBUTES])
            assert r.code == 0, r.stderr
            results = json.loads(r.stdout)
            assert all(v != "done" for v in results.values()), results
            assert results["project_id"] in ("EINVAL", "EPERM", "ENOTTY", "EOPNOTSUPP"), results
            assert results["immutable"] == results["append_only"] == "EPERM", results
            r = await run(local_harness, sid, sh("df -k / | tail -1"))
            assert int(r.stdout.split()[1]) == 32 * 1024  # still exactly the cap

    go(aio, attack())


def test_there_is_no_way_around_a_full_layer(
    aio: asyncio.Runner, local_harness: Harness, python_rootfs: Path
) -> None:
    """Once full, every other way to store data answers ENOSPC (or EXDEV), and df agrees."""
    cap = 48 * MiB

    async def attack() -> None:
        async with local_harness.sandbox(image=PYTHON, disk_bytes=cap) as sid:
            r = await run(local_harness, sid, ["python3", "-c", AROUND_A_FULL_LAYER])
            assert r.code == 0, r.stderr
            out = json.loads(r.stdout)
            for name in ("fill", "proc_self_fd", "fallocate", "sparse", "xattr", "copy_up"):
                assert out[name] == "ENOSPC", (name, out)
            for name in ("hardlink_elsewhere", "rename_elsewhere"):
                assert out[name] == "EXDEV", (name, out)  # other mounts are other devices
            assert out["links"] in ("done", "ENOSPC"), out  # links add names, not blocks
            assert out["df_size"] == cap // 1024 and out["df_used"] <= cap // 1024, out

    go(aio, attack())


def test_a_sandbox_sees_no_other_layer_device_or_image(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness
    data_dir = Path(getattr(h.backend, "data_dir"))  # noqa: B009

    async def attack() -> None:
        async with h.sandbox(disk_bytes=64 * MiB) as a, h.sandbox(disk_bytes=32 * MiB) as b:
            assert (await run(h, a, sh("echo NEIGHBOUR-SECRET >/secret-a"))).code == 0
            assert len(loop_devices(data_dir / "disk")) >= 2
            r = await run(h, b, ["cat", "/proc/self/mountinfo"])
            assert b"ext4" not in r.stdout and b"loop" not in r.stdout
            assert str(data_dir).encode() not in r.stdout
            probes = [
                "ls /sys/devices/virtual/block | grep .",  # masked: would name backing files
                "cat /sys/block/loop*/loop/backing_file",
                "cat /sys/dev/block/7:*/loop/backing_file",
                "ls /dev | grep loop",
                "mknod /tmp/loop0 b 7 0",
                "mknod /dev/loop-control c 10 237",
                "find / -xdev -name 'secret-a*' | grep .",
                "grep -rl NEIGHBOUR-SECRET /etc /tmp /root /home /var /secret-a",
            ]
            for cmd in probes:
                r = await run(h, b, sh(cmd))
                assert r.code != 0, (cmd, r)
            r = await run(h, b, sh("df -k / | tail -1"))
            assert int(r.stdout.split()[1]) == 32 * 1024  # its own cap, not a's
            # on the host the images have no name at all: only the templates are files
            for sid in (a, b):
                state_dir = data_dir / "sandboxes" / sid
                big = [p for p in state_dir.rglob("*") if p.is_file() and p.stat().st_size > MiB]
                assert big == []

    go(aio, attack())
