"""Every row of the platform's performance table in one run, each beside its floor.

Run: ``.venv/bin/python bench/all.py [--quick]`` (as root; about 10 minutes on 2 cores, 3
with ``--quick``). It runs, one after another, each in a fresh ``sandboxd up``:

* ``bench/sandboxes.py --concurrency 100``: create → first exec (cold, and from a warm pool
  where the branch has them), exec ``true`` round trip, 100 concurrent creates each until its
  first exec result; floors: the local backend alone, plain ``bwrap``, ``unshare``, and the
  same gRPC calls to a server that answers at once (``bench/grpc_floor.py``);
* ``bench/density.py --count 1000``: idle sandboxes held with the embedded defaults, host
  memory per idle sandbox, exec p50/p99 while all exist; floors: ``nsenter`` and ``unshare``;
* ``bench/files.py --sizes 1024``: 1 GiB streaming write and read, 16 MiB unary; floor: ``cp``;
* the disk row here: write 4 GiB in a sandbox with a 1 GiB memory limit and a 10 GiB disk
  (MB/s and the exit status), then past the cap (must end in ENOSPC); floor: ``dd`` to a file
  on the host's disk.

Each script prints its rows with p50 and p99 beside the floor and the baseline recorded in
``bench/baselines.json``; this one prints a header before each and a list of the scripts
that failed at the end (exit status 1 when one did). ``--quick`` runs smaller sizes (a smoke
run of the whole table, not numbers to quote).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

GIB = 1 << 30
DISK_CONFIG = """
profiles:
  - display_name: big-disk
    description: 1 GiB of memory, 10 GiB of disk, to write 4 GiB in.
    spec:
      container_image: python:3.11
      resource_defaults: {cpu_request: 100m, memory_request: 64Mi, cpu_limit: "1",
                          memory_limit: 1Gi}
      resource_ceilings: {cpu: "2", memory: 1Gi, disk: 10Gi, pids: 512}
      network:
        egress:
          default: none
          modes:
            none: {type: none}
default_bindings:
  - profile: big-disk
    is_default: true
"""


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 88 - len(title)), flush=True)


def run_script(argv: list[str]) -> bool:
    """Run one bench script with this interpreter; its output goes straight to ours."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, *argv], cwd=ROOT.parent, check=False)
    print(f"({argv[0]}: {time.monotonic() - started:.0f} s, exit {done.returncode})", flush=True)
    return done.returncode == 0


def host_dd_mb_s(size: int) -> float:
    """The floor: ``dd`` of ``size`` zero bytes to a file on the host's disk, synced."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        target = Path(tmp) / "floor.bin"
        started = time.perf_counter()
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size >> 20}",
             "conv=fsync", "status=none"],
            check=True,
        )  # fmt: skip
        return size / (time.perf_counter() - started) / 1e6


def disk_row(size: int) -> bool:
    """Write ``size`` in a 1 GiB-memory, 10 GiB-disk sandbox, then fill it to ENOSPC."""
    from cwsandbox import Sandbox
    from tests.support.processes import all_in_one

    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-disk-") as tmp:
        config = Path(tmp) / "platform.yaml"
        config.write_text(DISK_CONFIG)
        with all_in_one(Path(tmp) / "data", "--config", str(config)) as up:
            os.environ["CWSANDBOX_BASE_URL"] = up.base_url
            os.environ["CWSANDBOX_API_KEY"] = up.api_key
            with Sandbox.run() as sandbox:
                started = time.perf_counter()
                dd = f"dd if=/dev/zero of=/big bs=1M count={size >> 20} conv=fsync status=none"
                wrote = sandbox.exec(["sh", "-c", dd]).result()
                seconds = time.perf_counter() - started
                fill = "cat /dev/zero > /fill; echo exit=$?"
                filled = sandbox.exec(["sh", "-c", fill]).result()
    ok = wrote.returncode == 0 and "No space left on device" in filled.stderr
    floor = host_dd_mb_s(size)
    print(f"{'measure':<52} {'this run':<22} floor (host dd)")
    print(
        f"{f'write {size / GIB:g} GiB, 1 GiB memory, 10 GiB disk':<52} "
        f"{f'{size / seconds / 1e6:7.0f} MB/s exit {wrote.returncode}':<22} {floor:7.0f} MB/s"
    )
    cap = "ENOSPC" if "No space left on device" in filled.stderr else filled.stderr.strip()
    print(f"{'then write past the 10 GiB cap':<52} {cap}")
    print("target: works (exit 0, not an OOM kill: 137); ENOSPC at the disk cap")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the platform benchmarks need root")
    quick = args.quick
    runs = [
        ("create, exec, concurrent creates", ["bench/sandboxes.py", "--concurrency",
         "20" if quick else "100", "--iterations", "10" if quick else "50"]),
        ("idle sandboxes per host", ["bench/density.py", "--count", "50" if quick else "1000"]),
        ("files", ["bench/files.py", "--sizes", "64" if quick else "1024"]),
    ]  # fmt: skip
    failed: list[str] = []
    for title, argv in runs:
        section(title)
        if not run_script(argv):
            failed.append(argv[0])
    section("disk: more than memory, up to the cap")
    try:
        if not disk_row(GIB // 4 if quick else 4 * GIB):
            failed.append("disk row")
    except Exception as exc:  # a failed row is reported with the others, not a traceback
        print(f"disk row failed: {type(exc).__name__}: {exc}")
        failed.append("disk row")
    section("done")
    print("every row passed" if not failed else f"failed: {', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
