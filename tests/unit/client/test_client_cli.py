"""The ``cwsandbox`` discovery commands against the stand-in server (client-side only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result

from cwsandbox.cli import _discovery as cli_discovery
from cwsandbox.cli import cli
from sandboxd_protocol.v1beta2 import discovery_pb2 as pb
from tests.unit.client.client_standin import StandIn


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result: Result, message: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code
    assert result.stdout == ""
    assert result.stderr == f"error: {message}\n"


def test_runners_table_in_human_units(standin: StandIn) -> None:
    result = invoke("runners")
    assert result.exit_code == 0, result.output
    for text in ("r1", "r2", "r3", "r4", "8.0 vCPU", "16.0 GiB", "128.0 GiB", "h100", "default"):
        assert text in result.stdout
    assert "FREE CPU" not in result.stdout


def test_runners_with_resources(standin: StandIn) -> None:
    result = invoke("runners", "--resources")
    assert result.exit_code == 0
    assert "FREE CPU" in result.stdout
    assert "6.0 vCPU" in result.stdout
    assert "64.0 GiB" in result.stdout
    assert {r.view for r in standin.servicer.requests("ListAvailableRunners")} == {
        pb.RUNNER_VIEW_FULL
    }


def test_runners_filters_and_json(standin: StandIn) -> None:
    result = invoke(
        "runners",
        "--group",
        "g1",
        "--profile",
        "gpu",
        "--gpu-type",
        "h100",
        "--arch",
        "amd64",
        "--json",
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [r["runner_id"] for r in data] == ["r3"]
    assert data[0]["max_memory_bytes"] == 128 * 1024**3
    assert data[0]["resources"] is None
    request = standin.servicer.requests("ListAvailableRunners")[0]
    assert (
        request.runner_group_id,
        request.profile_name,
        request.gpu_type,
        request.architecture,
    ) == ("g1", "gpu", "h100", "amd64")


def test_runners_empty(standin: StandIn) -> None:
    result = invoke("runners", "--group", "nowhere")
    assert (result.exit_code, result.stdout) == (0, "No runners found.\n")
    assert json.loads(invoke("runners", "--group", "nowhere", "--json").stdout) == []


def test_profiles(standin: StandIn) -> None:
    result = invoke("profiles", "--ingress", "public", "--egress", "internet")
    assert result.exit_code == 0
    assert "default" in result.stdout
    assert "r1" in result.stdout
    assert "r3" not in result.stdout
    data = json.loads(invoke("profiles", "--runner", "r3", "--json").stdout)
    assert data == [
        {
            "profile_name": "gpu",
            "runner_id": "r3",
            "supported_gpu_types": ["h100"],
            "supported_architectures": ["amd64"],
            "service_exposure_modes": ["public", "private"],
            "egress_modes": ["none"],
            "warm_pool": None,
        }
    ]
    filtered = json.loads(
        invoke("profiles", "--gpu-type", "h100", "--arch", "amd64", "--json").stdout
    )
    assert [p["runner_id"] for p in filtered] == ["r3"]


def test_single_runner_and_profile(standin: StandIn) -> None:
    result = invoke("runner", "r3")
    assert result.exit_code == 0
    for text in ("r3", "32.0 vCPU", "h100", "Free GPUs", "2"):
        assert text in result.stdout
    assert (
        json.loads(invoke("runner", "r1", "--json").stdout)["resources"]["available_cpu_millicores"]
        == 6000
    )
    profile = invoke("profile", "gpu", "--runner", "r3")
    assert profile.exit_code == 0
    assert "private" in profile.stdout
    assert json.loads(invoke("profile", "default", "--json").stdout)["runner_id"] == "r1"


def test_not_found_is_one_line(standin: StandIn) -> None:
    assert_one_line_error(invoke("runner", "x"), "runner 'x' not found")
    assert_one_line_error(
        invoke("profile", "gpu", "--runner", "r2"), "profile 'gpu' not found on runner 'r2'"
    )
    assert_one_line_error(invoke("runner", " "), "runner_id must not be empty")


def test_unreachable_server(closed_port_url: str) -> None:
    result = invoke("--base-url", closed_port_url, "runners")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: cannot reach sandboxd control plane at {closed_port_url}"
    )
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["runners", "--bogus"],
        ["--base-url", "ftp://x", "runners"],
        ["--timeout", "0", "runners"],
        ["runner"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(standin: StandIn, args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert standin.servicer.calls == []


def test_bad_env_base_url_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", "http://127.0.0.1:1/some/path")
    result = invoke("runners")
    assert result.exit_code == 2
    assert "must not have a path" in result.stderr


def test_unexpected_errors_have_no_traceback(
    standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(**_: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli_discovery, "list_runners", explode)
    assert_one_line_error(invoke("runners"), "unexpected RuntimeError: kaboom")


def test_server_text_is_not_rich_markup(standin: StandIn) -> None:
    standin.servicer.runners.append(pb.AvailableRunner(runner_id="[bold]r5[/bold]"))
    assert "[bold]r5[/bold]" in invoke("runners").stdout


def test_timeout_option(standin: StandIn) -> None:
    standin.servicer.delay = 1.0
    result = invoke("--timeout", "0.2", "runner", "r1")
    assert result.exit_code == 1
    assert "timed out" in result.stderr
    assert standin.url in result.stderr


def test_console_script_process(standin: StandIn) -> None:
    """The real entry point in a real process: exit codes and a clean stderr."""
    code = "from cwsandbox.cli import main; main()"
    ok = subprocess.run(
        [sys.executable, "-c", code, "runners", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)) == 4
    missing = subprocess.run(
        [sys.executable, "-c", code, "runner", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (missing.returncode, missing.stderr) == (1, "error: runner 'nope' not found\n")
