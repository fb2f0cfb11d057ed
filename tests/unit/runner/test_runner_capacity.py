"""What the runner reports equals what its parent cgroup enforces: capacity minus the reserve."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandboxd.backends.local.parent_cgroup import ParentLimits
from sandboxd.runner.capacity import HostReserve, allocatable_capabilities, parent_limits
from sandboxd.runner.cli import runner_command
from sandboxd.runner.fingerprint import fingerprint, host_cpu_millicores, host_memory_bytes
from sandboxd.runner.sandboxes import build_local_backend
from sandboxd.runner.settings import RunnerSettings
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.test_runner_fingerprint import build_host

GiB = 1 << 30


def test_reported_capacity_is_the_parent_cgroups_bound(tmp_path: Path) -> None:
    proc, cgroup = build_host(tmp_path, quota="300000", memory_limit=str(4 << 30))
    roots = {"proc_root": proc, "cgroup_root": cgroup}
    caps = fingerprint(**roots, nvidia_smi=str(tmp_path / "absent"))
    for reserve in (HostReserve(), HostReserve(cpu_millicores=500, memory_bytes=GiB)):
        reported = allocatable_capabilities(caps, reserve)
        bound = parent_limits(reserve, **roots)
        assert (reported.cpu_millicores, reported.memory_bytes) == (
            bound.cpu_millicores,
            bound.memory_bytes,
        )
    cpus = caps.cpu_millicores  # min(this machine's CPUs, the fake 3-CPU quota)
    assert caps.memory_bytes == 4 * GiB  # the fingerprint itself stays the whole host
    default = allocatable_capabilities(caps, HostReserve())
    assert (default.cpu_millicores, default.memory_bytes) == (
        cpus - max(cpus // 20, 100),
        4 * GiB - 4 * GiB // 10,
    )
    given = allocatable_capabilities(caps, HostReserve(cpu_millicores=500, memory_bytes=GiB))
    assert (given.cpu_millicores, given.memory_bytes) == (cpus - 500, 3 * GiB)


def test_the_runners_backend_gets_the_capacity_it_reports(tmp_path: Path) -> None:
    """What ``sandboxd runner``/``up`` build: the backend's parent bound = the reported size."""
    reserve = HostReserve(cpu_millicores=300, memory_bytes=GiB // 2)
    backend = build_local_backend(tmp_path, reserve)
    reported = allocatable_capabilities(fingerprint(nvidia_smi=str(tmp_path / "none")), reserve)
    assert backend._parent_limits == ParentLimits(  # type: ignore[attr-defined]
        cpu_millicores=reported.cpu_millicores, memory_bytes=reported.memory_bytes
    )


def test_unknown_capacity_is_left_alone() -> None:
    caps = runner_pb2.Capabilities(cpu_millicores=0, memory_bytes=0, hostname="h")
    assert allocatable_capabilities(caps, HostReserve()) == caps


def test_settings_validate_the_new_fields() -> None:
    with pytest.raises(ValueError, match="negative"):
        HostReserve(memory_bytes=-1)
    with pytest.raises(ValueError, match="max_execs_per_sandbox"):
        RunnerSettings(control_plane="http://127.0.0.1:1", max_execs_per_sandbox=0)


def test_cli_refuses_a_bad_quantity(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        runner_command,
        ["--control-plane", "http://127.0.0.1:1", "--state-dir", str(tmp_path),
         "--reserve-memory", "lots"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--reserve-memory" in result.output


def test_cli_reserve_shows_in_the_registered_capacity(fake_control_plane, tmp_path: Path) -> None:
    async def main() -> runner_pb2.Register:
        async with fake_control_plane() as cp:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "from sandboxd.runner.cli import runner_command; runner_command()",
                "--control-plane", cp.url, "--state-dir", str(tmp_path), "--backend", "none",
                "--reserve-cpu", "250m", "--reserve-memory", "512Mi",
                env={**os.environ, "SANDBOXD_JOIN_TOKEN": "secret"},
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                return (await cp.next_message("register", timeout=15)).message.register
            finally:
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(15):
                    await process.wait()

    register = asyncio.run(main())
    assert register.capabilities.cpu_millicores == host_cpu_millicores() - 250
    assert register.capabilities.memory_bytes == host_memory_bytes() - (512 << 20)
