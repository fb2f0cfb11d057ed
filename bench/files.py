"""File throughput and log-follow latency through the whole platform.

Run: ``.venv/bin/python bench/files.py [--sizes 1024] [--repeat 3]`` (as root). It starts
``sandboxd up`` in a temporary data directory and measures with our ``cwsandbox`` client over
loopback, each transfer ``--repeat`` times (p50 and p99 of the throughput, MB/s):

* write and read of files of each size (MiB) with ``write_file_streaming`` /
  ``read_file_streaming`` (constant memory), with how much the client's and the server's
  resident memory grew over all of them;
* ``write_file``/``read_file`` of a 16 MiB file, the "unary" row (whole files in memory;
  our client writes more than 1 MiB, and reads, over ``FileService`` where the server has
  it; the official client uses ``AddFile``/``RetrieveFile`` for both);
* log-follow latency: time from a line written by the main process to the same line
  arriving through ``stream_logs(follow=True)``, p50/p99;

beside a local ``cp`` between two files (the floor), the baseline named in
``bench/baselines.json`` (key ``files``; ``--record NAME`` replaces it), and whether podman
is installed. ``--up-arg`` passes options to ``sandboxd up`` (``--runner-link grpc``
measures the runner over loopback gRPC instead of the in-process link). Targets from issue
9: 1 GiB streaming write and read ≥ 500 MB/s in constant memory, 16 MiB unary write and
read ≥ 300 MB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from tests.support.processes import all_in_one

CHUNK = 1024 * 1024


def chunks(total: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    for _ in range(total // CHUNK):
        yield block


BASELINES = ROOT / "baselines.json"


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:8.1f} MB/s"


def rates(size: int, seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) throughput in MB/s; the p99 is the slowest run's."""
    ordered = sorted(size / s / 1e6 for s in seconds)
    return ordered[len(ordered) // 2], ordered[0]


def fmt_rates(pair: tuple[float, float]) -> str:
    return f"p50 {pair[0]:7.1f}  p99 {pair[1]:7.1f} MB/s"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024", help="file sizes in MiB, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each transfer")
    parser.add_argument("--log-lines", type=int, default=50)
    parser.add_argument("--record", metavar="NAME", help="save this run as the baseline NAME")
    parser.add_argument(
        "--up-arg",
        action="append",
        default=[],
        help="extra argument for sandboxd up (e.g. --up-arg=--runner-link --up-arg=grpc)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: dict[str, tuple[float, float]] = {}
    floors: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as data,
        all_in_one(Path(data), *args.up_arg) as up,
    ):
        os.environ["CWSANDBOX_BASE_URL"] = up.base_url
        os.environ["CWSANDBOX_API_KEY"] = up.api_key
        from cwsandbox import ResourceOptions, Sandbox

        server = up.proc.popen.pid
        big = ResourceOptions(
            requests={"cpu": "100m", "memory": "64Mi"}, limits={"cpu": "2", "memory": "3Gi"}
        )
        sandbox = Sandbox.run(resources=big)
        sandbox.exec(["true"]).result()
        sandbox.write_file("/tmp/warm", b"x").result()  # warm every path once
        list(sandbox.read_file_streaming("/tmp/warm"))
        server_before = rss_kib(server)
        client_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        server_peak = server_before
        for size_mib in sizes:
            size = size_mib * CHUNK
            writes, reads = [], []
            for _ in range(args.repeat):
                start = time.perf_counter()
                sandbox.write_file_streaming("/tmp/bench.bin", chunks(size)).result()
                writes.append(time.perf_counter() - start)
                server_peak = max(server_peak, rss_kib(server))
                start = time.perf_counter()
                digest = hashlib.sha256()
                received = 0
                for piece in sandbox.read_file_streaming("/tmp/bench.bin"):
                    digest.update(piece)
                    received += len(piece)
                reads.append(time.perf_counter() - start)
                server_peak = max(server_peak, rss_kib(server))
                assert received == size, (received, size)
            floor = mbps(size, local_cp_seconds(size)).strip() + " (local cp)"
            rows[f"write {size_mib} MiB (streaming)"] = rates(size, writes)
            rows[f"read {size_mib} MiB (streaming)"] = rates(size, reads)
            floors[f"write {size_mib} MiB (streaming)"] = floors[
                f"read {size_mib} MiB (streaming)"
            ] = floor
            sandbox.exec(["rm", "-f", "/tmp/bench.bin"]).result()
        client_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - client_before
        server_growth = server_peak - server_before
        payload = os.urandom(16 * CHUNK)
        unary_w, unary_r = [], []
        for _ in range(max(3, args.repeat)):
            start = time.perf_counter()
            sandbox.write_file("/tmp/unary.bin", payload).result()
            unary_w.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert sandbox.read_file("/tmp/unary.bin").result() == payload
            unary_r.append(time.perf_counter() - start)
        rows["write 16 MiB (unary)"] = rates(len(payload), unary_w)
        rows["read 16 MiB (unary)"] = rates(len(payload), unary_r)
        floors["write 16 MiB (unary)"] = floors["read 16 MiB (unary)"] = (
            mbps(len(payload), local_cp_seconds(len(payload))).strip() + " (local cp)"
        )
        sandbox.stop(graceful_shutdown_seconds=0).result()
        latencies = log_follow_latencies(args.log_lines)

    stored = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
    baseline = stored.get("files", {})
    print(f"\nsandboxd file throughput ({os.cpu_count()} CPUs, {args.repeat} runs each)")
    print(f"baseline: {baseline.get('name', 'none recorded')}")
    print(f"{'transfer':<28} {'this run':<30} {'baseline':<30} floor")
    for name, pair in rows.items():
        base = baseline.get("rows", {}).get(name)
        theirs = fmt_rates((base["p50_mbps"], base["p99_mbps"])) if base else "-"
        print(f"{name:<28} {fmt_rates(pair):<30} {theirs:<30} {floors.get(name, '-')}")
    print(
        f"memory growth over the streamed transfers: client {client_growth / 1024:.1f} MiB, "
        f"server (control plane + runner) {server_growth / 1024:.1f} MiB"
    )
    print("targets (issue 9): 1 GiB streaming >= 500 MB/s, 16 MiB unary >= 300 MB/s")
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"\nlog follow latency ({len(latencies)} lines): p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    podman = shutil.which("podman")
    where = f"installed at {podman} (not benchmarked)" if podman else "not installed"
    print(f"podman cp: {where}")
    if args.record:
        recorded = {
            name: {"p50_mbps": round(pair[0], 1), "p99_mbps": round(pair[1], 1)}
            for name, pair in rows.items()
        }
        stored["files"] = {"name": args.record, "rows": recorded}
        BASELINES.write_text(json.dumps(stored, indent=2) + "\n")


def local_cp_seconds(size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "a"
        with src.open("wb") as handle:
            for block in chunks(size):
                handle.write(block)
        start = time.perf_counter()
        subprocess.run(["cp", str(src), str(Path(tmp) / "b")], check=True)
        return time.perf_counter() - start


def log_follow_latencies(lines: int) -> list[float]:
    """The main process prints a wall-clock stamp every 50 ms; we measure arrival delay."""
    from cwsandbox import Sandbox

    script = (
        "import time\n"
        f"for _ in range({lines}):\n"
        "    print(time.time(), flush=True); time.sleep(0.05)\n"
    )
    sandbox = Sandbox.run("python3", "-c", script)
    sandbox.wait()
    latencies = []
    for line in sandbox.stream_logs(follow=True):
        try:
            sent = float(line.strip())
        except ValueError:
            continue
        latencies.append((time.time() - sent) * 1000)
        if len(latencies) >= lines:
            break
    sandbox.stop(graceful_shutdown_seconds=0).result()
    return latencies


if __name__ == "__main__":
    main()
