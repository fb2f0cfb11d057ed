"""Two builds side by side, each sample taken from both in turn: A/B comparisons to trust here.

Why: this development VM's speed drifts by a third within minutes, so two runs of
``bench/sandboxes.py`` ten minutes apart differ by more than most changes do. Here both
builds run their own ``sandboxd up`` at once (each idle while the other works), and every
sample is taken from the baseline and from this checkout in turn (the order alternating), so
a drift hits both alike. The median of the per-pair ratios (this / baseline) and the number
of pairs in which this checkout was faster say whether a change helps.

Run (as root)::

    git worktree add /tmp/base <rev>      # the build to compare against
    .venv/bin/python bench/paired.py --baseline /tmp/base [--rounds 40] \\
        [--measures warm,cold,egress,exec,burst]

A build is a checkout whose ``src/`` goes first on ``PYTHONPATH`` of its ``sandboxd up``; the
client is this checkout's for both. The baseline's native keeper is built from its own
``keeper.c`` when it has none. Measures: ``warm`` and ``cold`` (create → first exec result on
``bench/sandboxes.py``'s bench-warm and bench-cold profiles, 0.2 s apart so pools refill),
``egress`` (the same on the default profile: ``internet`` egress, networks made ahead, the
bench's "create -> first exec result" row),
``exec`` (``true`` in a sandbox kept running), ``burst`` (100 concurrent creates, each to its
first exec result; the sample is the burst's p99, 3 s apart). Beside the latencies it
prints the CPU time each build's ``sandboxd up`` process (control plane and its in-process
runner; not the zygote, keepers or agents) spent per sample, from ``/proc/PID/stat``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

IMAGE = "python:3.11"
MEASURES = ("warm", "cold", "egress", "exec", "burst")
PROFILES = {"warm": "bench-warm", "cold": "bench-cold"}
POOL_PAUSE_SECONDS = 0.2
BURST = 100
BURST_PAUSE_SECONDS = 3.0
NATIVE = Path("src/sandboxd/backends/local/native")
GCC_FLAGS = ["-O2", "-Wall", "-Wextra", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"]


def sample(measure: str, held: object) -> float:
    """One sample of ``measure`` against the ``sandboxd up`` of this process, in seconds."""
    import sandboxes  # bench/sandboxes.py

    if measure == "exec":
        started = time.perf_counter()
        held.exec(["true"]).result()  # type: ignore[attr-defined]
        return time.perf_counter() - started
    if measure == "egress":  # the default profile (internet egress, its networks made ahead)
        took, box = sandboxes.create_and_exec(IMAGE)
        box.stop(graceful_shutdown_seconds=0).result()  # type: ignore[attr-defined]
        time.sleep(POOL_PAUSE_SECONDS)
        return took
    if measure == "burst":
        with ThreadPoolExecutor(BURST) as pool:
            runs = list(pool.map(lambda _: sandboxes.create_and_exec(IMAGE), range(BURST)))
        for _, box in runs:
            box.stop(graceful_shutdown_seconds=0).result()  # type: ignore[attr-defined]
        time.sleep(BURST_PAUSE_SECONDS)
        return sorted(took for took, _ in runs)[int(BURST * 0.99) - 1]
    took, box = sandboxes.create_and_exec(IMAGE, [PROFILES[measure]], resources=False)
    box.stop(graceful_shutdown_seconds=0).result()  # type: ignore[attr-defined]
    time.sleep(POOL_PAUSE_SECONDS)
    return took


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker() -> None:
    """Start ``sandboxd up``, then answer one sample per measure name read from stdin."""
    import sandboxes

    from tests.support.processes import all_in_one

    with (
        tempfile.TemporaryDirectory(prefix="sandboxd-paired-config-") as config_dir,
        tempfile.TemporaryDirectory(prefix="sandboxd-paired-") as data,
    ):
        config = sandboxes.bench_config(Path(config_dir) / "platform.yaml")
        with all_in_one(Path(data), "--config", str(config)) as up:
            os.environ["CWSANDBOX_BASE_URL"] = up.base_url
            os.environ["CWSANDBOX_API_KEY"] = up.api_key
            from cwsandbox import Sandbox

            for measure in PROFILES:  # the zygote started, the pool filled
                sample(measure, None)
            held = Sandbox.run(container_image=IMAGE)
            held.exec(["true"]).result()
            print("ready", flush=True)
            pid = up.proc.popen.pid
            for line in sys.stdin:
                if line.strip() not in MEASURES:
                    break
                cpu = process_cpu_seconds(pid)
                took = sample(line.strip(), held)
                print(f"{took:.6f} {process_cpu_seconds(pid) - cpu:.6f}", flush=True)
            held.stop(graceful_shutdown_seconds=0).result()


class Build:
    """One build's worker process."""

    def __init__(self, name: str, checkout: Path) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=f"{checkout / 'src'}:{ROOT.parent}")
        env.pop("CWSANDBOX_BASE_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        while (line := self.proc.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            sys.exit(f"{name}: its sandboxd up did not start")

    def sample(self, measure: str) -> tuple[float, float]:
        """One sample: its latency and its ``sandboxd up``'s CPU time, in seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(measure + "\n")
        self.proc.stdin.flush()
        took, cpu = self.proc.stdout.readline().split()
        return float(took), float(cpu)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(120)


def ensure_native_keeper(checkout: Path) -> None:
    """Build the baseline's ``sandboxd-keeper`` from its own source when it has none."""
    binary = checkout / NATIVE / "sandboxd-keeper"
    if not binary.exists():
        print(f"building {binary}", file=sys.stderr)
        source = checkout / NATIVE / "keeper.c"
        subprocess.run(["gcc", *GCC_FLAGS, "-static", "-o", str(binary), str(source)], check=True)


def main() -> None:
    """Parse arguments; run the worker, or both builds and the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="checkout to compare this one against")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--measures", default="warm,cold,exec")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    if os.geteuid() != 0:
        sys.exit("the paired benchmark needs root (real namespaces and cgroups)")
    if args.baseline is None or not (args.baseline / "src" / "sandboxd").is_dir():
        sys.exit("--baseline must be a checkout (a directory with src/sandboxd)")
    measures = args.measures.split(",")
    if unknown := set(measures) - set(MEASURES):
        sys.exit(f"unknown measures {sorted(unknown)}; known: {', '.join(MEASURES)}")
    ensure_native_keeper(args.baseline)
    builds = (Build("baseline", args.baseline), Build("this", ROOT.parent))
    taken: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in measures}
    cpu: dict[str, list[float]] = {m: [0.0, 0.0] for m in measures}
    try:
        for round_number in range(args.rounds):
            for measure in measures:
                order = (0, 1) if round_number % 2 == 0 else (1, 0)
                for index in order:
                    took, spent = builds[index].sample(measure)
                    taken[measure][index].append(took)
                    cpu[measure][index] += spent
    finally:
        for build in builds:
            build.close()
    print(f"\npaired: {args.baseline} (baseline) against {ROOT.parent} (this), "
          f"{args.rounds} rounds, order alternating")  # fmt: skip
    header = ("measure", "baseline p50", "this p50", "this/base", "this faster", "up CPU/sample")
    print("{:8} {:>13} {:>10} {:>10} {:>12} {:>22}".format(*header))
    for measure, (base, this) in taken.items():
        ratios = [b / a for a, b in zip(base, this, strict=True)]
        faster = sum(r < 1 for r in ratios)
        base_ms, this_ms = statistics.median(base) * 1000, statistics.median(this) * 1000
        base_cpu, this_cpu = (spent / len(base) * 1000 for spent in cpu[measure])
        print(
            f"{measure:8} {base_ms:10.2f} ms {this_ms:7.2f} ms"
            f" {statistics.median(ratios):10.3f} {faster:>7}/{len(ratios)}"
            f" {base_cpu:8.2f} → {this_cpu:.2f} ms"
        )


if __name__ == "__main__":
    main()
