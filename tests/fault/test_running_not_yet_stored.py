"""The control plane is SIGKILLed while a sandbox's RUNNING is shown but not yet stored.

A runner's report that a sandbox runs is the one change the control plane shows before its
database has it (``SandboxRecords.observe_running``: a create waits for one write, not two).
Here the window is held open for real: the runner is paused (SIGSTOP) while the Start is
answered, another program then holds the SQLite database locked, and the runner resumes,
starts the sandbox and reports it. Get must say RUNNING while the database still says it was
never reported; then the control plane is killed, the lock released, and the control plane
restarted on the same database. The sandbox must come back RUNNING, the same processes (not
started a second time), usable, listed once, and no orphan.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from cwsandbox._events import iter_events
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from tests.support.faults import RECOVERY, Cluster, sandbox_init, sandboxd_admin, wait_until

REPORT_BOUND = 30.0  # the resumed runner creates the sandbox and reports it within this


def observed_in_database(locker: sqlite3.Connection, sandbox_id: str) -> str:
    row = locker.execute(
        "SELECT observed FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,)
    ).fetchone()
    assert row is not None, f"{sandbox_id} has no row"
    return str(row[0])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_running_shown_before_stored_survives_a_kill9(
    cluster: Cluster, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = cluster.gateway()
    runner_proc = cluster.runner.proc
    assert runner_proc is not None
    database = Path(database_url.removeprefix("sqlite:///"))

    os.kill(runner_proc.popen.pid, signal.SIGSTOP)
    try:
        sandbox_id = gateway.create(cluster.runner_id)  # its row is stored; nothing runs yet
        locker = sqlite3.connect(database, timeout=30, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # from now on no write of the control plane lands
    finally:
        os.kill(runner_proc.popen.pid, signal.SIGCONT)
    try:
        gateway.wait(sandbox_id, lambda s: s == g.SANDBOX_STATUS_RUNNING, REPORT_BOUND)
        assert observed_in_database(locker, sandbox_id) == "none"
        init = sandbox_init(sandbox_id)
        cluster.control_plane.kill()
    finally:
        locker.rollback()
        locker.close()

    cluster.restart_control_plane()
    cluster.wait_health(True, RECOVERY)
    gateway = cluster.gateway()  # a new channel: the old one backs off its reconnects
    got = gateway.wait(sandbox_id, lambda s: s == g.SANDBOX_STATUS_RUNNING, RECOVERY)
    assert got.status_reason == "", got
    assert sandbox_init(sandbox_id) == init, "the sandbox was started a second time"
    result = gateway.exec(sandbox_id, "echo", "alive")
    assert (result.exit_code, result.stdout) == (0, b"alive\n"), result
    listed = [s.sandbox_id for s in gateway.list_all(include_stopped=True)]
    assert listed.count(sandbox_id) == 1, listed
    check = sqlite3.connect(database)
    try:
        wait_until(
            "RUNNING stored after the restart",
            lambda: observed_in_database(check, sandbox_id) == "running",
            RECOVERY,
        )
    finally:
        check.close()
    orphans = sandboxd_admin(cluster.control_plane, "sandboxes", "orphans")
    assert orphans.returncode == 0, orphans.stderr
    assert sandbox_id not in orphans.stdout, orphans.stdout
    # The trail noted "running" when it was shown; the restarted control plane learned that
    # (EventLog.seed and recover), so the runner's report after the restart adds no second.
    monkeypatch.setenv("CWSANDBOX_BASE_URL", cluster.control_plane.url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", cluster.control_plane.admin_key)
    kinds = [event.kind for event in iter_events(sandbox_id)]
    assert kinds.count("running") == 1, kinds
    assert kinds.count("placed") == 1, kinds
