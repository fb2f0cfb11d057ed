"""File throughput and log-follow latency through the whole platform.

Run: ``.venv/bin/python bench/files.py [--sizes 100,1024]`` (as root). It starts ``sandboxd up``
in a temporary data directory and measures with our ``cwsandbox`` client over loopback:

* write and read of files of each size (MiB) with ``write_file_streaming`` /
  ``read_file_streaming`` (constant memory), in MB/s;
* unary ``write_file``/``read_file`` of a 16 MiB file (the fast path under the 32 MiB cap);
* log-follow latency: time from a line written by the main process to the same line
  arriving through ``stream_logs(follow=True)``, p50/p99;

beside the same transfers with ``podman cp`` when podman is installed (it is reported
missing otherwise) and a local ``cp`` between two files as the floor.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:8.1f} MB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1024", help="file sizes in MiB, comma separated")
    parser.add_argument("--log-lines", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0:
        sys.exit("the file benchmark needs root (real sandboxes)")

    rows: list[tuple[str, str, str]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as data,
        all_in_one(Path(data)) as up,
    ):
        os.environ["CWSANDBOX_BASE_URL"] = up.base_url
        os.environ["CWSANDBOX_API_KEY"] = up.api_key
        from cwsandbox import ResourceOptions, Sandbox

        big = ResourceOptions(
            requests={"cpu": "100m", "memory": "64Mi"}, limits={"cpu": "2", "memory": "3Gi"}
        )
        sandbox = Sandbox.run(resources=big)
        sandbox.exec(["true"]).result()
        for size_mib in sizes:
            size = size_mib * CHUNK
            start = time.perf_counter()
            sandbox.write_file_streaming("/tmp/bench.bin", chunks(size)).result()
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            digest = hashlib.sha256()
            received = 0
            for piece in sandbox.read_file_streaming("/tmp/bench.bin"):
                digest.update(piece)
                received += len(piece)
            read_s = time.perf_counter() - start
            assert received == size, (received, size)
            floor = local_cp_seconds(size)
            rows.append(
                (f"write {size_mib} MiB (streaming)", mbps(size, write_s), mbps(size, floor))
            )
            rows.append((f"read {size_mib} MiB (streaming)", mbps(size, read_s), mbps(size, floor)))
            sandbox.exec(["rm", "-f", "/tmp/bench.bin"]).result()
        payload = os.urandom(16 * CHUNK)
        start = time.perf_counter()
        sandbox.write_file("/tmp/unary.bin", payload).result()
        unary_w = time.perf_counter() - start
        start = time.perf_counter()
        assert sandbox.read_file("/tmp/unary.bin").result() == payload
        unary_r = time.perf_counter() - start
        rows.append(("write 16 MiB (unary)", mbps(len(payload), unary_w), ""))
        rows.append(("read 16 MiB (unary)", mbps(len(payload), unary_r), ""))
        sandbox.stop(graceful_shutdown_seconds=0).result()
        latencies = log_follow_latencies(args.log_lines)

    print(f"\nsandboxd file throughput ({os.cpu_count()} CPUs)")
    print(f"{'transfer':<32} {'sandboxd':>14}   {'local cp (floor)':>16}")
    for name, ours, floor in rows:
        print(f"{name:<32} {ours:>14}   {floor:>16}")
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"\nlog follow latency ({len(latencies)} lines): p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    podman = shutil.which("podman")
    where = f"installed at {podman} (not benchmarked)" if podman else "not installed"
    print(f"podman cp: {where}")


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
