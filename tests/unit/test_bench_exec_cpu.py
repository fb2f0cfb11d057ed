"""``bench/exec_cpu.py``: the per-thread CPU readings it splits an exec's cost by.

Its numbers are only as good as the readings: a thread's time must grow while it works, the
loop thread's must not be counted as another's, and the agent must be the one process of
that name under ``sandboxd up`` (two would make it guess).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import exec_cpu


def _spin(seconds: float) -> None:
    """Run on the CPU for ``seconds`` of this thread's own CPU time (however loaded)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_working_thread_is_counted_as_itself_and_not_as_the_others() -> None:
    main = threading.get_native_id()
    before = exec_cpu.thread_ns(os.getpid())
    _spin(0.05)
    loop, other = exec_cpu.split(before, exec_cpu.thread_ns(os.getpid()), main)
    assert loop >= 40_000_000  # 50 ms spun on this thread, in nanoseconds
    assert other < loop

    spun, done = threading.Event(), threading.Event()

    def work() -> None:
        _spin(0.05)
        spun.set()
        done.wait(10)  # alive at the second reading, so its time is read

    worker = threading.Thread(target=work)
    before = exec_cpu.thread_ns(os.getpid())
    worker.start()
    spun.wait(10)
    after = exec_cpu.thread_ns(os.getpid())
    done.set()
    worker.join()
    loop, other = exec_cpu.split(before, after, main)
    assert other >= 40_000_000
    assert loop < other


def test_the_agent_is_the_one_process_of_its_name_under_the_root() -> None:
    first = subprocess.Popen(["sleep", "30"])
    try:
        assert exec_cpu.descendant_named(os.getpid(), "sleep") == first.pid
        second = subprocess.Popen(["sleep", "30"])
        try:
            with pytest.raises(RuntimeError, match="2 processes named sleep"):
                exec_cpu.descendant_named(os.getpid(), "sleep")
        finally:
            second.kill()
            second.wait()
    finally:
        first.kill()
        first.wait()
    with pytest.raises(RuntimeError, match="0 processes named sleep"):
        exec_cpu.descendant_named(os.getpid(), "sleep")


def test_reaped_children_time_grows_with_a_child_that_computed() -> None:
    before = exec_cpu.reaped_children_seconds(os.getpid())
    # Spun on its own CPU time, not the clock's: a loaded host gives it less per second.
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    assert exec_cpu.reaped_children_seconds(os.getpid()) - before >= 0.25
