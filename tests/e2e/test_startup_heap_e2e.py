"""Every server process leaves what it made while starting out of garbage collection passes.

``sandboxd up``, ``sandboxd controlplane`` and ``sandboxd runner`` each freeze their start-up
objects (``sandboxd/startup_heap.py`` says why: a full collection that walked them all stopped
the event loop for 86-90 ms in the middle of a burst of creates). Each says so in its log, at
INFO, with how many; ``up`` does it before it prints its ready line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.faults import wait_until
from tests.support.processes import ControlPlaneProcess, Proc, RunnerProcess, all_in_one

INFO = ("--log-level", "INFO")
FROZEN = re.compile(r"sandboxd\.startup_heap: (\d+) objects made at start-up are left out")


def frozen_count(proc: Proc) -> int | None:
    """The count its freeze logged, once it has."""
    for line in list(proc.lines):
        if found := FROZEN.search(line):
            return int(found.group(1))
    return None


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for the local backend")


def test_up_freezes_its_start_up_objects_before_it_says_it_is_ready(tmp_path: Path) -> None:
    with all_in_one(tmp_path / "up", *INFO) as up:
        lines = list(up.proc.lines)
        ready = next(i for i, line in enumerate(lines) if line.startswith("CWSANDBOX_BASE_URL="))
        frozen = [i for i, line in enumerate(lines) if FROZEN.search(line)]
        assert len(frozen) == 1 and frozen[0] < ready, up.proc.output
        count = frozen_count(up.proc)
        assert count is not None and count > 50_000, count


def test_a_control_plane_and_a_runner_each_freeze_their_start_up_objects(tmp_path: Path) -> None:
    control_plane = ControlPlaneProcess(data_dir=tmp_path / "cp", extra_args=INFO).start()
    try:
        assert control_plane.proc is not None
        count = wait_until(
            "the control plane's freeze", lambda: frozen_count(control_plane.proc), 30
        )
        assert count > 50_000, count
        runner = RunnerProcess(control_plane, tmp_path / "runner", extra_args=INFO).start()
        try:
            assert runner.proc is not None
            count = wait_until("the runner's freeze", lambda: frozen_count(runner.proc), 30)
            assert count > 50_000, count
        finally:
            assert runner.stop() == 0, runner.proc.output if runner.proc else ""
    finally:
        assert control_plane.stop() == 0
