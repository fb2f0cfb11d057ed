"""cgroup limit discovery against fake /proc and /sys/fs/cgroup trees (v1, hybrid and v2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.runner.cgroups import cpu_limit_millicores, memory_limit_bytes, read_membership

V1_UNLIMITED = "9223372036854771712"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def make_proc(tmp_path: Path, cgroup_lines: list[str]) -> Path:
    proc = tmp_path / "proc"
    write(proc / "self" / "cgroup", "\n".join(cgroup_lines))
    return proc


# --- cgroup v1 ---------------------------------------------------------------------------


def v1_tree(tmp_path: Path, cpu_dir: str = "cpu,cpuacct") -> Path:
    root = tmp_path / "cgroup"
    for relative in ("", "kubepods", "kubepods/pod1", "kubepods/pod1/c1"):
        for controller in (cpu_dir, "memory"):
            directory = root / controller / relative
            write(directory / "cpu.cfs_quota_us", "-1")
            write(directory / "cpu.cfs_period_us", "100000")
            write(directory / "memory.limit_in_bytes", V1_UNLIMITED)
    (root / "unified").mkdir()
    write(root / "unified" / "cgroup.controllers", "")
    return root


def v1_proc(tmp_path: Path, own: str = "/kubepods/pod1/c1", cpu_list: str = "cpu,cpuacct") -> Path:
    return make_proc(
        tmp_path, [f"5:memory:{own}", f"3:{cpu_list}:{own}", "1:name=systemd:/", "0::/"]
    )


def test_v1_quota_unset_means_no_limit(tmp_path):
    root, proc = v1_tree(tmp_path), v1_proc(tmp_path)
    assert cpu_limit_millicores(proc, root) is None
    assert memory_limit_bytes(proc, root) is None


def test_v1_quota_on_own_cgroup(tmp_path):
    root, proc = v1_tree(tmp_path), v1_proc(tmp_path)
    write(root / "cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_quota_us", "150000")
    assert cpu_limit_millicores(proc, root) == 1500


def test_v1_parent_quota_is_tighter(tmp_path):
    root, proc = v1_tree(tmp_path), v1_proc(tmp_path)
    write(root / "cpu,cpuacct/kubepods/pod1/c1/cpu.cfs_quota_us", "300000")
    write(root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us", "25000")
    write(root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us", "50000")
    assert cpu_limit_millicores(proc, root) == 500


def test_v1_separate_cpu_mount(tmp_path):
    root = v1_tree(tmp_path, cpu_dir="cpu")
    proc = v1_proc(tmp_path, cpu_list="cpu")
    write(root / "cpu/kubepods/pod1/c1/cpu.cfs_quota_us", "200000")
    assert cpu_limit_millicores(proc, root) == 2000


def test_v1_memory_limit_and_huge_unlimited(tmp_path):
    root, proc = v1_tree(tmp_path), v1_proc(tmp_path)
    write(root / "memory/kubepods/pod1/memory.limit_in_bytes", str(2 << 30))
    write(root / "memory/kubepods/pod1/c1/memory.limit_in_bytes", V1_UNLIMITED)
    assert memory_limit_bytes(proc, root) == 2 << 30


def test_v1_container_path_missing_falls_back_to_mount_root(tmp_path):
    """In a container the listed host path does not exist; the mount root is the own cgroup."""
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "250000")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    write(root / "memory" / "memory.limit_in_bytes", str(512 << 20))
    proc = v1_proc(tmp_path, own="/docker/0123abcd")
    assert cpu_limit_millicores(proc, root) == 2500
    assert memory_limit_bytes(proc, root) == 512 << 20


def test_v1_missing_mount_means_unknown(tmp_path):
    proc = v1_proc(tmp_path)
    assert cpu_limit_millicores(proc, tmp_path / "nothing") is None
    assert memory_limit_bytes(proc, tmp_path / "nothing") is None


# --- cgroup v2 ---------------------------------------------------------------------------


def v2_tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpuset cpu io memory pids")
    for relative in ("system.slice", "system.slice/runner.service"):
        write(root / relative / "cpu.max", "max 100000")
        write(root / relative / "memory.max", "max")
    return root


def v2_proc(tmp_path: Path) -> Path:
    return make_proc(tmp_path, ["0::/system.slice/runner.service"])


def test_v2_no_limits(tmp_path):
    root, proc = v2_tree(tmp_path), v2_proc(tmp_path)
    assert cpu_limit_millicores(proc, root) is None
    assert memory_limit_bytes(proc, root) is None


def test_v2_cpu_max_and_memory_max(tmp_path):
    root, proc = v2_tree(tmp_path), v2_proc(tmp_path)
    write(root / "system.slice/runner.service/cpu.max", "200000 100000")
    write(root / "system.slice/runner.service/memory.max", str(3 << 30))
    assert cpu_limit_millicores(proc, root) == 2000
    assert memory_limit_bytes(proc, root) == 3 << 30


def test_v2_nested_parent_is_tighter(tmp_path):
    root, proc = v2_tree(tmp_path), v2_proc(tmp_path)
    write(root / "system.slice/runner.service/cpu.max", "400000 100000")
    write(root / "system.slice/cpu.max", "50000 100000")
    write(root / "system.slice/runner.service/memory.max", str(8 << 30))
    write(root / "system.slice/memory.max", str(1 << 30))
    assert cpu_limit_millicores(proc, root) == 500
    assert memory_limit_bytes(proc, root) == 1 << 30


def test_v2_namespaced_root(tmp_path):
    """With a cgroup namespace the process sees ``0::/`` and limits sit on the mount root."""
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory")
    write(root / "cpu.max", "100000 100000")
    write(root / "memory.max", str(1 << 30))
    proc = make_proc(tmp_path, ["0::/"])
    assert cpu_limit_millicores(proc, root) == 1000
    assert memory_limit_bytes(proc, root) == 1 << 30


def test_hybrid_host_prefers_v1_controllers(tmp_path):
    root, proc = v1_tree(tmp_path), v1_proc(tmp_path)
    write(root / "cpu,cpuacct/kubepods/cpu.cfs_quota_us", "100000")
    assert cpu_limit_millicores(proc, root) == 1000


def test_no_cgroup_file(tmp_path):
    assert cpu_limit_millicores(tmp_path / "proc", tmp_path) is None
    assert memory_limit_bytes(tmp_path / "proc", tmp_path) is None


@pytest.mark.parametrize("junk", ["", "garbage", "max", "-5 100000", "100000 0"])
def test_v2_unparseable_cpu_max_is_ignored(tmp_path, junk):
    root, proc = v2_tree(tmp_path), v2_proc(tmp_path)
    write(root / "system.slice/runner.service/cpu.max", junk)
    assert cpu_limit_millicores(proc, root) is None


def test_membership_parsing(tmp_path):
    proc = v1_proc(tmp_path)
    membership = read_membership(proc)
    assert membership.v1["cpu"] == ("cpu,cpuacct", "/kubepods/pod1/c1")
    assert membership.v1["cpuacct"] == ("cpu,cpuacct", "/kubepods/pod1/c1")
    assert membership.v1["memory"] == ("memory", "/kubepods/pod1/c1")
    assert "name=systemd" not in membership.v1
    assert membership.v2 == "/"
