"""Create time of sandboxes with ``internet`` egress on the local backend, and its egress part.

Why a benchmark of its own: the egress setup (namespace, veth, one ``iptables-restore``
transaction) is the largest single part of creating a networked sandbox, and the rule set
both grows with the number of live sandboxes (``iptables-nft-restore --noflush`` reads the
table first) and with the number of rules each sandbox adds. This times, on the busybox
image:

* create -> started, with ``internet`` egress, with no other sandbox alive;
* the same while ``--background`` other internet sandboxes are alive (a busy runner);
* in both, the part spent in ``NetworkManager.setup`` and in teardown.

By default no network is made ahead (``--ready-networks 0``), so every create makes its own,
as a create does in a burst that empties the pool: that is what the egress columns time.
With ``--ready-networks 4`` (the backend's default) creates take a network made ahead and
the setup column is mostly empty ("-").

    .venv/bin/python bench/egress.py [--iterations 30] [--background 40] [--ready-networks 0]
    (as root)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sandboxd.backends.base import EgressType, NetworkSpec, SandboxSpec
from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.network import NetworkManager
from sandboxd.images import ImageStore, build_busybox_image


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def fmt(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"p50 {pct(samples, 0.5):6.2f} ms  p99 {pct(samples, 0.99):6.2f} ms"


class Timed:
    """Wraps ``NetworkManager.setup``/``teardown`` of one backend to collect their durations."""

    def __init__(self, net: NetworkManager) -> None:
        self.setup: list[float] = []
        self.teardown: list[float] = []
        setup, teardown = net.setup, net.teardown

        async def timed_setup(*args: object, **kw: object) -> None:
            t0 = time.perf_counter()
            await setup(*args, **kw)  # type: ignore[arg-type]
            self.setup.append(time.perf_counter() - t0)

        async def timed_teardown(*args: object, **kw: object) -> None:
            t0 = time.perf_counter()
            await teardown(*args, **kw)  # type: ignore[arg-type]
            self.teardown.append(time.perf_counter() - t0)

        net.setup = timed_setup  # type: ignore[method-assign]
        net.teardown = timed_teardown  # type: ignore[method-assign]

    def reset(self) -> None:
        self.setup.clear()
        self.teardown.clear()


async def main(iterations: int, background: int, ready_networks: int) -> None:
    if os.geteuid() != 0:
        sys.exit("the egress benchmark needs root")
    data = Path(tempfile.mkdtemp(prefix="sandboxd-bench-"))
    images = ImageStore(data)
    build_busybox_image(images, progress=lambda _l: None)
    backend = LocalBackend(data / "backend", images=images, ready_networks=ready_networks)
    timer = Timed(backend._net)
    network = NetworkSpec(egress=EgressType.INTERNET)
    n = 0

    async def create() -> tuple[float, str]:
        nonlocal n
        n += 1
        sid = f"bench-{n}"
        t0 = time.perf_counter()
        spec = SandboxSpec(sid, "busybox:latest", memory_bytes=64 << 20, network=network)
        await backend.create(spec)
        await backend.start(sid)
        return time.perf_counter() - t0, sid

    rows = []
    alive: list[str] = []
    try:
        _, sid = await create()  # starts the zygote
        await backend.destroy(sid)
        for label, extra in (("idle runner", 0), (f"{background} others alive", background)):
            while len(alive) < extra:
                alive.append((await create())[1])
            timer.reset()
            lat = []
            for _ in range(iterations):
                dt, sid = await create()
                lat.append(dt)
                await backend.destroy(sid)
            rows.append((label, fmt(lat), fmt(timer.setup), fmt(timer.teardown)))
    finally:
        for sid in alive:
            await backend.destroy(sid)
        await backend.close()
        shutil.rmtree(data, ignore_errors=True)
    print(
        f"\ninternet egress, {os.cpu_count()} CPUs, {iterations} iterations, "
        f"{ready_networks} networks made ahead\n"
    )
    print(f"{'runner':<18} {'create -> started':<30} {'egress setup':<30} teardown")
    for row in rows:
        print(f"{row[0]:<18} {row[1]:<30} {row[2]:<30} {row[3]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--background", type=int, default=40)
    parser.add_argument(
        "--ready-networks", type=int, default=0, help="networks made ahead (backend: 4)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.iterations, args.background, args.ready_networks))
