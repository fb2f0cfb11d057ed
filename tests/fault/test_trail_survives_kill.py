"""Trail events answered but not yet in the database survive a SIGKILL of the control plane.

The trail writes to the database in batches; here the batch cannot land (the test holds the
SQLite database's write lock), an exec runs and answers, and ``sandboxd up`` is SIGKILLed.
After the lock is released and ``up`` starts again on the same data directory, the exec
must be in the sandbox's trail, once, in its place (from the local journal,
``controlplane/event_journal.py``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cwsandbox import Sandbox
from cwsandbox._events import iter_events
from tests.support.faults import wait_until
from tests.support.processes import all_in_one


def test_an_answered_exec_is_in_the_trail_after_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "up"
    with all_in_one(data) as up:
        monkeypatch.setenv("CWSANDBOX_BASE_URL", up.base_url)
        monkeypatch.setenv("CWSANDBOX_API_KEY", up.api_key)
        sandbox = Sandbox.run(profile_names=["locked-down"])
        sandbox.wait()
        sandbox_id = sandbox.sandbox_id
        assert sandbox_id is not None
        wait_until(
            "the running event stored",
            lambda: "running" in [e.kind for e in iter_events(sandbox_id)],
            30,
        )
        lock = sqlite3.connect(data / "controlplane.db", timeout=10)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # no batch of the trail can land from here on
            result = sandbox.exec(["echo", "journaled"]).result()
            assert result.stdout == "journaled\n"
            up.proc.popen.kill()  # SIGKILL: nothing is flushed on the way out
            up.proc.popen.wait()
        finally:
            lock.rollback()
            lock.close()
        journal = (data / "events.journal").read_text()
        assert '"argv":["echo","journaled"]' in journal

    with all_in_one(data) as again:
        monkeypatch.setenv("CWSANDBOX_BASE_URL", again.base_url)
        monkeypatch.setenv("CWSANDBOX_API_KEY", again.api_key)
        events = [e for e in iter_events(sandbox_id) if e.kind == "exec"]
        assert [e.data["argv"] for e in events] == [["echo", "journaled"]]
        assert events[0].data["exit_code"] == 0
        # The restarted trail knows what the sandbox was: its first change after the
        # restart is noted as what it is ("stopping"), not as a second "running".
        Sandbox.from_id(sandbox_id).result().stop().result()
        wait_until(
            "the sandbox's end in its trail",
            lambda: "ended" in [e.kind for e in iter_events(sandbox_id)],
            30,
        )
        kinds = [e.kind for e in iter_events(sandbox_id)]
        assert kinds.count("running") == 1, kinds
        assert kinds.index("exec") < kinds.index("stopping") < kinds.index("ended"), kinds
    assert (data / "events.journal").read_bytes() == b""  # stored, so emptied
