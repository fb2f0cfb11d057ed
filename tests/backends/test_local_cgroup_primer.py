"""The cgroup primer (``backends/local/cgroup_primer.py``): harmless, and one write at a time.

Its effect (a shorter cold create) is measured by ``bench/sandboxes.py``; a timing assertion
here would only measure the load of the machine running the tests.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sandboxd.backends.local import cgroup_primer
from sandboxd.backends.local.cgroup_primer import CgroupPrimer
from tests.support.faults import wait_until


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("writing cgroup.procs needs root")


def _idle(primer: CgroupPrimer) -> bool:
    with primer._lock:
        return not primer._busy


def test_priming_moves_nothing() -> None:
    """The runner stays in every cgroup it was in, in every hierarchy, all its threads too."""
    _require_root()
    before = Path("/proc/self/cgroup").read_text()
    threads_before = {
        t: Path(f"/proc/self/task/{t}/cgroup").read_text() for t in os.listdir("/proc/self/task")
    }
    primer = CgroupPrimer()
    for _ in range(3):
        wait_until("the primer to be idle", lambda: _idle(primer), 10, 0.005)
        assert primer.prime()
    wait_until("the last priming write to end", lambda: _idle(primer), 10, 0.005)
    assert Path("/proc/self/cgroup").read_text() == before
    for tid, cgroups in threads_before.items():
        path = Path(f"/proc/self/task/{tid}/cgroup")
        if path.exists():
            assert path.read_text() == cgroups


def test_one_write_in_flight_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creates that arrive while a write runs start no other (a burst costs one write).

    The write is replaced by a slow stand-in (a mock, unavoidable: how long a real write
    takes is up to the kernel, so "while it runs" could not be arranged otherwise).
    """
    release = threading.Event()
    writes: list[int] = []

    def slow_write(self: CgroupPrimer) -> str | None:
        writes.append(1)
        release.wait(10)
        return None  # nothing to write to: the write is skipped, the primer frees itself

    monkeypatch.setattr(CgroupPrimer, "_own_procs", slow_write)
    primer = CgroupPrimer()
    started = [primer.prime() for _ in range(50)]
    assert started[0] and not any(started[1:])
    release.set()
    wait_until("the write to end", lambda: _idle(primer), 10, 0.005)
    assert primer.prime()
    wait_until("the second write to end", lambda: _idle(primer), 10, 0.005)
    assert len(writes) == 2


def test_no_cgroups_no_harm(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without the cgroups we use: priming does nothing and raises nothing."""

    def missing() -> object:
        raise cgroup_primer.CgroupError(2, "cgroup controllers not available: pids")

    monkeypatch.setattr(cgroup_primer, "detect", missing)
    primer = CgroupPrimer()
    assert primer.prime()
    wait_until("the primer to give up quietly", lambda: _idle(primer), 10, 0.005)
