"""Fast cgroup moves (``backends/local/fast_moves.py``): made without touching the host's mounts.

What they save (the keeper's move of each new agent, 10 ms to 0.5 ms on the development
host) is measured by ``bench/sandboxes.py`` and the issue notes; a timing assertion here
would only measure the load of the machine running the tests, and on a kernel that keeps
the mode until the next boot, every run after the first would pass anyway.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sandboxd.backends.base import Backend
from sandboxd.backends.local import fast_moves
from sandboxd.backends.local.cgroup_primer import CgroupPrimer
from tests.support.faults import wait_until

NAMED = f"name={fast_moves.HIERARCHY_NAME}"


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("making a cgroup hierarchy needs root")


def _listed(proc_cgroup: str) -> list[str]:
    return [line for line in proc_cgroup.splitlines() if NAMED in line.split(":")[1:2]]


def test_the_hierarchy_is_mounted_nowhere_and_holds_no_process() -> None:
    """No mount of it is attached anywhere, and every process stays at its root."""
    _require_root()
    held = [fast_moves.hold_fast_moves(), fast_moves.hold_fast_moves()]  # a second runner joins
    try:
        # Not compared with the whole table before: other test processes mount meanwhile.
        assert fast_moves.HIERARCHY_NAME not in Path("/proc/self/mountinfo").read_text()
        listed = _listed(Path("/proc/self/cgroup").read_text())
        assert len(listed) == 1 and listed[0].endswith(":/"), listed
        assert _listed(Path("/proc/1/cgroup").read_text())[0].endswith(":/")
    finally:
        for fd in held:
            os.close(fd)


def test_nothing_is_primed_while_moves_are_fast() -> None:
    """A primer whose runner holds fast moves starts no priming write."""
    _require_root()
    primer = CgroupPrimer()
    try:
        assert primer.hold_fast_moves()
        assert primer.fast
        assert not primer.prime()
    finally:
        primer.close()
    assert not primer.fast


def primer_idle(primer: CgroupPrimer) -> Callable[[], bool]:
    """Whether ``primer`` has no priming write in flight (for ``wait_until``)."""
    return lambda: not primer._busy


def test_the_operator_can_say_no(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SANDBOXD_FAST_CGROUP_MOVES=0``: no hierarchy is made, and creates are primed."""
    _require_root()
    made: list[int] = []

    def hold() -> int:
        made.append(1)
        return -1

    monkeypatch.setattr(fast_moves, "hold_fast_moves", hold)
    for no in ("0", "false", "No", " off "):
        monkeypatch.setenv(fast_moves.ENV, no)
        primer = CgroupPrimer()
        assert not primer.hold_fast_moves()
        assert not primer.fast
        assert primer.prime()
        wait_until("the priming write to end", primer_idle(primer), 10, 0.005)
    assert made == []
    monkeypatch.setenv(fast_moves.ENV, "1")
    assert fast_moves.wanted()


def test_a_host_that_cannot_make_it_primes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel or namespace that refuses the hierarchy: a warning, and priming as before.

    The refusal is a stand-in (a mock, unavoidable: this host can make the hierarchy).
    """

    def refused() -> int:
        raise PermissionError(1, "making the hierarchy: Operation not permitted")

    monkeypatch.setattr(fast_moves, "hold_fast_moves", refused)
    primer = CgroupPrimer()
    assert not primer.hold_fast_moves()
    assert not primer.hold_fast_moves()  # tried once: no warning at every create
    assert primer.prime()
    wait_until("the priming write to end", primer_idle(primer), 10, 0.005)


def test_a_backend_holds_fast_moves_once_ready(aio: asyncio.Runner, local_backend: Backend) -> None:
    """The local backend makes its creates' moves fast before the first one."""
    aio.run(local_backend._ready())  # type: ignore[attr-defined]
    assert local_backend._primer.fast  # type: ignore[attr-defined]
    assert _listed(Path("/proc/self/cgroup").read_text())


def test_a_hierarchy_still_being_taken_down_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """``EBUSY`` (the last holder just let go) is tried again; any other error is not.

    The kernel's answers are stand-ins (a mock, unavoidable: the ~50 ms in which a
    released hierarchy is still being taken down cannot be hit on purpose).
    """
    answers: list[int | OSError] = [OSError(errno.EBUSY, "busy"), OSError(errno.EBUSY, "busy"), 7]

    def once() -> int:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    monkeypatch.setattr(fast_moves, "_hold_once", once)
    assert fast_moves.hold_fast_moves() == 7
    assert answers == []
    answers[:] = [OSError(errno.EPERM, "not permitted"), 7]
    with pytest.raises(OSError) as refused:
        fast_moves.hold_fast_moves()
    assert refused.value.errno == errno.EPERM
    assert answers == [7]
    monkeypatch.setattr(fast_moves, "BUSY_SECONDS", 0.05)

    def always_busy() -> int:
        raise OSError(errno.EBUSY, "busy")

    monkeypatch.setattr(fast_moves, "_hold_once", always_busy)
    with pytest.raises(OSError) as busy:
        fast_moves.hold_fast_moves()
    assert busy.value.errno == errno.EBUSY


def test_two_first_creates_at_once_make_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backends make it from a thread at their first create: two at once hold one descriptor.

    The hierarchy is a stand-in that counts (a mock: a real one would not show a second
    descriptor leaking, and the two threads must overlap on purpose).
    """
    made: list[int] = []
    entered = threading.Event()
    go_on = threading.Event()

    def slow_hold() -> int:
        made.append(1)
        entered.set()
        go_on.wait(10)
        return os.dup(0)

    monkeypatch.setattr(fast_moves, "hold_fast_moves", slow_hold)
    primer = CgroupPrimer()
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(primer.hold_fast_moves()))
               for _ in range(2)]  # fmt: skip
    threads[0].start()
    assert entered.wait(10)
    threads[1].start()
    go_on.set()
    for thread in threads:
        thread.join(10)
    assert results == [True, True]
    assert made == [1]
    primer.close()
    assert not primer.fast


def test_a_runner_killed_while_holding_it_leaves_nothing_and_the_next_one_holds_it() -> None:
    """SIGKILL of a holder: the kernel lets its descriptor go; a restart at once holds it.

    The holder is a real process (not a runner: only the descriptor's life is under test).
    """
    _require_root()
    script = (
        "import sys, time; from sandboxd.backends.local import fast_moves as f; "
        "f.hold_fast_moves(); print('held', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        assert _listed(Path(f"/proc/{holder.pid}/cgroup").read_text())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    fd = fast_moves.hold_fast_moves()  # the next runner, at once (EBUSY is waited out)
    try:
        assert fast_moves.HIERARCHY_NAME not in Path("/proc/self/mountinfo").read_text()
        assert _listed(Path("/proc/self/cgroup").read_text())
    finally:
        os.close(fd)
