"""Exec `true` after idle gaps: latency and CPU of `sandboxd up` against the pause before each.

Why: requests that follow each other (the exec row of ``sandboxes.py``) and requests after
a pause (its warm-pool row, creates 200 ms apart; most real agents) cost differently on a
VM whose cores run other work while it idles. This prints, for each gap, the exec's p50 and
p99 and the CPU ``up`` spent on it (all its threads, from ``/proc``), so a change to the
request path can be judged at both ends, and a machine's idle penalty read off one run.

Usage (root): ``.venv/bin/python bench/idle_gap.py [--samples 25] [--gaps 0,10,50,200,500]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from sandboxes import bench_config, create_and_exec, fmt

from tests.support.processes import all_in_one


def cpu_ms(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, in ms (``/proc/PID/task/*/schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=25, help="execs per gap")
    parser.add_argument("--gaps", default="0,10,50,200,500", help="idle gaps in ms")
    parser.add_argument("--image", default="python:3.11")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the sandbox benchmark needs root (real namespaces and cgroups)")
    gaps = [float(g) / 1000 for g in args.gaps.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="sandboxd-bench-config-") as config_dir,
        tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as data,
    ):
        config = bench_config(Path(config_dir) / "platform.yaml")
        with all_in_one(Path(data), "--config", str(config)) as up:
            os.environ["CWSANDBOX_BASE_URL"] = up.base_url
            os.environ["CWSANDBOX_API_KEY"] = up.api_key
            up_pid = up.proc.popen.pid
            _, sandbox = create_and_exec(args.image)
            for _ in range(30):  # the code paths are loaded before anything is timed
                sandbox.exec(["true"]).result()  # type: ignore[attr-defined]
            print(f"exec `true` after an idle gap ({args.samples} per gap, 2 CPUs shared)")
            print(f"{'gap':>9}  {'exec':<36} up CPU p50")
            for gap in gaps:
                latencies, cpus = [], []
                for _ in range(args.samples):
                    if gap:
                        time.sleep(gap)
                    before, start = cpu_ms(up_pid), time.perf_counter()
                    sandbox.exec(["true"]).result()  # type: ignore[attr-defined]
                    latencies.append(time.perf_counter() - start)
                    cpus.append(cpu_ms(up_pid) - before)
                cpus.sort()
                print(f"{gap * 1000:6.0f} ms  {fmt(latencies):<36} {cpus[len(cpus) // 2]:.2f} ms")
            sandbox.stop(graceful_shutdown_seconds=0).result()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
