"""The ``cwsandbox`` sandbox commands (ls, run, exec, sh, logs, cp, stop, rm) via click.

Runs against the in-process stand-in gateway (client-side unit tests only); the e2e tests
drive the installed command against a real ``sandboxd up``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from cwsandbox.cli import cli
from cwsandbox.cli._cp import Location, parse_location
from cwsandbox.cli._logs import parse_since
from cwsandbox.cli._render_sandboxes import age
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.unit.client.sandbox.exec_emulation import emulate
from tests.unit.client.sandbox.gateway_standin import READY, Gateway, exit_frame, out

S = gw.SandboxStatus


def invoke(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)


def one_line_error(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {message}\n"
    assert "Traceback" not in result.output


def test_ls_table_json_and_filters(gateway: Gateway) -> None:
    gateway.servicer.page_size = 100
    running = gateway.servicer.add_box(tags=["a"])
    done = gateway.servicer.add_box(S.SANDBOX_STATUS_COMPLETED, tags=["a"])
    table = invoke("ls")
    assert table.exit_code == 0
    assert running.sandbox_id in table.stdout and done.sandbox_id not in table.stdout
    assert "STATUS" in table.stdout and "running" in table.stdout
    data = json.loads(invoke("ls", "--all", "--tag", "a", "--json").stdout)
    assert {d["sandbox_id"]: d["status"] for d in data} == {
        running.sandbox_id: "running",
        done.sandbox_id: "completed",
    }
    request = gateway.servicer.requests("List")[-1]
    assert (list(request.tags), request.include_stopped) == (["a"], True)
    invoke("ls", "--status", "completed")
    assert gateway.servicer.requests("List")[-1].status == S.SANDBOX_STATUS_COMPLETED
    assert invoke("ls", "--tag", "none").stdout == "No sandboxes found.\n"


def test_run_prints_the_id_and_sends_every_option(gateway: Gateway) -> None:
    result = invoke(
        "run", "--image", "python:3.12", "--tag", "t1", "--tag", "t2", "--env", "A=1",
        "--env", "B=x=y", "--egress", "none", "--port", "8080", "--profile", "default",
        "--lifetime", "60", "--", "sleep", "100",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "sb-1\n"
    start = gateway.servicer.requests("Start")[0]
    assert (start.command, list(start.args), start.container_image) == (
        "sleep",
        ["100"],
        "python:3.12",
    )
    assert list(start.tags) == ["t1", "t2"]
    assert dict(start.environment_variables) == {"A": "1", "B": "x=y"}
    assert (start.network.egress_mode, list(start.network.exposed_ports)) == ("none", [8080])
    assert (list(start.profile_names), start.max_lifetime_seconds) == (["default"], 60)
    as_json = json.loads(invoke("run", "--json").stdout)
    assert as_json["sandbox_id"] == "sb-2" and as_json["status"] == "running"


def test_run_bad_env_is_a_usage_error(gateway: Gateway) -> None:
    result = invoke("run", "--env", "NOEQUALS")
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr
    assert gateway.servicer.requests("Start") == []


def test_exec_streams_output_and_exits_with_the_code(gateway: Gateway) -> None:
    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        yield out(b"binary \xff\x00 out\n")
        yield out("warn\n", stderr=True)
        yield exit_frame(7)

    box = gateway.servicer.add_box()
    gateway.servicer.exec_script = script
    result = invoke("exec", box.sandbox_id, "--", "sh", "-c", "exit 7")
    assert result.exit_code == 7
    assert result.stdout_bytes == b"binary \xff\x00 out\n"  # raw bytes, untouched
    assert result.stderr == "warn\n"
    init = gateway.servicer.requests("StreamExec")[0].init
    assert list(init.command) == ["sh", "-c", "exit 7"]


def test_exec_interactive_forwards_stdin(gateway: Gateway) -> None:
    box = gateway.servicer.add_box()
    result = invoke("exec", "-i", box.sandbox_id, "--", "cat", stdin=b"piped in\n")
    assert (result.exit_code, result.stdout) == (0, "piped in\n")
    invoke("exec", "--cwd", "/srv", box.sandbox_id, "--", "ls")
    assert list(gateway.servicer.requests("StreamExec")[-2].init.command) == [
        "/bin/sh",
        "-c",
        "cd /srv && exec ls",
    ]
    invoke("exec", box.sandbox_id, "python", "-i")  # options after the id are the command's
    assert list(gateway.servicer.requests("StreamExec")[-2].init.command) == ["python", "-i"]
    empty = invoke("exec", box.sandbox_id, "--")
    assert (empty.exit_code, empty.stderr) == (1, "error: command must not be empty\n")


def test_unknown_sandbox_is_one_line(gateway: Gateway) -> None:
    one_line_error(invoke("exec", "nope", "--", "ls"), "sandbox 'nope' not found")
    one_line_error(invoke("logs", "nope"), "sandbox 'nope' not found")
    one_line_error(invoke("sh", "nope"), "sandbox 'nope' not found")
    one_line_error(invoke("cp", "nope:/x", "/tmp/x"), "sandbox 'nope' not found")


def test_sh_relays_a_terminal(gateway: Gateway) -> None:
    def tty(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        yield READY
        for req in requests:
            if req.HasField("stdin"):
                yield out(b"echo: " + req.stdin.data)
            if req.HasField("close"):
                break
        yield exit_frame(3)

    box = gateway.servicer.add_box()
    gateway.servicer.exec_script = tty
    result = invoke("sh", box.sandbox_id, "--", "/bin/sh", stdin=b"ls\n")
    assert (result.exit_code, result.stdout) == (3, "echo: ls\n")
    init = gateway.servicer.requests("StreamExec")[0].init
    assert init.tty and list(init.command) == ["/bin/sh"]


def test_logs(gateway: Gateway) -> None:
    seen: list[st.LogStreamInit] = []

    def logs(init: st.LogStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        seen.append(init)
        yield st.LogStreamResponse(data=st.LogStreamData(data=b"line 1\nline 2\n"))
        yield st.LogStreamResponse(complete=st.LogStreamComplete())

    box = gateway.servicer.add_box()
    gateway.servicer.logs_script = logs
    result = invoke("logs", box.sandbox_id, "--tail", "5", "--since", "10m", "--timestamps")
    assert (result.exit_code, result.stdout) == (0, "line 1\nline 2\n")
    assert (seen[0].tail_lines, seen[0].timestamps, seen[0].HasField("since_time")) == (
        5,
        True,
        True,
    )
    bad = invoke("logs", box.sandbox_id, "--since", "yesterday-ish")
    assert bad.exit_code == 2


def test_cp_both_directions(gateway: Gateway, tmp_path: Path) -> None:
    emulate(gateway.servicer)
    box = gateway.servicer.add_box()
    local = tmp_path / "data.bin"
    payload = os.urandom(200_000)
    local.write_bytes(payload)
    assert invoke("cp", str(local), f"{box.sandbox_id}:/tmp/").exit_code == 0
    assert box.files["/tmp/data.bin"] == payload
    assert invoke("cp", str(local), f"{box.sandbox_id}:/tmp").exit_code == 0  # into a directory
    back = tmp_path / "back.bin"
    assert invoke("cp", f"{box.sandbox_id}:/tmp/data.bin", str(back)).exit_code == 0
    assert back.read_bytes() == payload
    assert invoke("cp", f"{box.sandbox_id}:/tmp/data.bin", str(tmp_path / "d")).exit_code == 0
    failed = invoke("cp", f"{box.sandbox_id}:/missing", str(tmp_path / "m"))
    assert failed.exit_code == 1 and "No such file" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "d", "data.bin"]
    assert invoke("cp", "a", "b").exit_code == 2
    missing = tmp_path / "nope"
    one_line_error(
        invoke("cp", str(missing), f"{box.sandbox_id}:/x"), f"{missing}: No such file or directory"
    )


def test_stop_and_rm(gateway: Gateway) -> None:
    box = gateway.servicer.add_box()
    other = gateway.servicer.add_box()
    refused = invoke("rm", box.sandbox_id)
    assert refused.exit_code == 1 and "stop it first or use --force" in refused.stderr
    stopped = invoke("stop", box.sandbox_id, "nope", "--grace", "3")
    assert stopped.exit_code == 1
    assert stopped.stdout == f"{box.sandbox_id}\n"
    assert stopped.stderr == "error: sandbox 'nope' not found\n"
    assert gateway.servicer.requests("Stop")[0].graceful_shutdown_seconds == 3
    assert invoke("rm", box.sandbox_id).stdout == f"{box.sandbox_id}\n"
    forced = invoke("rm", "--force", other.sandbox_id, "gone-already")
    assert forced.exit_code == 0 and gateway.servicer.boxes == {}


def test_helpers() -> None:
    assert parse_location("sb-1:/tmp/x") == Location("/tmp/x", "sb-1")
    assert parse_location("./a:b") == Location("./a:b")
    assert parse_location("-") == Location("-")
    with pytest.raises(click.BadParameter):
        parse_location("sb-1:relative")
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2030-01-01T00:00:00+00:00") == now
    assert age(now - timedelta(seconds=5), now) == "5s"
    assert age(now - timedelta(hours=50), now) == "2d"
    assert age(None) == "-"
