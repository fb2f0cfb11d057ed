"""The parent cgroup's limits on synthetic cgroup trees (no root needed; v1 and v2).

The real v1 behaviour (this project's CI hosts) is in ``test_local_parent_cgroup.py``; v2 is
checked here on a fake unified tree, file by file, the way the kernel expects them written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.backends.local.cgroups import CgroupManager, Layout, SandboxCgroup
from sandboxd.backends.local.parent_cgroup import (
    GiB,
    MiB,
    ParentLimits,
    allocatable,
    apply,
    default_reserve,
    host_limits,
)

LIMITS = ParentLimits(cpu_millicores=1500, memory_bytes=3 * GiB)


def fake_v2(tmp_path: Path) -> Path:
    base = tmp_path / "runner.service"
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("")
    return base


def test_default_reserve_leaves_room_for_the_host() -> None:
    assert default_reserve(2000, 24 * GiB) == (100, int(2.4 * GiB))
    assert default_reserve(64_000, 512 * GiB) == (1000, 4 * GiB)  # capped
    assert default_reserve(1000, 1 * GiB) == (100, 256 * MiB)  # floors
    assert default_reserve(100, 256 * MiB) == (50, 128 * MiB)  # never more than half
    assert allocatable(2000, 24 * GiB) == (1900, 24 * GiB - int(2.4 * GiB))
    assert allocatable(2000, 24 * GiB, reserve_cpu=0, reserve_memory=GiB) == (2000, 23 * GiB)
    assert allocatable(1000, GiB, reserve_cpu=5000, reserve_memory=2 * GiB) == (1, 1)


def test_parent_limits_validate() -> None:
    with pytest.raises(ValueError, match="memory_bytes"):
        ParentLimits(memory_bytes=0)


def test_v2_files(tmp_path: Path) -> None:
    group = tmp_path / "g"
    group.mkdir()
    (group / "memory.swap.max").write_text("max\n")
    apply(2, {"unified": str(group)}, LIMITS)
    assert (group / "cpu.max").read_text() == "150000 100000"
    assert (group / "memory.max").read_text() == str(3 * GiB)
    assert (group / "memory.swap.max").read_text() == "0"


def test_v1_files(tmp_path: Path) -> None:
    cpu, mem = tmp_path / "cpu" / "g", tmp_path / "memory" / "g"
    cpu.mkdir(parents=True)
    mem.mkdir(parents=True)
    (mem / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    apply(1, {"cpu": str(cpu), "memory": str(mem), "pids": str(mem)}, LIMITS)
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "150000"
    assert (mem / "memory.limit_in_bytes").read_text() == str(3 * GiB)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(3 * GiB)


def test_manager_bounds_the_group_whenever_it_is_made(tmp_path: Path) -> None:
    """On a fake v1 tree (a fake v2 tree has no kernel to fill a new directory)."""
    bases = {c: str(tmp_path / c) for c in ("cpu", "cpuacct", "memory", "pids")}
    for base in bases.values():
        Path(base).mkdir()
    mgr = CgroupManager("sandboxd-x", Layout(1, bases), LIMITS)
    limit = tmp_path / "memory" / "sandboxd-x" / "memory.limit_in_bytes"
    quota = tmp_path / "cpu" / "sandboxd-x" / "cpu.cfs_quota_us"
    first = mgr.create("a")
    assert limit.read_text() == str(3 * GiB) and quota.read_text() == "150000"
    # Someone resets it while it exists: we do not rewrite on every create...
    limit.write_text("9223372036854771712")
    second = mgr.create("b")
    assert limit.read_text() == "9223372036854771712"
    # ...but whenever the directory is made again (the last sandbox's remove takes it away).
    for cg in (first, second):
        for d in cg.unique_dirs:
            Path(d).rmdir()
    for base in bases.values():
        group = Path(base) / "sandboxd-x"
        for leftover in group.iterdir():
            leftover.unlink()
        group.rmdir()
    mgr.create("c")
    assert limit.read_text() == str(3 * GiB) and quota.read_text() == "150000"


def test_a_new_manager_bounds_an_existing_group(tmp_path: Path) -> None:
    """A restarted runner (maybe with another reservation) applies its limits on first use."""
    base = fake_v2(tmp_path)
    group = base / "sandboxd-x"
    group.mkdir()
    (group / "cgroup.subtree_control").touch()
    (group / "memory.max").write_text(str(GiB))
    CgroupManager("sandboxd-x", Layout(2, {"unified": str(base)}), LIMITS).create("a")
    assert (group / "memory.max").read_text() == str(3 * GiB)


def test_v1_sandbox_quota_is_capped_at_the_parents(tmp_path: Path) -> None:
    """v1 refuses a child quota above its parent's (EINVAL); more could not be used anyway."""
    cpu = tmp_path / "cpu" / "sandboxd-x"
    (cpu / "box").mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("150000\n")
    dirs = {"cpu": str(cpu / "box"), "cpuacct": str(cpu / "box")}
    cg = SandboxCgroup(1, dirs)
    cg.set_limits(cpu_millicores=4000, memory_bytes=None, pids_max=None)
    assert (cpu / "box" / "cpu.cfs_quota_us").read_text() == "150000"
    cg.set_limits(cpu_millicores=500, memory_bytes=None, pids_max=None)
    assert (cpu / "box" / "cpu.cfs_quota_us").read_text() == "50000"
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # an unbounded parent: no cap
    cg.set_limits(cpu_millicores=4000, memory_bytes=None, pids_max=None)
    assert (cpu / "box" / "cpu.cfs_quota_us").read_text() == "400000"


def test_host_limits_honour_our_own_cgroup(tmp_path: Path) -> None:
    base = tmp_path / "own"
    base.mkdir()
    (base / "memory.max").write_text(str(2 * GiB) + "\n")
    (base / "cpu.max").write_text("50000 100000\n")
    limits = host_limits(2, {"unified": str(base)})
    assert limits == ParentLimits(cpu_millicores=400, memory_bytes=2 * GiB - 256 * MiB)
