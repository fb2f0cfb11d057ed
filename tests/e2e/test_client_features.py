"""Our client's streaming features against a real ``sandboxd up`` (nothing simulated).

Exec with stdin and live output, signals, timeouts, terminals, files of every size and their
errors, remote functions, lifetimes, logs and the ``cwsandbox`` CLI driven as a subprocess.
Logs are skipped, saying why, while the server answers StreamLogs with UNIMPLEMENTED.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cwsandbox import (
    FunctionError,
    Sandbox,
    SandboxCommandTimeoutError,
    SandboxDefaults,
    SandboxFileError,
    SandboxNotFoundError,
    SandboxTerminatedError,
    Session,
)
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.e2e.conftest import OUR_PYTHON, ROOT, Platform
from tests.support.processes import keyed_channel

CLI = str(Path(sys.executable).parent / "cwsandbox")
TAG = "client-features-e2e"
MIB = 1024 * 1024
OFFSET = 100


@pytest.fixture
def client_env(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Platform:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", platform.api_key)
    return platform


@pytest.fixture
def sandbox(client_env: Platform) -> Iterator[Sandbox]:
    with Sandbox.run(tags=[TAG]) as sb:
        sb.wait()
        yield sb


def logs_unimplemented(platform: Platform) -> bool:
    """Whether the server still answers StreamLogs with UNIMPLEMENTED."""
    with keyed_channel(platform.target, platform.api_key) as channel:
        call = channel.stream_stream(
            "/coreweave.sandbox.v1beta2.GatewayStreamingService/StreamLogs",
            request_serializer=st.LogStreamRequest.SerializeToString,
            response_deserializer=st.LogStreamResponse.FromString,
        )
        init = st.LogStreamRequest(init=st.LogStreamInit(sandbox_id="probe-missing"))
        try:
            list(call(iter([init]), timeout=10))
        except grpc.RpcError as err:
            return err.code() is grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined, no-any-return]
    return False


@pytest.fixture
def logs(client_env: Platform) -> None:
    if logs_unimplemented(client_env):
        pytest.skip("the server answers StreamLogs with UNIMPLEMENTED (log streaming not ready)")


# --- exec -------------------------------------------------------------------------------------

ECHO_LINES = (
    "import sys\nfor line in iter(sys.stdin.readline, ''):\n    sys.stdout.write('got ' + line)"
)


def test_exec_stdin_with_live_output(sandbox: Sandbox) -> None:
    proc = sandbox.exec(
        ["python3", "-u", "-c", ECHO_LINES],
        stdin=True,
    )
    assert proc.stdin is not None
    chunks = iter(proc.stdout)
    for word in ("alpha", "beta", "gamma"):
        proc.stdin.writeline(word).result()
        assert next(chunks) == f"got {word}\n"  # answered before stdin is closed
    proc.stdin.close().result()
    assert proc.wait() == 0
    assert proc.result().stdout == "got alpha\ngot beta\ngot gamma\n"


def test_output_is_complete_and_ordered_with_a_slow_reader(sandbox: Sandbox) -> None:
    proc = sandbox.exec(["seq", "1", "200000"])
    text = []
    for n, chunk in enumerate(proc.stdout):
        text.append(chunk)
        if n % 100 == 0:
            time.sleep(0.01)
    expected = "".join(f"{i}\n" for i in range(1, 200001))
    assert "".join(text) == expected and proc.result().stdout == expected


@pytest.mark.parametrize("signum", [2, 9, 15])
def test_signals_give_128_plus_n(sandbox: Sandbox, signum: int) -> None:
    assert sandbox.exec(["sh", "-c", f"kill -{signum} $$"]).wait() == 128 + signum


def test_exec_timeout_kills_the_command(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxCommandTimeoutError):
        sandbox.exec(["sh", "-c", "echo start; exec sleep 321"], timeout_seconds=1).result()
    assert time.monotonic() - started < 4
    for _ in range(50):
        ps = sandbox.exec(["ps", "-eo", "args"]).result().stdout
        if "sleep 321" not in ps:
            break
        time.sleep(0.1)
    assert "sleep 321" not in ps


def test_shell_is_a_real_terminal(sandbox: Sandbox) -> None:
    session = sandbox.shell(["/bin/sh"], width=101, height=33)
    session.stdin.write(b"stty size; tty\n").result()
    time.sleep(0.5)
    session.resize(77, 22)
    time.sleep(0.3)
    session.stdin.write(b"stty size; exit 4\n").result()
    output = b"".join(session.output)
    assert session.wait() == 4
    assert b"33 101" in output and b"22 77" in output and b"/dev/pts/" in output


# --- files --------------------------------------------------------------------------------------


def test_small_files(sandbox: Sandbox) -> None:
    sandbox.write_file("/tmp/new/dir/a.bin", b"\x00hello\xff").result()
    assert sandbox.read_file("/tmp/new/dir/a.bin").result() == b"\x00hello\xff"
    sandbox.write_file("/tmp/empty", b"").result()
    assert sandbox.read_file("/tmp/empty").result() == b""
    assert b"".join(sandbox.read_file_streaming("/tmp/new/dir/a.bin")) == b"\x00hello\xff"


def test_large_files_fall_back_to_streaming(sandbox: Sandbox) -> None:
    data = os.urandom(40 * MIB)
    sandbox.write_file("/root/big.bin", data).result()  # > 32 MiB: streamed
    assert sandbox.read_file("/root/big.bin").result() == data  # FILE_TOO_LARGE: streamed
    chunks = list(sandbox.read_file_streaming("/root/big.bin"))
    assert len(chunks) > 1 and b"".join(chunks) == data
    pieces = (data[i : i + 3 * MIB] for i in range(0, len(data), 3 * MIB))
    sandbox.write_file_streaming("/root/copy.bin", pieces).result()
    check = sandbox.exec(["cmp", "/root/big.bin", "/root/copy.bin"]).result()
    assert check.returncode == 0, check.stderr


FILE_CASES = [
    ("/no/such/file", "CWSANDBOX_FILE_NOT_FOUND"),
    ("/etc", "CWSANDBOX_FILE_IS_DIRECTORY"),
    ("/tmp/locked", "CWSANDBOX_FILE_PERMISSION_DENIED"),
    ("/etc/passwd/sub/child", "CWSANDBOX_FILE_NOT_FOUND"),  # a parent is not a directory
]


@pytest.mark.parametrize(("path", "reason"), FILE_CASES)
@pytest.mark.parametrize("how", ["unary", "streaming"])
def test_file_errors(sandbox: Sandbox, path: str, reason: str, how: str) -> None:
    sandbox.exec(["sh", "-c", "echo s > /tmp/locked && chmod 000 /tmp/locked"]).result()
    with pytest.raises(SandboxFileError) as info:
        if how == "unary":
            sandbox.read_file(path).result()
        else:
            list(sandbox.read_file_streaming(path))
    assert (info.value.reason, info.value.filepath) == (reason, path)
    assert not isinstance(info.value, SandboxNotFoundError)
    if path != "/no/such/file":  # writing there creates it (and its parents)
        with pytest.raises(SandboxFileError) as info:
            if how == "unary":
                sandbox.write_file(path, b"x").result()
            else:
                sandbox.write_file_streaming(path, b"x").result()
        assert (info.value.reason, info.value.filepath) == (reason, path)


def _memory_kib(pid: int) -> dict[str, int]:
    """``pid``'s resident memory from ``/proc/PID/status`` (KiB), split by kind, and threads."""
    fields = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    return found


def test_one_gib_round_trip_in_constant_memory(client_env: Platform) -> None:
    """1 GiB in and out through FileService: neither the client nor the server holds it.

    The server (control plane and runner, one ``sandboxd up`` process) is sampled while the
    bytes flow; both directions are bounded by a few frames per hop whatever the size.
    """
    server = client_env.proc.popen.pid
    at_peak, started = _memory_kib(server), time.monotonic()
    before = peak = at_peak["VmRSS"]
    timeline: dict[int, int] = {}  # second -> the server's largest RSS growth in it (MiB)
    example = subprocess.Popen(
        [OUR_PYTHON, str(ROOT / "examples" / "large_file_streaming.py"), "1024"],
        env=client_env.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while example.poll() is None:
        memory = _memory_kib(server)
        second = int(time.monotonic() - started)
        timeline[second] = max(timeline.get(second, 0), (memory["VmRSS"] - before) // 1024)
        if memory["VmRSS"] > peak:
            peak, at_peak = memory["VmRSS"], {**memory, "second": second}
        time.sleep(0.05)
    stdout, stderr = example.communicate(timeout=900)
    assert example.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["received"] == report["bytes"] == 1024 * MIB
    assert report["expected_sha256"] == report["remote_sha256"] == report["received_sha256"]
    sizes = {k: v for k, v in report.items() if "sha" not in k}
    # The file itself never sits in memory: the reader holds 8 MiB unread, gRPC an 8 MiB
    # window. (Before the client fixed its streaming window, a busy host let gRPC's
    # bandwidth probes grow it until gRPC held 120-220 MiB of the file: CI saw 285 MiB.)
    assert report["peak_rss_mib"] < 150, sizes
    # Nor on the server: a few frames per hop, plus what the allocator keeps of the 1 MiB
    # buffers its threads used (glibc arenas), which does not grow with the file.
    # On failure: when the peak came (the report's write_seconds splits write from read), and
    # whether it was heap (RssAnon) or mapped files, to tell a held frame from the allocator.
    assert (peak - before) / 1024 < 192, (before, at_peak, sizes, timeline)


# --- remote functions, lifetimes, logs --------------------------------------------------------


def test_remote_functions(client_env: Platform) -> None:
    with Session(SandboxDefaults(tags=[TAG])) as session:

        @session.function()
        def describe(x: int, scale: int = 2) -> dict[str, object]:
            import socket

            return {"value": x * scale + OFFSET, "host": socket.gethostname()}

        @session.function()
        def explode() -> None:
            raise KeyError("missing-key")

        result = describe.remote(4, scale=3).result()
        assert result["value"] == 112 and result["host"] != os.uname().nodename
        assert [r.result()["value"] for r in describe.map([(1,), (2, 10)])] == [102, 120]
        with pytest.raises(FunctionError) as info:
            explode.remote().result()
        assert info.value.exception_type == "KeyError"
        assert __file__ in (info.value.remote_traceback or "")
        assert session.sandbox_count == 0  # every call's sandbox was stopped
    done = subprocess.run(
        [OUR_PYTHON, str(ROOT / "examples" / "remote_functions.py")],
        env=client_env.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "50.0",
        "[10.0, 2.0]",
        "remote ZeroDivisionError: division by zero",
    ]


def _wait_armed(sandbox: Sandbox) -> None:
    """Wait until the main shell has set its TERM trap (it then touches ``/tmp/armed``).

    The handle is ready once the process is spawned, before the shell has read its script:
    a stop that lands before ``trap`` meets the default action (143), not the trap.
    """
    deadline = time.monotonic() + 30
    while sandbox.exec(["test", "-e", "/tmp/armed"]).result().returncode != 0:
        assert time.monotonic() < deadline, "the main shell never set its trap"
        time.sleep(0.02)


def test_lifetime_and_graceful_shutdown(client_env: Platform) -> None:
    short = Sandbox.run("sleep", "600", max_lifetime_seconds=2, tags=[TAG])
    short.wait_until_complete(timeout=60).result()
    assert (short.status, short.returncode) == ("completed", 143)  # SIGTERM at end of life

    trap = "trap 'echo bye; exit 7' TERM; touch /tmp/armed; sleep 600 & wait"
    graceful = Sandbox.run("sh", "-c", trap, tags=[TAG])
    graceful.wait()
    _wait_armed(graceful)
    graceful.stop(graceful_shutdown_seconds=5).result()
    assert graceful.returncode == 7
    with pytest.raises(SandboxTerminatedError):  # this handle stopped it
        graceful.wait_until_complete().result()
    graceful.wait_until_complete(raise_on_termination=False).result()

    stubborn = Sandbox.run(
        "sh", "-c", "trap '' TERM; touch /tmp/armed; sleep 600 & wait; sleep 600", tags=[TAG]
    )
    stubborn.wait()
    _wait_armed(stubborn)
    started = time.monotonic()
    stubborn.stop(graceful_shutdown_seconds=1).result()
    assert stubborn.returncode == 137 and time.monotonic() - started < 10


def test_logs(client_env: Platform, logs: None) -> None:
    script = (
        "for i in 1 2 3 4; do echo line $i; done; echo oops >&2; sleep 0.5; echo late; sleep 600"
    )
    with Sandbox.run("sh", "-c", script, tags=[TAG]) as sb:
        follow = sb.stream_logs(follow=True)
        seen = []
        for line in follow:
            seen.append(line)
            if line == "late\n":
                break
        follow.close()
        assert [x for x in seen if x.startswith("line")] == [f"line {i}\n" for i in range(1, 5)]
        assert "oops\n" in seen
        assert list(sb.stream_logs(tail_lines=2)) == ["oops\n", "late\n"]
        stamped = list(sb.stream_logs(timestamps=True))
        assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", x) for x in stamped), stamped
    assert "late\n" in list(sb.stream_logs())  # still readable after the stop


# --- the CLI ------------------------------------------------------------------------------------


def cli(
    platform: Platform, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CLI, *args], env=platform.env(), input=stdin, capture_output=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_cli_lifecycle(platform: Platform, tmp_path: Path) -> None:
    run = cli(platform, "run", "--tag", TAG, "--tag", "cli", "--env", "GREETING=hi", "--json")
    assert run.returncode == 0, run.stderr
    sid = json.loads(run.stdout)["sandbox_id"]
    listed = json.loads(cli(platform, "ls", "--tag", "cli", "--json").stdout)
    assert [s["sandbox_id"] for s in listed] == [sid] and listed[0]["status"] == "running"
    assert sid.encode() in cli(platform, "ls").stdout

    done = cli(platform, "exec", sid, "--", "sh", "-c", 'echo "$GREETING"; echo e >&2; exit 5')
    assert (done.returncode, done.stdout, done.stderr) == (5, b"hi\n", b"e\n")
    piped = cli(platform, "exec", "-i", sid, "--", "wc", "-c", stdin=b"x" * 1000)
    assert piped.stdout.strip() == b"1000"
    term = cli(platform, "sh", sid, "--", "/bin/sh", stdin=b"tty; exit 3\n")
    assert term.returncode == 3 and b"/dev/pts/" in term.stdout

    payload = os.urandom(5 * MIB)
    (tmp_path / "up.bin").write_bytes(payload)
    assert cli(platform, "cp", str(tmp_path / "up.bin"), f"{sid}:/root/").returncode == 0
    assert cli(platform, "cp", f"{sid}:/root/up.bin", str(tmp_path / "down.bin")).returncode == 0
    assert (tmp_path / "down.bin").read_bytes() == payload
    # With --progress, a bar on stderr that reaches the size; the bytes are the same.
    shown = cli(platform, "cp", "--progress", str(tmp_path / "up.bin"), f"{sid}:/root/bar.bin")
    assert shown.returncode == 0 and b"5.0/5.0 MiB" in shown.stderr, shown.stderr[-300:]
    back = cli(platform, "cp", "--progress", f"{sid}:/root/bar.bin", str(tmp_path / "bar.bin"))
    assert back.returncode == 0 and b"5.0/5.0 MiB" in back.stderr, back.stderr[-300:]
    assert (tmp_path / "bar.bin").read_bytes() == payload

    refused = cli(platform, "rm", sid)
    assert refused.returncode == 1 and b"stop it first" in refused.stderr
    assert cli(platform, "stop", sid, "--grace", "2").stdout == f"{sid}\n".encode()
    assert cli(platform, "rm", sid).returncode == 0
    assert json.loads(cli(platform, "ls", "--all", "--tag", "cli", "--json").stdout) == []


def test_cli_sh_on_a_real_terminal(sandbox: Sandbox, client_env: Platform) -> None:
    """Raw mode, the local window size, and SIGWINCH resizing, through a local pty."""
    master, slave = os.openpty()
    set_size(slave, 100, 30)
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [CLI, "sh", sandbox.sandbox_id or "", "--", "/bin/sh"], env=client_env.env(),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    seen = bytearray()

    def expect(text: bytes) -> None:
        deadline = time.monotonic() + 20
        while text not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                seen.extend(os.read(master, 65536))
        assert text in seen, bytes(seen)

    try:
        expect(b"# ")  # the remote shell's prompt: it is ready for input
        os.write(master, b"stty size\n")
        expect(b"30 100")
        set_size(master, 80, 20)
        os.kill(proc.pid, signal.SIGWINCH)
        time.sleep(0.5)
        os.write(master, b"stty size; exit 6\n")
        expect(b"20 80")
        assert proc.wait(timeout=20) == 6
        assert termios.tcgetattr(slave) == before  # the local terminal was restored
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_cli_errors_are_one_line(client_env: Platform) -> None:
    platform = client_env
    for args in (("exec", "nope", "--", "true"), ("stop", "nope"), ("cp", "nope:/x", "/tmp/x")):
        done = cli(platform, *args)
        assert done.returncode == 1
        assert done.stderr == b"error: sandbox 'nope' not found\n", done.stderr
    with Sandbox.run(tags=[TAG]) as sb:
        missing = cli(platform, "cp", f"{sb.sandbox_id}:/nope", "/tmp/never-written")
    assert missing.returncode == 1 and missing.stderr.count(b"\n") == 1
    assert b"Traceback" not in missing.stderr and not os.path.exists("/tmp/never-written")


def test_cli_logs(platform: Platform, logs: None) -> None:
    with Sandbox.run("sh", "-c", "echo one; echo two; sleep 600", tags=[TAG]) as sb:
        sb.wait()
        time.sleep(0.5)
        done = cli(platform, "logs", sb.sandbox_id or "", "--tail", "1")
    assert (done.returncode, done.stdout) == (0, b"two\n")
