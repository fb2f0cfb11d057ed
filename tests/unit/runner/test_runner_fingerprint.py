"""Fingerprinting: GPU naming, fake nvidia-smi, fake /proc trees, and the real host."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandboxd.runner import fingerprint
from sandboxd.runner import gpus as gpus_module
from sandboxd.runner.fingerprint import mem_total_bytes, normalize_architecture, supports_privileged
from sandboxd.runner.gpus import discover_gpus, parse_gpu_names, short_gpu_name

ALL_CAPS = "000001ffffffffff"
NO_SYS_ADMIN = f"{(0x1FFFFFFFFFF & ~(1 << 21)):016x}"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_nvidia_smi(directory: Path, body: str, name: str = "nvidia-smi") -> Path:
    script = directory / name
    write(script, f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA RTX A6000", "RTXA6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX6000"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTXPRO6000"),
        ("Quadro RTX 8000", "RTX8000"),
        ("NVIDIA TITAN V", "TITANV"),
        ("NVIDIA", "NVIDIA"),
    ],
)
def test_short_gpu_name(name, short):
    assert short_gpu_name(name) == short


def test_parse_gpu_names_counts_lines_and_dedupes_types():
    output = "NVIDIA H100 80GB HBM3\nNVIDIA H100 80GB HBM3\n\nNVIDIA A100-SXM4-40GB\n"
    inventory = parse_gpu_names(output)
    assert inventory.count == 3
    assert inventory.types == ("H100", "A100")


def test_fake_nvidia_smi_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    lines = "\\n".join(["NVIDIA H100 80GB HBM3"] * 8)
    fake_nvidia_smi(
        bin_dir,
        f'[ "$1" = "--query-gpu=name" ] && [ "$2" = "--format=csv,noheader" ] || exit 2\n'
        f'printf "{lines}\\n"',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    inventory = discover_gpus()
    assert inventory.count == 8
    assert inventory.types == ("H100",)

    caps = fingerprint(proc_root=tmp_path / "proc", cgroup_root=tmp_path / "cg")
    assert caps.gpu_count == 8
    assert list(caps.gpu_types) == ["H100"]


def test_missing_nvidia_smi_means_no_gpus(tmp_path):
    assert discover_gpus(str(tmp_path / "no-such-binary")).count == 0


def test_failing_nvidia_smi_means_no_gpus(tmp_path):
    script = fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    assert discover_gpus(str(script)) == gpus_module.GpuInventory(count=0, types=())


def test_hanging_nvidia_smi_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus_module, "NVIDIA_SMI_TIMEOUT_S", 0.3)
    script = fake_nvidia_smi(tmp_path, "exec sleep 30")
    assert discover_gpus(str(script)).count == 0


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "amd64"),
        ("AMD64", "amd64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("ppc64le", "ppc64le"),
        ("RISCV64", "riscv64"),
    ],
)
def test_normalize_architecture(machine, arch):
    assert normalize_architecture(machine) == arch


def status(uid: int, cap_eff: str) -> str:
    return f"Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapEff:\t{cap_eff}\n"


@pytest.mark.parametrize(
    ("uid", "cap_eff", "expected"),
    [(0, ALL_CAPS, True), (0, NO_SYS_ADMIN, False), (1000, ALL_CAPS, False)],
)
def test_supports_privileged(tmp_path, uid, cap_eff, expected):
    write(tmp_path / "self" / "status", status(uid, cap_eff))
    assert supports_privileged(tmp_path) is expected


def test_supports_privileged_without_status_file(tmp_path):
    assert supports_privileged(tmp_path) is False


def test_mem_total(tmp_path):
    write(tmp_path / "meminfo", "MemTotal:       24684092 kB\nMemFree:  1 kB\n")
    assert mem_total_bytes(tmp_path) == 24684092 * 1024
    assert mem_total_bytes(tmp_path / "missing") == 0


def build_host(tmp_path: Path, *, quota: str, memory_limit: str) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    write(proc / "meminfo", "MemTotal:       16777216 kB\n")  # 16 GiB
    write(proc / "self" / "status", status(0, ALL_CAPS))
    write(proc / "self" / "cgroup", "4:memory:/runner\n3:cpu,cpuacct:/runner\n0::/\n")
    cgroup = tmp_path / "cgroup"
    write(cgroup / "cpu,cpuacct" / "runner" / "cpu.cfs_quota_us", quota)
    write(cgroup / "cpu,cpuacct" / "runner" / "cpu.cfs_period_us", "100000")
    write(cgroup / "memory" / "runner" / "memory.limit_in_bytes", memory_limit)
    return proc, cgroup


def test_fingerprint_of_a_limited_fake_host(tmp_path):
    proc, cgroup = build_host(tmp_path, quota="300000", memory_limit=str(4 << 30))
    caps = fingerprint(
        proc_root=proc,
        cgroup_root=cgroup,
        nvidia_smi=str(tmp_path / "absent"),
        online_cpus=8,
        machine="aarch64",
        hostname="node-7",
    )
    assert caps.cpu_millicores == 3000
    assert caps.memory_bytes == 4 << 30
    assert caps.gpu_count == 0
    assert list(caps.gpu_types) == []
    assert list(caps.architectures) == ["arm64"]
    assert caps.supports_privileged is True
    assert caps.hostname == "node-7"
    assert list(caps.backends) == ["local"]
    assert list(caps.storage_classes) == []


def test_fingerprint_of_an_unlimited_fake_host(tmp_path):
    proc, cgroup = build_host(tmp_path, quota="-1", memory_limit="9223372036854771712")
    caps = fingerprint(
        proc_root=proc, cgroup_root=cgroup, nvidia_smi=str(tmp_path / "absent"), online_cpus=8
    )
    assert caps.cpu_millicores == 8000
    assert caps.memory_bytes == 16 << 30


def test_quota_above_online_cpus_does_not_raise_capacity(tmp_path):
    proc, cgroup = build_host(tmp_path, quota="1600000", memory_limit=str(64 << 30))
    caps = fingerprint(
        proc_root=proc, cgroup_root=cgroup, nvidia_smi=str(tmp_path / "absent"), online_cpus=2
    )
    assert caps.cpu_millicores == 2000
    assert caps.memory_bytes == 16 << 30


def test_fingerprint_of_the_real_host():
    caps = fingerprint()
    assert caps.cpu_millicores > 0
    assert caps.cpu_millicores <= len(os.sched_getaffinity(0)) * 1000
    assert caps.memory_bytes > 0
    assert caps.architectures[0] in {"amd64", "arm64"}
    assert caps.hostname
    assert caps.gpu_count >= len(caps.gpu_types)
    assert list(caps.backends) == ["local"]
