"""Idle sandboxes per host: how many ``sandboxd up`` holds with its defaults, at what cost.

Run: ``.venv/bin/python bench/density.py [--count 1000] [--profile P] [--record NAME]`` (root;
about 3 minutes for 1,000 on 2 cores). It starts ``sandboxd up`` with **no configuration**
(the embedded defaults: profiles, requests, overcommit), then, with our ``cwsandbox`` client
over real gRPC:

* creates ``--count`` sandboxes with ``Sandbox.run()`` and no options (4 at a time), and
  times it (total, and each create's p50/p99);
* runs ``exec(["true"])`` in every one of them while all exist (p50/p99, two rounds);
* measures host memory per idle sandbox (``tests/support/density.py``): the PSS of each
  sandbox's processes, by kind (mean, and p50/p99 over the sandboxes), and the growth of
  the kernel's slab, page tables and kernel stacks (and of ``MemAvailable``, as a
  cross-check); plus what the platform's own processes grew by;
* creates ``--fresh`` more, one at a time, each to its first exec result, while all of them
  exist (what a user's next sandbox waits on a full host), and counts the host mount table's
  growth per sandbox (each entry is copied by every new mount namespace, so by every create),
  and the CPU its host commands (``ip``, ``iptables-restore``) took per create and stop;
* the floors beside them: ``nsenter -a -t <PID 1> true`` into 200 of the sandboxes (what
  entering a sandbox costs without the platform), and 100 ``sleep`` processes
  in namespaces of their own made by ``unshare`` (the least an isolated idle process costs);
* stops them all and times that (and the host commands' CPU per stop).

Each row is printed beside its floor, the last recorded baseline (``bench/baselines.json``, key
``density``) and the issue's targets: 1,000 idle sandboxes on 2 cores / 24 GiB, exec p99
≤ 100 ms while they all exist, ≤ 5 MiB of host memory each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from tests.support import density
from tests.support.hosts import reap_runner_state
from tests.support.processes import all_in_one

BASELINES = ROOT / "baselines.json"
RESULTS = ROOT / "results"
FLOOR_EXECS = 200  # nsenter into this many sandboxes (the exec floor)
FLOOR_SLEEPERS = 100  # namespaced sleep processes (the memory floor)
EXEC_TIMEOUT = 30.0  # far above any target: a hung exec is reported, not waited for
TARGETS = {"idle sandboxes held": 1000, "exec p99 ms": 100.0, "memory per sandbox MiB": 5.0}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def create_all(
    count: int, profile: str | None, workers: int = 4
) -> tuple[list[Any], list[float], list[str]]:
    from cwsandbox import Sandbox

    boxes: list[Any] = []
    took: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(_i: int) -> None:
        start = time.perf_counter()
        try:
            box = Sandbox.run(profile_names=[profile] if profile else None)
            box.wait()  # run() returns once the Start is accepted; this one is running
        except Exception as exc:  # reported, never hidden: a refused create is the finding
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        with lock:
            boxes.append(box)
            took.append(time.perf_counter() - start)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    return boxes, took, errors


def exec_round(boxes: list[Any], errors: list[str]) -> list[float]:
    """``exec(["true"])`` in each sandbox in turn; failures are counted, never hidden."""
    samples = []
    for box in boxes:
        start = time.perf_counter()
        try:
            box.exec(["true"], timeout_seconds=EXEC_TIMEOUT).result()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        samples.append(time.perf_counter() - start)
    return samples


def host_mounts() -> int:
    """Entries in this process's mount table (the host's: the runner's namespace)."""
    with open("/proc/self/mountinfo", "rb") as fh:
        return sum(1 for _ in fh)


def fresh_creates(count: int, profile: str | None, errors: list[str]) -> list[float]:
    """Create → first exec result, one sandbox at a time (each stopped after), in seconds."""
    from cwsandbox import Sandbox

    samples = []
    for _ in range(count):
        start = time.perf_counter()
        try:
            box = Sandbox.run(profile_names=[profile] if profile else None)
            box.exec(["true"], timeout_seconds=EXEC_TIMEOUT).result()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        samples.append(time.perf_counter() - start)
        stop_all([box])
    return samples


def commands_cpu_seconds(pid: int) -> float:
    """CPU time of the ended children of ``pid`` so far: the host commands a runner in
    ``sandboxd up`` ran (``ip``, ``iptables-restore``); its zygote's forks are not theirs.

    Why a row of its own: it counts work, not waiting, so it moves less with this VM's
    speed than a latency does.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def stop_all(boxes: list[Any]) -> None:
    def stop(box: Any) -> None:
        with contextlib.suppress(Exception):  # reported by the leftover check below
            box.stop(graceful_shutdown_seconds=0).result()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(stop, boxes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--profile", default=None, help="profile name (default: the default)")
    parser.add_argument("--up-arg", action="append", default=[], help="extra `sandboxd up` arg")
    parser.add_argument("--fresh", type=int, default=20, help="creates timed while all exist")
    parser.add_argument("--record", metavar="NAME", help="save this run as the baseline NAME")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the density benchmark needs root (real namespaces and cgroups)")

    exec_errors: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="sandboxd-density-") as data,
        all_in_one(Path(data), *args.up_arg) as up,
    ):
        os.environ["CWSANDBOX_BASE_URL"] = up.base_url
        os.environ["CWSANDBOX_API_KEY"] = up.api_key
        backend_dir = Path(data) / "backend"
        boxes: list[Any] = []
        try:
            # Warm up: the zygote starts, the disk template of the default size is made.
            warm, _took, errs = create_all(1, args.profile, workers=1)
            if errs:
                sys.exit(f"the first sandbox failed: {errs[0]}")
            stop_all(warm)
            platform = [up.proc.popen.pid, density.zygote_pid(backend_dir) or 0]
            platform_before = density.platform_pss_kib(platform)
            fds_before = density.open_fds(up.proc.popen.pid)
            before = density.meminfo()
            mounts_before = host_mounts()

            start = time.perf_counter()
            boxes, create_lat, errors = create_all(args.count, args.profile)
            create_wall = time.perf_counter() - start
            held = len(boxes)
            rounds = [exec_round(boxes, exec_errors) for _ in range(2)]
            mounts_after = host_mounts()
            after = density.meminfo()
            cost = density.process_cost(backend_dir)
            platform_after = density.platform_pss_kib(platform)
            fds_after = density.open_fds(up.proc.popen.pid)
            floor_exec = [density.nsenter_seconds(pid) for pid in cost.agents[:FLOOR_EXECS]]
            commands = commands_cpu_seconds(up.proc.popen.pid)
            fresh = fresh_creates(args.fresh, args.profile, errors)
            fresh_commands = commands_cpu_seconds(up.proc.popen.pid) - commands

            start = time.perf_counter()
            commands = commands_cpu_seconds(up.proc.popen.pid)
            stop_all(boxes)
            stop_wall = time.perf_counter() - start
            stop_commands = commands_cpu_seconds(up.proc.popen.pid) - commands
            boxes = []
        finally:
            stop_all(boxes)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "density-platform.log").write_text(up.proc.output + "\n")
            up.proc.stop(timeout=60)
            # Whatever a failed run left (sandboxes outlive their runner by design).
            left = reap_runner_state(Path(data))
            if left:
                print(f"reaped {len(left)} sandboxes left behind", file=sys.stderr)

    growth = density.kernel_growth(before, after, held)
    kernel = density.counted_kernel_mib(growth)
    per_sandbox = cost.per_sandbox_mib() + kernel
    each_mib = [kib / 1024 / 1000 for kib in cost.each_kib]  # pct() reports x 1000
    floor_process, floor_kernel = density.namespaced_sleepers_cost(FLOOR_SLEEPERS)
    execs = rounds[0] + rounds[1]
    rows: dict[str, float] = {
        "idle sandboxes held": held,
        "create all, s": round(create_wall, 1),
        "create p50 ms": round(pct(create_lat, 0.5), 1),
        "create p99 ms": round(pct(create_lat, 0.99), 1),
        "exec p50 ms": round(pct(execs, 0.5), 2),
        "exec p99 ms": round(pct(execs, 0.99), 2),
        "create+exec while all exist p50 ms": round(pct(fresh, 0.5), 1),
        "create+exec while all exist p99 ms": round(pct(fresh, 0.99), 1),
        "  host commands CPU per create+stop ms": round(
            fresh_commands * 1000 / max(len(fresh), 1), 1
        ),
        "host mounts per sandbox": round((mounts_after - mounts_before) / max(held, 1), 2),
        "memory per sandbox MiB": round(per_sandbox, 2),
        "  processes (PSS) MiB": round(cost.per_sandbox_mib(), 2),
        "  processes p50 MiB": round(pct(each_mib, 0.5), 2),
        "  processes p99 MiB": round(pct(each_mib, 0.99), 2),
        "  kernel (slab+pt+stacks) MiB": round(kernel, 2),
        "MemAvailable drop per sandbox MiB": round(
            (before["MemAvailable"] - after["MemAvailable"]) / 1024 / max(held, 1), 2
        ),
        "platform growth per sandbox MiB": round(
            (platform_after - platform_before) / 1024 / max(held, 1), 3
        ),
        "stop all, s": round(stop_wall, 1),
        "  host commands CPU per stop ms": round(stop_commands * 1000 / max(held, 1), 1),
        "runner+control plane fds per sandbox": round((fds_after - fds_before) / max(held, 1), 2),
    }
    stored = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
    baseline = stored.get("density", {})
    profile = args.profile or "default"
    print(
        f"\nsandboxd density ({os.cpu_count()} CPUs, {after['MemTotal'] >> 10} MiB, "
        f"embedded defaults, profile {profile}, {args.count} asked)"
    )
    print(f"baseline: {baseline.get('name', 'none recorded')}")
    floors = {
        "exec p50 ms": round(pct(floor_exec, 0.5), 2),
        "exec p99 ms": round(pct(floor_exec, 0.99), 2),
        "memory per sandbox MiB": round(floor_process + floor_kernel, 2),
        "  processes (PSS) MiB": round(floor_process, 2),
        "  kernel (slab+pt+stacks) MiB": round(floor_kernel, 2),
    }
    print(
        f"floor: exec = `nsenter -a -t <PID 1> true` into {len(floor_exec)} of the sandboxes; "
        f"memory = {FLOOR_SLEEPERS} `unshare` (user, pid, mount, uts, ipc, net, cgroup) + sleep"
    )
    print(f"{'measure':<36} {'this run':>10} {'floor':>8} {'baseline':>10} {'target':>8}")
    for name, value in rows.items():
        base = baseline.get("rows", {}).get(name, "-")
        target = TARGETS.get(name, "")
        floor = floors.get(name, "")
        print(f"{name:<36} {value:>10} {floor!s:>8} {base!s:>10} {target!s:>8}")
    print("processes by kind:")
    for line in cost.lines():
        print("  " + line)
    kernel_text = ", ".join(f"{k} {v:.0f}" for k, v in growth.items())
    print(f"kernel growth per sandbox, KiB: {kernel_text} (Percpu not in the sum)")
    if errors:
        print(f"{len(errors)} creates failed; first: {errors[0]}")
    if exec_errors:
        print(f"{len(exec_errors)} execs failed; first: {exec_errors[0]}")
    print(f"the platform's log: {RESULTS / 'density-platform.log'}")
    if args.record:
        stored["density"] = {"name": args.record, "rows": rows}
        BASELINES.write_text(json.dumps(stored, indent=2) + "\n")


if __name__ == "__main__":
    main()
