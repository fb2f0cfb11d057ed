"""The discovery guide's code blocks, run verbatim from examples/ against ``sandboxd up``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import cwsandbox
from cwsandbox import format_bytes, format_cpu
from tests.e2e.conftest import OUR_PYTHON, ROOT, Platform, run_python

EXAMPLES = ROOT / "examples"


def example(name: str, platform: Platform) -> str:
    return run_python(OUR_PYTHON, EXAMPLES / name, platform.env())


def test_list_profiles(quiet_platform: Platform) -> None:
    out = example("list_profiles.py", quiet_platform)
    rid = quiet_platform.runner_id
    assert out == (
        f"default  runner={rid}\n"
        "  ingress: public, internal\n"
        "  egress:  internet, none\n"
        f"locked-down  runner={rid}\n"
        "  ingress: \n"
        "  egress:  none\n"
    )


def test_filter_profiles_by_networking(quiet_platform: Platform) -> None:
    # Only the default profile offers internet egress AND public ingress.
    out = example("filter_profiles_by_networking.py", quiet_platform)
    assert out == f"default  runner={quiet_platform.runner_id}\n"


def test_get_profile(quiet_platform: Platform) -> None:
    out = example("get_profile.py", quiet_platform)
    assert out == f"default  runner={quiet_platform.runner_id}\n"


def test_list_runners_repr(quiet_platform: Platform) -> None:
    out = example("list_runners.py", quiet_platform)
    match = re.fullmatch(
        r"Runner\(runner_id='runner-abc-123', healthy=True, cpu=(\d+\.\d) vCPU, "
        r"memory=(\d+\.\d [KMGT]?i?B), gpus=0, profiles=\['default', 'locked-down'\]\)\n",
        out,
    )
    assert match, out


def test_runner_resources(quiet_platform: Platform) -> None:
    out = example("runner_resources.py", quiet_platform)
    lines = out.splitlines()
    assert lines[0] == f"{quiet_platform.runner_id}  healthy=True"
    max_cpu, max_mem = re.fullmatch(r"  max: (.+ vCPU), (.+B)", lines[1]).groups()  # type: ignore[union-attr]
    # Nothing runs yet, so everything the runner has is available: its allocatable amounts
    # times the embedded overcommit ratios (CPU 16, memory 1).
    runner = cwsandbox.get_runner(quiet_platform.runner_id, base_url=quiet_platform.base_url)
    assert runner.resources is not None
    assert max_cpu == format_cpu(runner.max_cpu_millicores)
    cpu = format_cpu(int(runner.max_cpu_millicores * runner.resources.cpu_overcommit_ratio))
    assert runner.resources.cpu_overcommit_ratio == 16.0
    assert runner.resources.memory_overcommit_ratio == 1.0
    assert lines[2] == f"  available: {cpu}, {max_mem}"
    assert lines[3] == "  running sandboxes: 0"
    assert len(lines) == 4


def test_filter_runners_by_capacity(quiet_platform: Platform) -> None:
    out = example("filter_runners_by_capacity.py", quiet_platform)
    runner = cwsandbox.get_runner(quiet_platform.runner_id, base_url=quiet_platform.base_url)
    assert runner.resources is not None
    fits = (
        runner.resources.available_cpu_millicores >= 2000
        and runner.resources.available_memory_bytes >= 4 * 1024**3
    )
    expected = (
        f"{quiet_platform.runner_id}\n"
        f"  cpu: {format_cpu(runner.resources.available_cpu_millicores)}\n"
        f"  memory: {format_bytes(runner.resources.available_memory_bytes)}\n"
    )
    assert out == (expected if fits else "")


def test_get_runner(quiet_platform: Platform) -> None:
    out = example("get_runner.py", quiet_platform)
    assert out == f"{quiet_platform.runner_id}  healthy=True\n  running sandboxes: 0\n"


def test_get_runner_not_found_path(quiet_platform: Platform) -> None:
    script = (EXAMPLES / "get_runner.py").read_text().replace("runner-abc-123", "runner-nope")
    out = run_python(OUR_PYTHON, script, quiet_platform.env())
    assert out == "Runner not found: runner-nope\n"


def test_cli_tables(quiet_platform: Platform) -> None:
    cli = str(Path(OUR_PYTHON).parent / "cwsandbox")
    runners = subprocess.run(
        [cli, "runners", "--resources"], env=quiet_platform.env(COLUMNS="200"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert runners.returncode == 0, runners.stderr
    assert quiet_platform.runner_id in runners.stdout
    assert "vCPU" in runners.stdout
    profiles = subprocess.run(
        [cli, "profiles", "--egress", "none"], env=quiet_platform.env(COLUMNS="200"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert profiles.returncode == 0, profiles.stderr
    assert "locked-down" in profiles.stdout and "default" in profiles.stdout
    missing = subprocess.run(
        [cli, "runner", "ghost"],
        env=quiet_platform.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "ghost" in missing.stderr and "Traceback" not in missing.stderr
