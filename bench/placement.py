"""Placement with 10,000 runners: event-loop time of one Start's scheduling work, p50 and p99.

Run: ``.venv/bin/python bench/placement.py [--runners 10000] [--repeat 300] [--record NAME]``
(a few seconds per scenario). Unlike ``bench/discovery.py`` no process is started: placement
runs on the control plane's event loop without awaiting, so its cost is exactly the CPU time
of ``place()`` on a live :class:`RunnerRegistry`. The registry is built the way the control
plane builds it (``register()`` messages, bindings from a configuration):

* 10,000 runners in 100 groups, a quarter of them arm64; every 10th has 8 GPUs (H100 or
  A100) and its own configuration entry binding a ``gpu`` profile as its default; the rest
  get ``default_bindings`` (``default``, ``locked-down``);
* mixed load: each runner holds 0-7 reservations of assorted sizes, some of them GPUs;
* each timed call is ``place()`` followed by ``reserve()`` and ``release()`` of what it
  chose (the capacity bookkeeping a Start and its end cost), or ``place()`` raising for a
  request that nothing can host (the explained rejection), whose trailer size is printed.

Each row is printed beside the baseline in ``bench/baselines.json`` (key ``placement``;
``--record NAME`` replaces it with this run). Target: p50 <= 2 ms for requests that fit.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from sandboxd.config import parse_config
from sandboxd.controlplane.placement import place
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.start_request import parse_start_request
from sandboxd.errors import ApiError, status_trailers
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g

BASELINES = ROOT / "baselines.json"
TARGET_P50_MS = 2.0
GIB = 1024**3

PROFILES = """
profiles:
  - display_name: default
    spec:
      container_image: python:3.11
      resource_defaults:
        {cpu_request: 500m, memory_request: 512Mi, cpu_limit: "1", memory_limit: 1Gi}
      resource_ceilings: {cpu: "8", memory: 32Gi, disk: 10Gi, pids: 4096}
      network:
        egress: {default: internet, modes: {internet: {type: internet}, none: {type: none}}}
        ingress: {default: internal, modes: {public: {type: public}, internal: {type: internal}}}
  - display_name: locked-down
    spec:
      container_image: python:3.11
      resource_defaults:
        {cpu_request: 50m, memory_request: 64Mi, cpu_limit: 500m, memory_limit: 512Mi}
      resource_ceilings: {cpu: "2", memory: 2Gi, disk: 2Gi, pids: 512}
      network:
        egress: {default: none, modes: {none: {type: none}}}
  - display_name: gpu
    spec:
      container_image: python:3.11
      gpu_types: [H100, A100]
      resource_defaults: {cpu_request: "4", memory_request: 32Gi}
      resource_ceilings: {cpu: "32", memory: 256Gi, gpu: 8}
      network:
        egress: {default: internet, modes: {internet: {type: internet}}}
default_bindings:
  - {profile: default, is_default: true}
  - {profile: locked-down}
"""


def is_gpu(index: int) -> bool:
    return index % 10 == 0


def runner_id(index: int) -> str:
    return f"bench-{index:05d}"


def config_text(count: int) -> str:
    entries = [
        f"  - runner_id: {runner_id(i)}\n"
        "    bindings: [{profile: gpu, is_default: true}, {profile: default}]\n"
        for i in range(count)
        if is_gpu(i)
    ]
    return PROFILES + ("runners:\n" + "".join(entries) if entries else "")


def capabilities(index: int) -> runner_pb2.Capabilities:
    gpus = 8 if is_gpu(index) else 0
    return runner_pb2.Capabilities(
        cpu_millicores=64_000,
        memory_bytes=512 * GIB,
        gpu_count=gpus,
        gpu_types=(["H100"] if index % 20 == 0 else ["A100"]) if gpus else [],
        architectures=["arm64" if index % 4 == 0 else "amd64"],
        hostname=f"host-{index}",
        backends=["local"],
        images=["python:3.11", "busybox:latest"],
    )


def build_registry(count: int, seed: int) -> RunnerRegistry:
    registry = RunnerRegistry(parse_config(config_text(count), "bench.yaml"), health_timeout=3600)
    rng = random.Random(seed)
    for i in range(count):
        registry.register(
            runner_pb2.Register(
                runner_id=runner_id(i),
                runner_group_id=f"group-{i % 100:03d}",
                capabilities=capabilities(i),
                version="bench",
            )
        )
        for n in range(rng.randrange(8)):
            registry.reserve(
                runner_id(i),
                f"load-{i}-{n}",
                runner_pb2.Reservation(
                    cpu_millicores=rng.choice((100, 500, 1000, 4000)),
                    memory_bytes=rng.choice((128, 512, 1024, 8192)) * 1024**2,
                    gpu_count=rng.randrange(3) if is_gpu(i) else 0,
                ),
            )
    return registry


def request(**fields: object) -> g.StartSandboxRequest:
    fields.setdefault("command", "sleep")
    return g.StartSandboxRequest(**fields)  # type: ignore[arg-type]


SCENARIOS: dict[str, g.StartSandboxRequest] = {
    "default profile": request(),
    "named profile (locked-down)": request(profile_names=["locked-down"]),
    "GPU type H100 x1": request(
        resource_limits=g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1, gpu_type="H100"))
    ),
    "matches nothing (GPU type B200)": request(
        resource_limits=g.ResourceRequest(gpu=g.GpuRequest(gpu_count=1, gpu_type="B200"))
    ),
    "matches nothing (locked-down+internet)": request(
        profile_names=["locked-down"], network=g.NetworkOptions(egress_mode="internet")
    ),
}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(registry: RunnerRegistry, message: g.StartSandboxRequest) -> Callable[[int], float]:
    parsed = parse_start_request(message)

    def once(serial: int) -> float:
        start = time.perf_counter()
        try:
            chosen = place(registry, parsed)
        except ApiError:
            return (time.perf_counter() - start) * 1000
        sandbox_id = f"bench-sandbox-{serial}"
        amount = runner_pb2.Reservation(
            cpu_millicores=chosen.cpu_request,
            memory_bytes=chosen.memory_request,
            gpu_count=chosen.gpu_count,
        )
        registry.reserve(chosen.runner.runner_id, sandbox_id, amount)
        registry.release(chosen.runner.runner_id, sandbox_id)
        return (time.perf_counter() - start) * 1000

    return once


def rejection_size(registry: RunnerRegistry, message: g.StartSandboxRequest) -> str:
    try:
        place(registry, parse_start_request(message))
    except ApiError as error:
        size = sum(len(key) + len(value) for key, value in status_trailers(error))
        return f"{len(error.violations)} violations, trailer {size} bytes"
    return "placed"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runners", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--record", metavar="NAME", help="save this run as the baseline NAME")
    args = parser.parse_args()

    started = time.perf_counter()
    registry = build_registry(args.runners, args.seed)
    print(f"{args.runners} runners registered in {time.perf_counter() - started:.1f} s")

    stored = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
    baseline = stored.get("placement", {})
    print(f"baseline: {baseline.get('name', 'none recorded')}")
    print(f"{'request':40} {'p50 ms':>8} {'p99 ms':>8}   {'base p50':>9} {'base p99':>9}")
    results: dict[str, dict[str, float]] = {}
    for name, message in SCENARIOS.items():
        once = timed(registry, message)
        repeat = args.repeat if "nothing" not in name else max(20, args.repeat // 10)
        for serial in range(3):
            once(-serial - 1)  # warm up
        samples = [once(serial) for serial in range(repeat)]
        p50, p99 = statistics.median(samples), percentile(samples, 0.99)
        results[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
        old = baseline.get("rows", {}).get(name, {})
        print(
            f"{name:40} {p50:8.3f} {p99:8.3f}   {old.get('p50_ms', float('nan')):9.3f} "
            f"{old.get('p99_ms', float('nan')):9.3f}"
        )
    for name, message in SCENARIOS.items():
        if "nothing" in name:
            print(f"rejection of '{name}': {rejection_size(registry, message)}")
    fits = [r["p50_ms"] for n, r in results.items() if "nothing" not in n]
    worst = max(fits)
    print(
        f"worst p50 of requests that fit {worst:.3f} ms vs target {TARGET_P50_MS} ms: "
        f"{'OK' if worst <= TARGET_P50_MS else 'MISSED'}"
    )
    if args.record:
        stored["placement"] = {"name": args.record, "rows": results}
        BASELINES.write_text(json.dumps(stored, indent=2) + "\n")


if __name__ == "__main__":
    main()
