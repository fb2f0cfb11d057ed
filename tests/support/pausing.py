"""What the host kernel says about a sandbox's pause: its freezer state and its CPU usage.

Read from the host side (the tests run as root next to the runner), never through the
platform: a paused sandbox refuses every call, and the point is to check what the platform
claims against the kernel. The sandbox's cgroups are found from its processes
(``/proc/<pid>/cgroup`` names the sandbox id), so this works for any runner's data dir.
"""

from __future__ import annotations

import os

from tests.support.faults import sandbox_pids

CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_paths(sandbox_id: str) -> dict[str, str]:
    """Controller (``""`` for v2) → the sandbox's cgroup path, from one of its processes."""
    pids = sandbox_pids(sandbox_id)
    assert pids, f"{sandbox_id} has no processes on this host"
    with open(f"/proc/{pids[0]}/cgroup") as fh:
        lines = fh.read().splitlines()
    paths: dict[str, str] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _v1_file(sandbox_id: str, controller: str, name: str) -> str | None:
    path = _cgroup_paths(sandbox_id).get(controller)
    if path is None or not path.rstrip("/").endswith(sandbox_id):
        return None
    candidate = os.path.join(CGROUP_ROOT, controller, path.lstrip("/"), name)
    return candidate if os.path.exists(candidate) else None


def _v2_file(sandbox_id: str, name: str) -> str:
    path = _cgroup_paths(sandbox_id)[""]
    for base in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
        candidate = os.path.join(base, path.lstrip("/"), name)
        if os.path.exists(candidate):
            return candidate
    raise AssertionError(f"no cgroup v2 {name} for {sandbox_id}")


def frozen(sandbox_id: str) -> bool:
    """Whether the kernel holds every process of the sandbox frozen."""
    state = _v1_file(sandbox_id, "freezer", "freezer.state")
    if state is not None:
        with open(state) as fh:
            return fh.read().strip() == "FROZEN"
    with open(_v2_file(sandbox_id, "cgroup.events")) as fh:
        return "frozen 1" in fh.read().splitlines()


def cpu_usage_ns(sandbox_id: str) -> int:
    """The CPU time all processes of the sandbox used so far, from its cgroup."""
    usage = _v1_file(sandbox_id, "cpuacct", "cpuacct.usage")
    if usage is not None:
        with open(usage) as fh:
            return int(fh.read())
    with open(_v2_file(sandbox_id, "cpu.stat")) as fh:
        for line in fh:
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
    raise AssertionError(f"no CPU usage for {sandbox_id}")
