"""Host commands made ahead of need run niced and die with the process that started them.

``sandboxd.backends.local.host_commands.run(..., nice=True)`` is how a runner makes networks
ahead of need. Such a command may start seconds late on a busy host; if the runner is killed
meanwhile, the next runner reaps the half-made network, and a command that ran after that
would leave rules behind for good. So it must die with its runner (``setpriv --pdeathsig``).
Here a real Python process starts one and is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandboxd.backends.local.host_commands import LOWEST_PRIORITY, NetworkError, run
from tests.support.faults import wait_until

STARTER = textwrap.dedent(
    """
    import asyncio, sys
    from sandboxd.backends.local.host_commands import run

    # The command writes its PID, then becomes a long sleep (exec keeps the PID).
    script = f"echo $$ > {sys.argv[1]}.tmp && mv {sys.argv[1]}.tmp {sys.argv[1]} && exec sleep 600"
    asyncio.run(run("sh", "-c", script, nice=sys.argv[2] == "nice"))
    """
)


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name, or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _started_command(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """A Python process running one host command; the command's PID and start time."""
    pid_file = tmp_path / "pid"
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(pid_file), mode])
    wait_until(
        "the host command started (or its starter ended)",
        lambda: pid_file.exists() or starter.poll() is not None,
        30,
        interval=0.01,
    )
    assert pid_file.exists(), "the starter ended before its command ran"
    pid = int(pid_file.read_text())
    fields = _stat_fields(pid)
    assert fields is not None
    return starter, pid, fields[19]  # starttime: tells this process from a later one


def _end(starter: subprocess.Popen[bytes], pid: int, started: str) -> None:
    """Kill the starter and, if it still lives (the same process), the command."""
    starter.kill()
    starter.wait(timeout=30)
    fields = _stat_fields(pid)
    if fields is not None and fields[19] == started:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_command_made_ahead_runs_niced_and_dies_with_its_runner(tmp_path: Path) -> None:
    starter, pid, started = _started_command(tmp_path, "nice")
    try:

        def niced() -> bool:  # set by its runner right after the start: on a busy host
            fields = _stat_fields(pid)  # the command may have written its PID before
            return fields is not None and int(fields[16]) == LOWEST_PRIORITY

        wait_until("the command's nice value", niced, 10, interval=0.01)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=30)

        def ended() -> bool:  # gone, another process by now, or killed and not yet reaped
            fields = _stat_fields(pid)
            return fields is None or fields[19] != started or fields[0] == "Z"

        wait_until("the command ended with the process that ran it", ended, 10, interval=0.01)
    finally:
        _end(starter, pid, started)


def test_a_command_on_the_create_path_runs_at_normal_priority(tmp_path: Path) -> None:
    starter, pid, started = _started_command(tmp_path, "plain")
    try:
        fields = _stat_fields(pid)
        assert fields is not None and int(fields[16]) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        _end(starter, pid, started)


@pytest.mark.parametrize("nice", [False, True])
def test_a_command_runs_from_the_path_in_force_when_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nice: bool
) -> None:
    """Commands are run by their absolute path, looked up once per ``PATH``: a ``PATH``
    changed since the last run (a runner's environment, or a test's wrapper) is followed,
    and a program found nowhere fails as a bare name did (``setpriv`` reports it)."""
    if nice and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    dirs = [tmp_path / "first", tmp_path / "second"]
    for folder in dirs:
        folder.mkdir()
        probe = folder / "sandboxd-probe"
        probe.write_text(f'#!/bin/sh\necho "{folder.name} $0"\n')
        probe.chmod(0o755)
    base = os.environ["PATH"]
    for folder in (*dirs, dirs[0]):
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{base}")
        out = asyncio.run(run("sandboxd-probe", nice=nice))
        assert out == f"{folder.name} {folder / 'sandboxd-probe'}\n"
    monkeypatch.setenv("PATH", base)
    with pytest.raises(NetworkError if nice else FileNotFoundError, match="sandboxd-probe"):
        asyncio.run(run("sandboxd-probe", nice=nice))


def test_no_host_command_runs_from_a_thread_in_another_network_namespace() -> None:
    """A thread that entered another network namespace (a sandbox's) and stayed there must
    not run firewall commands: a rule added there filters nothing on the host, and a removal
    there "succeeds" while the host keeps the rule. The command is refused by name; back
    home, the same thread runs it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace of its own")
    import threading

    from sandboxd.backends.local import syscalls

    outcome: dict[str, object] = {}

    def elsewhere() -> None:  # a thread of its own: the test's thread stays home
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.unshare(syscalls.CLONE_NEWNET)
            try:
                asyncio.run(run("true"))
            except NetworkError as exc:
                outcome["away"] = str(exc)
            syscalls.setns(home, syscalls.CLONE_NEWNET)
            outcome["home"] = asyncio.run(run("echo", "ran"))
        finally:
            os.close(home)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(30)
    assert "not in the runner's network namespace" in str(outcome.get("away"))
    assert outcome.get("home") == "ran\n"
