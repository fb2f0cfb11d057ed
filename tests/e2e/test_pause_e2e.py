"""Pause and Resume through the whole platform (``sandboxd up``), on raw v1beta2 stubs.

Raw stubs because no client offers pause: the official 0.26.2 client has no pause or resume
(``client-features.md``; checked in ``test_the_official_client_has_no_pause``), so neither
does ours. What a user would notice is checked against the host kernel: a busy sandbox
stops using CPU (its cgroup's counter stands still) and its freezer holds it, every call
that would need it fails at once with "is paused", and after the resume the very same
process continues: its counter goes on from where it was, its 64 MiB of memory still hash
the same, the file written before the pause is there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import streaming_pb2
from tests.e2e.conftest import Platform, run_python
from tests.support.faults import error_reason, rpc_error, sandbox_pids, wait_idle, wait_until
from tests.support.gateway import IDLE, Gateway
from tests.support.pausing import cpu_usage_ns, frozen
from tests.support.processes import keyed_channel

# Counts as fast as it can, publishing the count; keeps 64 MiB whose hash it checks on demand.
COUNTER = """
import hashlib, os
blob = bytearray(os.urandom(1 << 20)) * 64
open("/tmp/digest", "w").write(hashlib.sha256(blob).hexdigest())
n = 0
while True:
    n += 1
    if n % 20000 == 0:
        open("/tmp/count.new", "w").write(str(n))
        os.replace("/tmp/count.new", "/tmp/count")
        if os.path.exists("/tmp/check"):
            os.remove("/tmp/check")
            open("/tmp/verified.new", "w").write(hashlib.sha256(blob).hexdigest())
            os.replace("/tmp/verified.new", "/tmp/verified")
"""
PAUSED_REASON = "CWSANDBOX_SANDBOX_PAUSED"


class _Target:
    """What :class:`Gateway` needs of a control plane: a channel with the admin key."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    def channel(self, api_key: str | None = None) -> grpc.Channel:
        return keyed_channel(self._platform.target, self._platform.api_key)


@pytest.fixture
def gateway(platform: Platform) -> Iterator[Gateway]:
    with Gateway(_Target(platform)) as gw:  # type: ignore[arg-type]
        yield gw
        assert not gw.delete_started()


def pause(gw: Gateway, sandbox_id: str, **fields: int) -> g.PauseSandboxResponse:
    request = g.PauseSandboxRequest(sandbox_id=sandbox_id, **fields)
    response: g.PauseSandboxResponse = gw.gateway.Pause(request, timeout=60)
    return response


def resume(gw: Gateway, sandbox_id: str, **fields: int) -> g.ResumeSandboxResponse:
    request = g.ResumeSandboxRequest(sandbox_id=sandbox_id, **fields)
    response: g.ResumeSandboxResponse = gw.gateway.Resume(request, timeout=60)
    return response


def count(gw: Gateway, sandbox_id: str) -> int:
    try:
        return int(gw.read_file(sandbox_id, "/tmp/count") or b"0")
    except grpc.RpcError:
        return 0  # not written yet


def counted_past(gw: Gateway, sandbox_id: str, value: int) -> int:
    wait_until(
        f"the counter of {sandbox_id} passing {value}", lambda: count(gw, sandbox_id) > value, 60
    )
    return count(gw, sandbox_id)


def logs_error(gw: Gateway, sandbox_id: str) -> str:
    init = streaming_pb2.LogStreamInit(sandbox_id=sandbox_id)
    frames = gw.streaming.StreamLogs(iter([streaming_pb2.LogStreamRequest(init=init)]), timeout=10)
    for frame in frames:
        if frame.WhichOneof("response") == "error":
            return f"{frame.error.code}: {frame.error.message}"
    return ""


def test_pause_freezes_a_busy_sandbox_and_resume_continues_it(
    gateway: Gateway, platform: Platform
) -> None:
    gw = gateway
    sid = gw.start(platform.runner_id, argv=["python", "-c", COUNTER])
    gw.write_file(sid, "/tmp/before", b"written before the pause")
    counted_past(gw, sid, 0)
    digest = gw.read_file(sid, "/tmp/digest")

    assert pause(gw, sid).success
    assert frozen(sid)
    got = gw.get(sid)
    assert got.sandbox_status == g.SANDBOX_STATUS_PAUSED, got
    listed = {s.sandbox_id: s.sandbox_status for s in gw.list_all(status=g.SANDBOX_STATUS_PAUSED)}
    assert listed.get(sid) == g.SANDBOX_STATUS_PAUSED
    assert sid in {s.sandbox_id for s in gw.list_all()}  # paused is not ended
    assert pause(gw, sid).success  # pausing a paused sandbox changes nothing

    used = cpu_usage_ns(sid)
    time.sleep(1.0)  # a window for a process that was not frozen to use CPU in
    assert cpu_usage_ns(sid) - used < 5_000_000, "a paused sandbox kept using CPU"

    began = time.monotonic()
    streamed = gw.exec(sid, "true", timeout=10)
    assert streamed.error.startswith("SANDBOX_PAUSED:") and "is paused" in streamed.error
    for call in (
        lambda: gw.gateway.Exec(g.ExecSandboxRequest(sandbox_id=sid, command=["true"]), timeout=10),
        lambda: gw.gateway.AddFile(
            g.AddFileSandboxRequest(sandbox_id=sid, filepath="/tmp/x", file_contents=b"x"),
            timeout=10,
        ),
        lambda: gw.gateway.RetrieveFile(
            g.RetrieveFileSandboxRequest(sandbox_id=sid, filepath="/tmp/before"), timeout=10
        ),
    ):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert error_reason(error) == PAUSED_REASON and "is paused" in (error.details() or "")
    assert logs_error(gw, sid).startswith("SANDBOX_PAUSED:")
    assert time.monotonic() - began < 10, "a call on a paused sandbox waited"
    assert frozen(sid) and gw.get(sid).sandbox_status == g.SANDBOX_STATUS_PAUSED

    assert resume(gw, sid).success
    assert not frozen(sid)
    assert gw.get(sid).sandbox_status == g.SANDBOX_STATUS_RUNNING
    assert resume(gw, sid).success  # resuming a running sandbox changes nothing
    at_resume = count(gw, sid)
    assert at_resume > 0, "the counter started over: the process did not continue"
    assert counted_past(gw, sid, at_resume) > at_resume
    assert gw.read_file(sid, "/tmp/before") == b"written before the pause"
    gw.write_file(sid, "/tmp/check", b"")
    wait_until("the memory check", lambda: _exists(gw, sid, "/tmp/verified"), 60)
    assert gw.read_file(sid, "/tmp/verified") == digest, "its memory changed across the pause"
    assert gw.exec(sid, "echo", "alive").stdout == b"alive\n"


def _exists(gw: Gateway, sandbox_id: str, path: str) -> bool:
    try:
        gw.read_file(sandbox_id, path)
    except grpc.RpcError:
        return False
    return True


def test_stop_and_delete_of_a_paused_sandbox(gateway: Gateway, platform: Platform) -> None:
    gw = gateway
    sid = gw.start(platform.runner_id, argv=IDLE)
    wait_idle(sid)  # its shell exits 0 on SIGTERM only once it set its trap
    assert pause(gw, sid).success
    began = time.monotonic()
    gw.stop(sid, grace_seconds=10)
    assert time.monotonic() - began < 8, "the stop waited out its grace: no SIGTERM arrived"
    got = gw.get(sid)
    assert (got.sandbox_status, got.exit_code) == (g.SANDBOX_STATUS_COMPLETED, 0), got
    wait_until(f"{sid} gone from the host", lambda: not sandbox_pids(sid), 10)
    for call in (pause, resume):
        error = rpc_error(lambda call=call: call(gw, sid))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert "is completed" in (error.details() or ""), error.details()

    other = gw.start(platform.runner_id, argv=IDLE)
    wait_idle(other)
    assert pause(gw, other).success
    gw.delete(other)
    assert rpc_error(lambda: gw.get(other)).code() == grpc.StatusCode.NOT_FOUND
    wait_until(f"{other} gone from the host", lambda: not sandbox_pids(other), 20)


def test_pause_and_resume_bad_requests(gateway: Gateway, platform: Platform) -> None:
    gw = gateway
    for rpc, message in (("Pause", g.PauseSandboxRequest), ("Resume", g.ResumeSandboxRequest)):
        call = getattr(gw.gateway, rpc)
        error = rpc_error(
            lambda call=call, message=message: call(message(sandbox_id=""), timeout=10)
        )  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "sandbox_id" in error.details()
        error = rpc_error(
            lambda call=call, message=message: call(message(sandbox_id="sb-nope"), timeout=10)
        )  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(error) == "CWSANDBOX_SANDBOX_NOT_FOUND"
    sid = gw.start(platform.runner_id, argv=IDLE)
    for value in (-1, 100_000):
        error = rpc_error(lambda value=value: pause(gw, sid, max_timeout_seconds=value))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_timeout_seconds" in (error.details() or "")
    assert gw.get(sid).sandbox_status == g.SANDBOX_STATUS_RUNNING  # nothing changed
    assert gw.exec(sid, "true").ok


def test_the_official_client_on_a_paused_sandbox(
    gateway: Gateway, platform: Platform, official: object
) -> None:
    """0.26.2 reads PAUSED like RUNNING: its exec fails at once, saying why; its stop works."""
    gw = gateway
    sid = gw.start(platform.runner_id, argv=IDLE)
    assert pause(gw, sid).success
    script = f"""
import time
from cwsandbox import Sandbox
sb = Sandbox.from_id({sid!r}).result()
print("status", sb.status)
began = time.monotonic()
try:
    sb.exec(["true"]).result()
except Exception as exc:
    print("exec", type(exc).__name__, exc)
print("waited", time.monotonic() - began < 10)
sb.stop().result()
print("stopped", sb.status)
assert not hasattr(Sandbox, "pause") and not hasattr(Sandbox, "resume")
"""
    out = run_python(official, script, platform.env())  # type: ignore[arg-type]
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert "paused" in lines["status"].lower(), out
    assert "exec SandboxExecutionError" in out and "is paused" in out, out
    assert "waited True" in out, out
    assert "completed" in lines["stopped"].lower(), out


def test_the_lifetime_keeps_counting_while_paused(gateway: Gateway, platform: Platform) -> None:
    """A paused sandbox holds memory and capacity: its lifetime ends on time, paused or not."""
    gw = gateway
    started = gw.gateway.Start(
        g.StartSandboxRequest(
            command="sh",
            args=["-c", 'trap "exit 0" TERM; touch /tmp/trapped; sleep infinity & wait'],
            profile_names=["locked-down"],
            max_lifetime_seconds=4,
        ),
        timeout=60,
    )
    sid = started.sandbox_id
    gw.started.append(sid)
    gw.wait(sid, lambda s: s == g.SANDBOX_STATUS_RUNNING, 60)
    # Paused before its shell ran as far as the trap (a loaded machine), the main process
    # would meet SIGTERM with no handler and end 143: wait until the trap is set.
    gw.exec_until_ok(sid, "test", "-e", "/tmp/trapped", timeout=30)
    began = time.monotonic()
    assert pause(gw, sid).success
    got = gw.wait(sid, lambda s: s == g.SANDBOX_STATUS_COMPLETED, 60)
    assert time.monotonic() - began < 4 + 10 + 5, "the lifetime waited for a resume"
    assert "max lifetime of 4 s reached" in got.status_reason, got
    assert got.exit_code == 0, got  # thawed first: its main process got SIGTERM
    wait_until(f"{sid} gone from the host", lambda: not sandbox_pids(sid), 20)
