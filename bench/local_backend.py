"""Benchmark of the local backend, with plain bubblewrap as the floor.

Measures, on the busybox test image (built or taken from the image cache):

* create -> first exec result: ``create`` + ``start`` + ``exec true`` until its exit code;
* create alone: ``create`` (namespaces, cgroups, the writable layer and the agent's setup);
* exec round trip: ``exec true`` in a running sandbox until its exit code;
* 50 concurrent creates: 50 x (create + start + exec true) at once, wall time and p50/p99;

and the same shapes with ``bwrap`` (a fresh sandbox per command, since bwrap cannot enter an
existing one) and a plain ``fork+exec`` of ``true`` as absolute floor. Needs root.

    .venv/bin/python bench/local_backend.py [--iterations 100] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore, build_busybox_image


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def fmt(samples: list[float]) -> str:
    if not samples:
        return "n/a"
    return f"p50 {pct(samples, 0.5):7.2f} ms  p99 {pct(samples, 0.99):7.2f} ms"


async def timed(fn: Callable[[], Awaitable[None]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def exec_true(backend: LocalBackend, sid: str) -> None:
    session = await backend.exec(sid, ["true"])
    async for _ in session:
        pass
    code = await session.wait()
    await session.close()
    assert code == 0


class LocalBench:
    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.n = 0
        self.create_only: list[float] = []

    async def create_first_exec(self) -> tuple[float, str]:
        self.n += 1
        sid = f"bench-{self.n}"
        t0 = time.perf_counter()
        await self.backend.create(SandboxSpec(sid, "busybox:latest", memory_bytes=256 << 20))
        self.create_only.append(time.perf_counter() - t0)
        await self.backend.start(sid)
        await exec_true(self.backend, sid)
        return time.perf_counter() - t0, sid


async def spawn(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv)
    assert await proc.wait() == 0, argv


def bwrap_argv(rootfs: Path) -> list[str]:
    return [
        "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", str(rootfs), "/",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--", "/bin/true",
    ]  # fmt: skip


async def main(iterations: int, concurrency: int) -> None:
    if os.geteuid() != 0:
        sys.exit("the local backend benchmark needs root")
    data = Path(tempfile.mkdtemp(prefix="sandboxd-bench-"))
    images = ImageStore(data)
    rootfs = build_busybox_image(images, progress=lambda _l: None).rootfs  # for the bwrap floor
    backend = LocalBackend(data / "backend", images=images)
    bench = LocalBench(backend)
    rows: list[tuple[str, str, str]] = []
    try:
        warm, sid = await bench.create_first_exec()  # starts the zygote (one-off)
        await backend.destroy(sid)
        print(f"first create (zygote start included): {warm * 1000:.1f} ms", file=sys.stderr)

        create_lat = []
        bench.create_only.clear()
        for _ in range(iterations):
            dt, sid = await bench.create_first_exec()
            create_lat.append(dt)
            await backend.destroy(sid)
        create_only = list(bench.create_only)
        _, sid = await bench.create_first_exec()
        exec_lat = await timed(lambda: exec_true(backend, sid), iterations * 3)
        await backend.destroy(sid)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(bench.create_first_exec() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        conc_lat = [dt for dt, _ in results]
        await asyncio.gather(*(backend.destroy(s) for _, s in results))

        argv = bwrap_argv(rootfs)
        have_bwrap = shutil.which("bwrap") is not None
        bw_lat = await timed(lambda: spawn(*argv), iterations) if have_bwrap else []
        floor = await timed(lambda: spawn("/bin/true"), iterations)
        bw_wall = 0.0
        if have_bwrap:
            t0 = time.perf_counter()
            await asyncio.gather(*(spawn(*argv) for _ in range(concurrency)))
            bw_wall = time.perf_counter() - t0

        rows += [
            ("create -> first exec result", fmt(create_lat), fmt(bw_lat) + " (bwrap run true)"),
            ("create alone", fmt(create_only), ""),
            ("exec true round trip", fmt(exec_lat), fmt(floor) + " (host fork+exec true)"),
            (
                f"{concurrency} concurrent creates",
                f"wall {wall * 1000:7.1f} ms  {fmt(conc_lat)}",
                f"wall {bw_wall * 1000:7.1f} ms (bwrap run true x{concurrency})",
            ),
        ]
    finally:
        await backend.close()
        shutil.rmtree(data, ignore_errors=True)

    print(f"\nlocal backend vs floor  ({os.cpu_count()} CPUs, {iterations} iterations)\n")
    print(f"{'measure':<30} {'sandboxd local':<46} floor")
    for name, ours, theirs in rows:
        print(f"{name:<30} {ours:<46} {theirs}")
    podman = shutil.which("podman")
    where = f"installed at {podman} (not benchmarked)" if podman else "not installed"
    print(f"\npodman: {where}")
    print("targets: create->first exec <= 25 ms p50, exec true <= 3 ms p50")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.iterations, args.concurrency))
