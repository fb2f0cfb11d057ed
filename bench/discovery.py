"""Discovery latency with 10,000 registered runners: p50 and p99 per query shape.

Run: ``.venv/bin/python bench/discovery.py`` (about a minute). It starts a real control plane,
connects 10,000 lightweight runners from a separate process (bench/runner_swarm.py), waits
until discovery lists them all, then times ListAvailableRunners / ListProfiles calls over real
gRPC on loopback. Each row prints p50 and p99 beside the baseline named in bench/baselines.json
(the issue's target, and the last recorded run of this machine when there is one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sandboxd_protocol.v1beta2 import discovery_pb2 as d
from sandboxd_protocol.v1beta2 import discovery_pb2_grpc

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from tests.support.processes import ControlPlaneProcess

BASELINES = ROOT / "baselines.json"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_calls(call: Callable[[], object], repeat: int) -> list[float]:
    for _ in range(5):
        call()  # warm up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def wait_for_all(stub: discovery_pb2_grpc.DiscoveryServiceStub, count: int) -> float:
    start = time.monotonic()
    while True:
        seen, token = 0, ""
        while True:
            page = stub.ListAvailableRunners(
                d.ListAvailableRunnersRequest(page_size=1000, page_token=token, healthy_only=True)
            )
            seen += len(page.runners)
            token = page.next_page_token
            if not token:
                break
        if seen >= count:
            return time.monotonic() - start
        if time.monotonic() - start > 300:
            raise SystemExit(f"only {seen}/{count} runners registered after 300 s")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--record", action="store_true", help="save this run as the baseline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlaneProcess(
            data_dir=Path(tmp), health_timeout=60, heartbeat_interval=10
        ).start()
        token = cp.create_join_token(max_uses=args.runners, ttl_seconds=3600)
        swarm = subprocess.Popen(
            [sys.executable, str(ROOT / "runner_swarm.py"), "--target", cp.target,
             "--count", str(args.runners)],
            stdout=sys.stderr,
            env={**os.environ, "SANDBOXD_JOIN_TOKEN": token},
        )  # fmt: skip
        try:
            channel = cp.channel()
            stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)  # type: ignore[no-untyped-call]
            took = wait_for_all(stub, args.runners)
            print(f"{args.runners} runners registered and healthy in {took:.1f} s")
            middle = stub.ListAvailableRunners(
                d.ListAvailableRunnersRequest(page_size=args.runners // 2)
            ).next_page_token
            scenarios: dict[str, Callable[[], object]] = {
                "runners, 100/page, BASIC, first page": lambda: stub.ListAvailableRunners(
                    d.ListAvailableRunnersRequest(page_size=100)
                ),
                "runners, 100/page, FULL, first page": lambda: stub.ListAvailableRunners(
                    d.ListAvailableRunnersRequest(page_size=100, view=d.RUNNER_VIEW_FULL)
                ),
                "runners, 100/page, FULL, middle page": lambda: stub.ListAvailableRunners(
                    d.ListAvailableRunnersRequest(
                        page_size=100, view=d.RUNNER_VIEW_FULL, page_token=middle
                    )
                ),
                "runners, filter group (1%)": lambda: stub.ListAvailableRunners(
                    d.ListAvailableRunnersRequest(page_size=100, runner_group_id="group-042")
                ),
                "runners, filter gpu_type (10%)": lambda: stub.ListAvailableRunners(
                    d.ListAvailableRunnersRequest(page_size=100, gpu_type="H100")
                ),
                "runners, filter profile+arch+healthy": lambda: stub.ListAvailableRunners(
                    d.ListAvailableRunnersRequest(
                        page_size=100,
                        profile_name="locked-down",
                        architecture="arm64",
                        healthy_only=True,
                        view=d.RUNNER_VIEW_FULL,
                    )
                ),
                "runners, filter matching nothing": lambda: stub.ListAvailableRunners(
                    d.ListAvailableRunnersRequest(page_size=100, runner_group_id="absent")
                ),
                "profiles, 100/page": lambda: stub.ListProfiles(
                    d.ListProfilesRequest(page_size=100)
                ),
                "profiles, filter gpu_type": lambda: stub.ListProfiles(
                    d.ListProfilesRequest(page_size=100, gpu_type="H100")
                ),
                "get runner": lambda: stub.GetAvailableRunner(
                    d.GetAvailableRunnerRequest(runner_id=f"bench-{args.runners // 2:05d}")
                ),
            }
            baselines = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
            target = baselines.get("target_p50_ms", 20.0)
            recorded = baselines.get("recorded", {})
            print(f"\n{'query':40} {'p50 ms':>8} {'p99 ms':>8}   "
                  f"{'target p50':>10} {'recorded p50':>12} {'recorded p99':>12}")  # fmt: skip
            results = {}
            for name, call in scenarios.items():
                samples = time_calls(call, args.repeat)
                p50, p99 = statistics.median(samples), percentile(samples, 0.99)
                results[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
                old = recorded.get(name, {})
                print(
                    f"{name:40} {p50:8.2f} {p99:8.2f}   {target:10.1f} "
                    f"{old.get('p50_ms', float('nan')):12.2f} "
                    f"{old.get('p99_ms', float('nan')):12.2f}"
                )
            worst = max(r["p50_ms"] for r in results.values())
            print(f"\nworst p50 {worst:.2f} ms vs target {target} ms: "
                  f"{'OK' if worst < target else 'MISSED'}")  # fmt: skip
            if args.record:
                baselines["recorded"] = results
                baselines.setdefault("target_p50_ms", 20.0)
                BASELINES.write_text(json.dumps(baselines, indent=2) + "\n")
            channel.close()
        finally:
            swarm.terminate()
            swarm.wait()
            cp.stop()


if __name__ == "__main__":
    main()
