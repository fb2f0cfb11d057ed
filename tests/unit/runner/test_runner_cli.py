"""``sandboxd runner`` as a real process against the fake control plane (see conftest.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from sandboxd.runner.cli import EXIT_REJECTED, runner_command
from sandboxd_protocol.sandboxd_v1 import runner_pb2

LAUNCH = "from sandboxd.runner.cli import runner_command; runner_command()"


async def start_runner(args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAUNCH,
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_until(stream: asyncio.StreamReader, needle: str, timeout: float = 15) -> str:
    seen = ""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            line = await stream.readline()
            if not line:
                break
            seen += line.decode()
    return seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_registers_then_exits_0_on_signal(fake_control_plane, tmp_path: Path, signum):
    async def main() -> None:
        async with fake_control_plane(profile_names=("default",)) as cp:
            process = await start_runner(
                ["--state-dir", str(tmp_path), "--tag", "a", "--tag", "b", "--group", "g"],
                {"SANDBOXD_CONTROL_PLANE": cp.url, "SANDBOXD_JOIN_TOKEN": "secret"},
            )
            try:
                assert process.stderr is not None
                output = await read_until(process.stderr, "registered with")
                received = await cp.next_message("register")
                register = received.message.register
                runner_id = (tmp_path / "runner-id").read_text().strip()
                assert f"runner {runner_id} registered with {cp.url}" in output
                assert register.runner_id == runner_id
                assert received.bearer == "secret"
                assert list(register.tags) == ["a", "b"]
                assert register.runner_group_id == "g"
                process.send_signal(signum)
                async with asyncio.timeout(10):
                    assert await process.wait() == 0
                    assert await cp.ended.get() == 1
                rest = (await process.stderr.read()).decode()
                assert "Traceback" not in output + rest
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    asyncio.run(main())


def test_rejected_runner_exits_non_zero(fake_control_plane, tmp_path: Path):
    async def main() -> tuple[int, str]:
        async with fake_control_plane(reject=grpc.StatusCode.UNAUTHENTICATED) as cp:
            process = await start_runner(
                ["--control-plane", cp.url, "--state-dir", str(tmp_path)],
                {"SANDBOXD_JOIN_TOKEN": "x"},
            )
            async with asyncio.timeout(15):
                _, stderr = await process.communicate()
            assert process.returncode is not None
            return process.returncode, stderr.decode()

    code, stderr = asyncio.run(main())
    assert code == EXIT_REJECTED
    assert "UNAUTHENTICATED" in stderr
    assert "Traceback" not in stderr


def test_join_token_file_is_read_and_argv_tokens_are_refused(fake_control_plane, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  from-a-file\n")

    async def main() -> str:
        async with fake_control_plane() as cp:
            process = await start_runner(
                ["--control-plane", cp.url, "--state-dir", str(tmp_path / "state"),
                 "--join-token-file", str(token_file)],
                {},
            )  # fmt: skip
            try:
                return (await cp.next_message("register", timeout=15)).bearer
            finally:
                process.send_signal(signal.SIGTERM)
                await process.wait()

    assert asyncio.run(main()) == "from-a-file"
    result = CliRunner().invoke(
        runner_command, ["--control-plane", "http://127.0.0.1:1", "--join-token", "secret"]
    )
    assert result.exit_code == 2
    assert "--join-token" in result.output and "ps" in result.output
    assert "--join-token-file" in result.output


def test_no_join_token_and_no_credential_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("SANDBOXD_JOIN_TOKEN", raising=False)
    result = CliRunner().invoke(
        runner_command,
        ["--control-plane", "http://127.0.0.1:1", "--state-dir", str(tmp_path), "--backend",
         "none"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "SANDBOXD_JOIN_TOKEN" in result.output


def test_unreadable_join_token_file_names_the_option(tmp_path):
    result = CliRunner().invoke(
        runner_command,
        ["--control-plane", "http://127.0.0.1:1", "--join-token-file", str(tmp_path / "nope")],
    )
    assert result.exit_code == 2
    assert "--join-token-file" in result.output and "nope" in result.output


def test_control_plane_is_required(monkeypatch):
    monkeypatch.delenv("SANDBOXD_CONTROL_PLANE", raising=False)
    result = CliRunner().invoke(runner_command, [])
    assert result.exit_code == 2
    assert "--control-plane" in result.output


def test_bad_url_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(
        runner_command, ["--control-plane", "grpc://nope", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "http:// or https://" in result.output


def test_a_zero_create_bound_is_a_usage_error_naming_the_option(tmp_path):
    args = ["--control-plane", "http://127.0.0.1:1", "--state-dir", str(tmp_path)]
    result = CliRunner().invoke(runner_command, [*args, "--max-concurrent-creates", "0"])
    assert result.exit_code == 2
    assert "--max-concurrent-creates" in result.output


def test_help_lists_the_options():
    result = CliRunner().invoke(runner_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--control-plane",
        "--runner-id",
        "--group",
        "--tag",
        "--join-token",
        "--state-dir",
        "--heartbeat-interval",
        "--log-level",
        "--max-concurrent-creates",
    ):
        assert option in result.output


def test_help_lists_the_backend_options():
    result = CliRunner().invoke(runner_command, ["--help"])
    assert result.exit_code == 0
    assert "--backend NAME" in result.output and "sandboxd backends ls" in result.output
    assert "--data-dir" in result.output


@pytest.mark.parametrize("backend", ["none", "local"])
def test_backend_choice_shows_in_register(fake_control_plane, tmp_path: Path, backend: str):
    if backend == "local" and os.geteuid() != 0:
        pytest.skip("the local backend needs root")
    data_dir = tmp_path / "data"

    async def main() -> runner_pb2.Register:
        async with fake_control_plane() as cp:
            process = await start_runner(
                ["--control-plane", cp.url, "--state-dir", str(tmp_path / "state"),
                 "--backend", backend, "--data-dir", str(data_dir)],
                {"SANDBOXD_JOIN_TOKEN": "a-token"},
            )  # fmt: skip
            try:
                register = (await cp.next_message("register", timeout=15)).message.register
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(15):
                    assert await process.wait() == 0
                assert process.stderr is not None
                assert "Traceback" not in (await process.stderr.read()).decode()
                return register
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    register = asyncio.run(main())
    assert list(register.sandboxes) == []
    assert list(register.capabilities.images) == []
    statuses = list(register.capabilities.backend_statuses)
    if backend == "local":
        assert list(register.capabilities.backends) == ["local"]
        assert [(s.name, s.available) for s in statuses] == [("local", True)]
        assert "none" in statuses[0].egress_types
        assert data_dir.is_dir()
    else:
        assert list(register.capabilities.backends) == []
        assert [(s.name, s.available, s.reason) for s in statuses] == [
            ("local", False, "disabled (--backend none)")
        ]
        assert not data_dir.exists()
