"""The host-wide lock of the firewall chains that backends share (``shared_rules_lock.py``).

Holders take turns within a process as across processes; a holder that dies frees it; one
that never lets go is passed over after ``WAIT_SECONDS`` with a warning, never waited for
without end. Other processes hold it here the way another backend would: a child that
takes the ``flock`` on the same file.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxd.backends.local import shared_rules_lock
from sandboxd.backends.local.shared_rules_lock import LOCK_NAME, SharedRulesLock

_HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def _holder(directory: Path) -> subprocess.Popen[str]:
    """Another process holding the lock (it says so on stdout first)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory / LOCK_NAME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def _free(directory: Path) -> bool:
    """Whether nobody holds the lock (tried from a descriptor of our own)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_holders_in_one_process_take_turns(tmp_path: Path) -> None:
    lock = SharedRulesLock(str(tmp_path))
    order: list[str] = []

    async def hold(name: str, entered: asyncio.Event | None = None) -> None:
        async with lock.held():
            order.append(f"{name} in")
            if entered is not None:
                entered.set()
            await asyncio.sleep(0.05)  # the other one is waiting meanwhile
            order.append(f"{name} out")

    async def scenario() -> None:
        entered = asyncio.Event()
        first = asyncio.create_task(hold("a", entered))
        await entered.wait()
        await asyncio.gather(first, hold("b"))
        assert _free(tmp_path)

    asyncio.run(scenario())
    assert order == ["a in", "a out", "b in", "b out"]


def test_a_lock_whose_holder_was_killed_is_free_at_once(tmp_path: Path) -> None:
    """A backend killed with SIGKILL while it held the lock never blocks another."""
    child = _holder(tmp_path)
    assert not _free(tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait()

    async def scenario() -> None:
        async with asyncio.timeout(shared_rules_lock.WAIT_SECONDS / 2):
            async with SharedRulesLock(str(tmp_path)).held():
                assert not _free(tmp_path)  # really held by us now
        assert _free(tmp_path)

    asyncio.run(scenario())


def test_a_holder_that_never_lets_go_is_passed_over_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shared_rules_lock, "WAIT_SECONDS", 0.2)
    child = _holder(tmp_path)
    try:

        async def scenario() -> None:
            async with asyncio.timeout(5):
                async with SharedRulesLock(str(tmp_path)).held():
                    pass

        with caplog.at_level(logging.WARNING, logger=shared_rules_lock.__name__):
            asyncio.run(scenario())
        assert "going on without it" in caplog.text
    finally:
        child.kill()
        child.wait()
