"""The guide's Sandbox code blocks, run verbatim from examples/ against ``sandboxd up``."""

from __future__ import annotations

import subprocess

from tests.e2e.conftest import OUR_PYTHON, ROOT, Platform

EXAMPLES = ROOT / "examples"


def run_example(name: str, platform: Platform) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OUR_PYTHON, str(EXAMPLES / name)],
        env=platform.env(),
        capture_output=True,
        text=True,
        timeout=180,
        cwd="/",
    )


def test_target_a_profile_directly(quiet_platform: Platform) -> None:
    # This machine has no internet: curl -s fails quietly inside the sandbox, so the block
    # prints an empty stdout. It must not raise.
    result = run_example("sandbox_target_profile.py", quiet_platform)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == "" or '"origin"' in result.stdout


def test_discovery_with_network_options(quiet_platform: Platform) -> None:
    result = run_example("sandbox_network_options.py", quiet_platform)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "connected\n\n"


def test_profile_in_sandbox_defaults(quiet_platform: Platform) -> None:
    result = run_example("sandbox_session_defaults.py", quiet_platform)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "running on discovered profile\n\n"


def test_guide_sandboxes_are_stopped_afterwards(quiet_platform: Platform) -> None:
    for name in ("sandbox_network_options.py", "sandbox_session_defaults.py"):
        assert run_example(name, quiet_platform).returncode == 0
    import cwsandbox

    runner = cwsandbox.get_runner(quiet_platform.runner_id, base_url=quiet_platform.base_url)
    assert runner.resources is not None
    # Every block used a context manager or a session: nothing is left running.
    assert runner.resources.running_sandboxes == 0
