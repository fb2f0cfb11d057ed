"""Unary ``GatewayService/Exec`` through the whole platform, on raw v1beta2 stubs.

Raw stubs because no client calls it: the official 0.26.2 client never does
(``client-features.md``), and ours has streaming ``exec``. Each test checks what a caller
gets: output and exit code, output past the cap counted but not kept, a command past its
time limit killed (no process left in the sandbox) and answered DEADLINE_EXCEEDED, and
every malformed request refused naming its field while the sandbox keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.e2e.conftest import Platform
from tests.e2e.test_bad_input import reason_of
from tests.support.faults import rpc_error
from tests.support.gateway import IDLE, Gateway
from tests.support.processes import keyed_channel


class _Target:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    def channel(self, api_key: str | None = None) -> grpc.Channel:
        return keyed_channel(
            self._platform.target,
            self._platform.api_key if api_key is None else api_key,
            options=[("grpc.max_receive_message_length", 100 * 1024 * 1024)],
        )


@pytest.fixture(scope="module")
def sandbox(platform: Platform) -> Iterator[tuple[Gateway, str]]:
    with Gateway(_Target(platform)) as gw:  # type: ignore[arg-type]
        yield gw, gw.start(platform.runner_id, argv=IDLE)
        assert not gw.delete_started()


def run(gw: Gateway, sid: str, command: list[str], **fields: object) -> g.ExecResponse:
    request = g.ExecSandboxRequest(sandbox_id=sid, command=command, **fields)  # type: ignore[arg-type]
    response: g.ExecSandboxResponse = gw.gateway.Exec(request, timeout=120)
    return response.result


def test_output_and_exit_code(sandbox: tuple[Gateway, str]) -> None:
    gw, sid = sandbox
    result = run(gw, sid, ["/bin/sh", "-c"], args=['echo out; echo err >&2; exit "$1"', "sh", "7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    assert (result.stdout_bytes_produced, result.stderr_bytes_produced) == (4, 4)
    assert not result.stdout_truncated and not result.stderr_truncated
    missing = run(gw, sid, ["/no/such/program"])
    assert missing.exit_code == 127 and missing.stderr, missing
    # What an exec writes is visible to the next (the same sandbox, the same files).
    assert run(gw, sid, ["/bin/sh", "-c", "echo kept > /tmp/unary"]).exit_code == 0
    assert run(gw, sid, ["cat", "/tmp/unary"]).stdout == b"kept\n"


def test_output_past_the_cap_is_counted_not_kept(sandbox: tuple[Gateway, str]) -> None:
    gw, sid = sandbox
    big = "head -c 5000 /dev/zero; head -c 3000 /dev/zero >&2"
    capped = run(gw, sid, ["/bin/sh", "-c", big], buffered_max_kib=1)
    assert (len(capped.stdout), len(capped.stderr)) == (1024, 1024)
    assert capped.stdout_truncated and capped.stderr_truncated
    assert (capped.stdout_bytes_produced, capped.stderr_bytes_produced) == (5000, 3000)
    discarded = run(gw, sid, ["/bin/sh", "-c", big], output_handling=g.OUTPUT_POLICY_DISCARD)
    assert (discarded.stdout, discarded.stderr, discarded.exit_code) == (b"", b"", 0)
    assert discarded.stdout_bytes_produced == 5000 and discarded.stdout_truncated
    # 40 MiB with the default cap (1 MiB): the command is not blocked, the answer stays small.
    flood = run(gw, sid, ["/bin/sh", "-c", "head -c 41943040 /dev/zero"])
    assert flood.exit_code == 0 and len(flood.stdout) == 1 << 20
    assert flood.stdout_bytes_produced == 40 << 20 and flood.stdout_truncated


def test_a_command_past_its_time_limit_is_killed(sandbox: tuple[Gateway, str]) -> None:
    gw, sid = sandbox
    began = time.monotonic()
    error = rpc_error(
        lambda: gw.gateway.Exec(
            g.ExecSandboxRequest(sandbox_id=sid, command=["sleep", "31.5"], max_timeout_seconds=1),
            timeout=60,
        )
    )
    assert time.monotonic() - began < 15
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert reason_of(error)[0] == "CWSANDBOX_COMMAND_TIMEOUT"
    deadline = time.monotonic() + 20
    while b"31.5" in run(gw, sid, ["ps", "-eo", "args"]).stdout:
        assert time.monotonic() < deadline, "the timed-out command still runs"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"command": []}, "command"),
        ({"command": [""]}, "command"),
        ({"command": ["echo"], "args": ["a\x00b"]}, "args[0]"),
        ({"command": ["echo", "x" * 300_000]}, "command[1]"),
        ({"command": ["true"], "max_timeout_seconds": -1}, "max_timeout_seconds"),
        ({"command": ["true"], "max_timeout_seconds": 100_000}, "max_timeout_seconds"),
        ({"command": ["true"], "output_handling": g.OUTPUT_POLICY_STREAM}, "output_handling"),
        ({"command": ["true"], "output_handling": 42}, "output_handling"),
        ({"command": ["true"], "buffered_max_kib": 1 << 20}, "buffered_max_kib"),
    ],
)
def test_bad_requests_name_the_field(
    sandbox: tuple[Gateway, str], fields: dict[str, object], field: str
) -> None:
    gw, sid = sandbox
    request = g.ExecSandboxRequest(sandbox_id=sid, **fields)  # type: ignore[arg-type]
    error = rpc_error(lambda: gw.gateway.Exec(request, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert reason_of(error)[2] == [field], (error.details(), reason_of(error))
    assert run(gw, sid, ["echo", "fine"]).stdout == b"fine\n"  # nothing else disturbed


def test_unknown_and_stopped_sandboxes(sandbox: tuple[Gateway, str], platform: Platform) -> None:
    gw, _ = sandbox
    missing = rpc_error(
        lambda: gw.gateway.Exec(g.ExecSandboxRequest(sandbox_id="sb-nope", command=["id"]))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(missing)[0] == "CWSANDBOX_SANDBOX_NOT_FOUND"
    stopped = gw.start(platform.runner_id, argv=IDLE)
    gw.stop(stopped)
    error = rpc_error(
        lambda: gw.gateway.Exec(g.ExecSandboxRequest(sandbox_id=stopped, command=["id"]))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(error)[0] == "CWSANDBOX_SANDBOX_NOT_RUNNING"
