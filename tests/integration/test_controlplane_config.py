"""The control plane refuses invalid configuration files at start-up, saying where and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "unknown key": (
        "profiles:\n  - display_name: a\n    spec:\n      egres: {}\n",
        "profiles[0].spec.egres",
    ),
    "bad default egress": (
        "profiles:\n  - display_name: a\n    spec:\n      network:\n        egress:\n"
        "          default: internet\n          modes: {none: {type: none}}\n",
        "profiles[0].spec.network.egress (line 6): default egress mode 'internet'",
    ),
    "allowlist without cidrs": (
        "profiles:\n  - display_name: a\n    spec:\n      network:\n        egress:\n"
        "          default: x\n          modes: {x: {type: allowlist}}\n",
        "needs at least one entry in cidrs",
    ),
    "bad cidr": (
        "profiles:\n  - display_name: a\n    spec:\n      network:\n        egress:\n"
        "          default: x\n          modes: {x: {type: allowlist, cidrs: [300.1.2.3/8]}}\n",
        "'300.1.2.3/8' is not a CIDR",
    ),
    "two defaults": (
        "profiles:\n  - display_name: a\nrunners:\n  - runner_id: r\n    bindings:\n"
        "      - {profile: a, is_default: true}\n"
        "      - {profile: a, profile_name: b, is_default: true}\n",
        "runners[0] (line 4): exactly one binding must have is_default: true (found 2",
    ),
    "no default": (
        "profiles:\n  - display_name: a\nrunners:\n  - runner_id: r\n    bindings:\n"
        "      - {profile: a}\n",
        "exactly one binding must have is_default: true (found 0)",
    ),
    "unknown profile": (
        "profiles:\n  - display_name: a\nrunners:\n  - runner_id: r\n    bindings:\n"
        "      - {profile: ghost, is_default: true}\n",
        "runners[0].bindings[0].profile (line 6): unknown profile 'ghost'",
    ),
    "bad override": (
        "profiles:\n  - display_name: a\nrunners:\n  - runner_id: r\n    bindings:\n"
        "      - {profile: a, is_default: true, overrides: {resource_ceilings: {memory: lots}}}\n",
        "runners[0].bindings[0].overrides.resource_ceilings.memory (line 6): not a quantity",
    ),
    "not yaml": ("profiles: [unclosed\n", "not valid YAML"),
    "no profiles": ("runners: []\n", "profiles (line 1): Field required"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_config_is_refused_with_file_path_and_problem(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    config = tmp_path / "platform.yaml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "sandboxd", "controlplane", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_command_accepts_the_embedded_default(tmp_path: Path) -> None:
    from importlib import resources

    default = tmp_path / "default.yaml"
    default.write_text(resources.files("sandboxd.config").joinpath("default.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "sandboxd", "config", "validate", str(default)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 profiles" in result.stdout
