"""What the disk-backed writable layer costs a create, step by step (root; no sandbox needed).

Run: ``.venv/bin/python bench/disk.py [--iterations 200]``. It times, in a temporary data
directory:

* making a template (``mkfs.ext4`` and calibration), per size, the first create of a size;
* making a layer (copy, loop device, detached mount): what the runner does ahead of need,
  in a thread, and on the create path only when no layer is ready;
* ``DiskLayers.take()`` with a layer ready: what the runner adds to a create;
* attaching it in a private mount namespace (``move_mount`` + ``chown``), what the agent
  adds, beside what the tmpfs layer before it cost there (mount, two ``mkdir``, ``chown``).

Whole creates, before and after, are in ``bench/local_backend.py`` ("create alone").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sandboxd.backends.local import syscalls as S
from sandboxd.backends.local.disk import DiskLayers
from sandboxd.backends.local.disk_template import cap_blocks, make_template


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(samples) * 1000:7.3f} ms  p99 {p99 * 1000:7.3f} ms"


def in_private_namespace(fds: list[int]) -> tuple[list[float], list[float]]:
    """Attach each layer as the agent does, and mount a tmpfs layer as before, in a child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        S.unshare(S.CLONE_NEWNS)
        S.mount(None, "/", None, S.MS_REC | S.MS_PRIVATE)
        os.chdir(tempfile.mkdtemp(prefix="bench-disk-ns-"))
        new, old = [], []
        for i, fd in enumerate(fds):
            os.mkdir(f"rw{i}")
            os.mkdir(f"tmp{i}")
            t0 = time.perf_counter()
            S.attach_mount(fd, f"rw{i}")
            os.close(fd)
            os.chown(f"rw{i}/upper", 1 << 30, 1 << 30)
            new.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            flags = S.MS_NOSUID | S.MS_NODEV
            S.mount("sandboxd-rw", f"tmp{i}", "tmpfs", flags, "size=1073741824,mode=0700")
            os.mkdir(f"tmp{i}/upper", 0o755)
            os.mkdir(f"tmp{i}/work", 0o700)
            os.chown(f"tmp{i}/upper", 1 << 30, 1 << 30)
            old.append(time.perf_counter() - t0)
        os.write(write_end, json.dumps([new, old]).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    new, old = json.loads(b"".join(chunks))
    return new, old


async def main(iterations: int) -> None:
    if os.geteuid() != 0:
        sys.exit("the disk benchmark needs root (loop devices, mounts)")
    data = Path(tempfile.mkdtemp(prefix="sandboxd-bench-disk-"))
    try:
        for size in (64 << 20, 1 << 30, 10 << 30, 100 << 30):
            t0 = time.perf_counter()
            make_template(data / "templates", cap_blocks(size))
            print(f"template of {size >> 20:>6} MiB (first create of a size) "
                  f"{(time.perf_counter() - t0) * 1000:7.1f} ms")  # fmt: skip
        layers = DiskLayers(data / "disk")
        template = await layers.template(cap_blocks(1 << 30))
        made = []
        fds = []
        for _ in range(min(iterations, 50)):
            t0 = time.perf_counter()
            fds.append(template.prepare())
            made.append(time.perf_counter() - t0)
        for fd in fds:
            os.close(fd)
        takes = []
        taken = []
        os.close(await layers.take(1 << 30))
        for _ in range(iterations):
            layers.refill()
            await layers.settle()
            t0 = time.perf_counter()
            taken.append(await layers.take(1 << 30))
            takes.append(time.perf_counter() - t0)
        new, old = in_private_namespace(taken)
        await layers.close()
        print(f"make a 1 GiB layer (ahead, in a thread)   {ms(made)}")
        print(f"take() a ready layer (runner, per create) {ms(takes)}")
        print(f"attach + chown (agent, per create)        {ms(new)}")
        print(f"  before: tmpfs mount + mkdirs + chown    {ms(old)}")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    asyncio.run(main(parser.parse_args().iterations))
