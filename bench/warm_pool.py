"""Warm sandboxes on the local backend alone: claim → first exec beside create → first exec.

Times, on the busybox test image, interleaved so both see the same machine:

* claim → first exec result: ``claim`` of a slot ``prepare``d beforehand (untimed) +
  ``exec true`` until its exit code — what a Start served by a warm pool costs the runner;
* claim alone (hostname, records moved into the sandbox's id, main process started);
* create → first exec result: ``create`` + ``start`` + ``exec true`` of the same spec, cold;
* prepare: building a slot (what a refill costs, in the background).

The whole-platform numbers (client → control plane → runner) are in ``bench/sandboxes.py``
(rows "warm pool" and "same shape, cold"). Needs root.

    .venv/bin/python bench/warm_pool.py [--iterations 50] [--egress none|internet]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from sandboxd.backends.base import EgressType, NetworkSpec, SandboxSpec
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore, build_busybox_image

PAUSE_SECONDS = 0.05


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def fmt(samples: list[float]) -> str:
    return f"p50 {pct(samples, 0.5):7.2f} ms  p99 {pct(samples, 0.99):7.2f} ms"


async def exec_true(backend: LocalBackend, sid: str) -> None:
    session = await backend.exec(sid, ["true"])
    async for _ in session:
        pass
    assert await session.wait() == 0
    await session.close()


async def main(iterations: int, egress: str) -> None:
    with tempfile.TemporaryDirectory(prefix="sandboxd-warm-bench-") as tmp:
        store = ImageStore(Path(tmp))  # built from the machine-wide image cache
        build_busybox_image(store, progress=lambda _line: None)
        backend = LocalBackend(Path(tmp) / "backend", images=store)
        network = NetworkSpec(egress=EgressType(egress))
        template = SandboxSpec("t", "busybox:latest", memory_bytes=256 << 20, network=network)
        prepare, claim, warm, cold = [], [], [], []
        try:
            for i in range(iterations + 1):
                t0 = time.perf_counter()
                slot = await backend.prepare(template)
                prepare.append(time.perf_counter() - t0)
                await asyncio.sleep(PAUSE_SECONDS)
                sid = f"warm-{i}"
                t0 = time.perf_counter()
                await backend.claim(slot, dataclasses.replace(template, sandbox_id=sid))
                t1 = time.perf_counter()
                await exec_true(backend, sid)
                t2 = time.perf_counter()
                await backend.destroy(sid)
                await asyncio.sleep(PAUSE_SECONDS)
                sid = f"cold-{i}"
                t3 = time.perf_counter()
                await backend.create(dataclasses.replace(template, sandbox_id=sid))
                await backend.start(sid)
                await exec_true(backend, sid)
                t4 = time.perf_counter()
                await backend.destroy(sid)
                if i:  # the first of each starts the zygote, makes templates
                    claim.append(t1 - t0)
                    warm.append(t2 - t0)
                    cold.append(t4 - t3)
        finally:
            await backend.close()
    print(f"\nwarm sandboxes, local backend alone ({os.cpu_count()} CPUs, busybox, "
          f"egress {egress}, {iterations} iterations)")  # fmt: skip
    print(f"{'claim -> first exec result':<30} {fmt(warm)}")
    print(f"{'claim alone':<30} {fmt(claim)}")
    print(f"{'create -> first exec (cold)':<30} {fmt(cold)}")
    print(f"{'prepare (background refill)':<30} {fmt(prepare[1:])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--egress", choices=["none", "internet"], default="none")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the warm pool benchmark needs root (real namespaces and cgroups)")
    asyncio.run(main(args.iterations, args.egress))
