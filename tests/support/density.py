"""Measuring what idle sandboxes cost the host, for ``bench/density.py`` and the density tests.

Host memory per idle sandbox = the PSS of its processes (its keeper on the host side, and
every process in its cgroup: the agent, PID 1, and the main process) plus the kernel objects
it made, counted as the growth of ``Slab``, ``PageTables`` and ``KernelStack`` in
``/proc/meminfo`` while the sandboxes were created, divided by their number. PSS splits a
page shared by N processes N ways, so the pages all keepers and agents share with the
zygote cost each sandbox 1/N of them. ``Percpu`` (memory cgroups' per-CPU counters) is
reported beside it, not in the sum: it is what the issue's definition leaves out, and it is
shown so nobody has to guess.

The kernel numbers are host-wide: anything else that runs meanwhile (another test run)
moves them, which is why the process part is measured per process and the kernel part is
reported on its own line.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandboxd.backends.local.state import RECORD
from sandboxd.record_log import read_record

KERNEL_FIELDS = ("Slab", "SUnreclaim", "PageTables", "KernelStack", "Percpu")
COUNTED = ("Slab", "PageTables", "KernelStack")


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in KiB."""
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_name(pid: int) -> str:
    """``comm`` of a process, or ``?`` when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def sandbox_pids(state_dir: Path) -> list[int]:
    """The keeper and every process in the sandbox's cgroup (from its record)."""
    record = read_record(state_dir / RECORD)
    pids = [int(record["keeper_pid"])] if record.get("keeper_pid") else []
    dirs = (record.get("cgroup") or {}).get("dirs", {})  # controller -> directory
    directory = dirs.get("pids") or dirs.get("unified")
    if directory:
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (Path(directory) / "cgroup.procs").read_text().split()]
    return pids


@dataclass
class ProcessCost:
    """Summed PSS by process name over the measured sandboxes."""

    sandboxes: int = 0
    by_name: dict[str, list[int]] = field(default_factory=dict)
    each_kib: list[int] = field(default_factory=list)  # one sum per sandbox
    agents: list[int] = field(default_factory=list)  # PID 1 of each sandbox

    @property
    def total_kib(self) -> int:
        return sum(sum(v) for v in self.by_name.values())

    def per_sandbox_mib(self) -> float:
        return self.total_kib / 1024 / max(self.sandboxes, 1)

    def lines(self) -> list[str]:
        rows = []
        for name, values in sorted(self.by_name.items(), key=lambda kv: -sum(kv[1])):
            per = sum(values) / 1024 / max(self.sandboxes, 1)
            rows.append(f"{name:<18} {len(values):5d} processes  {per:6.3f} MiB per sandbox")
        return rows


def process_cost(backend_dir: Path) -> ProcessCost:
    """PSS of every live sandbox's processes under a local backend's data directory."""
    cost = ProcessCost()
    sandboxes = backend_dir / "sandboxes"
    for state_dir in sorted(sandboxes.iterdir()) if sandboxes.is_dir() else []:
        try:
            pids = sandbox_pids(state_dir)
        except (OSError, ValueError, KeyError):
            continue
        if not pids or process_name(pids[0]) == "?":
            continue  # ended: its keeper is gone
        cost.sandboxes += 1
        total = 0
        for pid in pids:
            kib = pss_kib(pid)
            total += kib
            name = process_name(pid)
            cost.by_name.setdefault(name, []).append(kib)
            if name == "sandboxd-init":
                cost.agents.append(pid)
        cost.each_kib.append(total)
    return cost


def kernel_growth(before: dict[str, int], after: dict[str, int], count: int) -> dict[str, float]:
    """KiB per sandbox by which each kernel field grew."""
    return {key: (after.get(key, 0) - before.get(key, 0)) / max(count, 1) for key in KERNEL_FIELDS}


def counted_kernel_mib(growth: dict[str, float]) -> float:
    """Slab + page tables + kernel stacks per sandbox, in MiB."""
    return sum(growth[key] for key in COUNTED) / 1024


def platform_pss_kib(pids: list[int]) -> int:
    """PSS of the platform's own processes (``sandboxd up``, the zygote)."""
    return sum(pss_kib(pid) for pid in pids)


def open_fds(pid: int) -> int:
    """How many descriptors a process holds (0 when it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def namespaced_sleepers_cost(count: int) -> tuple[float, float]:
    """The floor: ``(process MiB, kernel MiB)`` per idle ``sleep`` in namespaces of its own.

    ``unshare`` with new user (root mapped), PID, mount, UTS, IPC, network and cgroup
    namespaces around ``sleep``: the least an isolated idle process can cost, without a
    cgroup, a writable layer, a veth pair or an agent.
    """
    argv = ["unshare", "--user", "--map-root-user", "--pid", "--kill-child", "--mount",
            "--uts", "--ipc", "--net", "--cgroup", "sleep", "infinity"]  # fmt: skip
    before = meminfo()
    procs = [subprocess.Popen(argv) for _ in range(count)]
    try:
        deadline = time.monotonic() + 30
        sleepers: list[int] = []
        while time.monotonic() < deadline:  # each unshare forks its sleep: wait for all
            sleepers = [c for p in procs for c in _children(p.pid)]
            if len(sleepers) == count:
                break
            time.sleep(0.05)
        after = meminfo()
        kib = sum(pss_kib(p.pid) for p in procs) + sum(pss_kib(pid) for pid in sleepers)
        growth = kernel_growth(before, after, count)
        return kib / 1024 / count, counted_kernel_mib(growth)
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def nsenter_seconds(agent_pid: int) -> float:
    """The floor of an exec: ``nsenter`` into every namespace of a sandbox to run ``true``."""
    start = time.perf_counter()
    subprocess.run(["nsenter", "-t", str(agent_pid), "-a", "true"], check=True)
    return time.perf_counter() - start


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def zygote_pid(backend_dir: Path) -> int | None:
    """The pid of the zygote serving ``backend_dir`` (the keepers' parent)."""
    needle = f"sandboxd-zygote {backend_dir / 'run'}"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmdline.decode(errors="replace").strip() == needle:
            try:
                parent = Path(f"/proc/{stat[1]}/comm").read_text().strip()
            except OSError:
                parent = ""
            if parent != "sandboxd-zygote":  # not one of its Python keepers
                return int(entry)
    return None
