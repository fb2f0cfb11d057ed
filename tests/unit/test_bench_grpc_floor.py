"""``bench/grpc_floor.py``: the transport floor the sandbox benchmark prints beside its rows.

It must measure real calls (a server process that answers, a positive time per call) and
leave no server behind, or the floor printed beside the warm-pool row means nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import grpc_floor


def test_the_floor_times_each_call_and_leaves_no_server_running() -> None:
    before = set(os.listdir("/proc"))
    starts, execs = grpc_floor.measure(5)
    assert len(starts) == len(execs) == 5
    assert all(0 < took < 5 for took in (*starts, *execs))
    servers = [
        pid
        for pid in set(os.listdir("/proc")) - before
        if pid.isdigit() and "--serve" in _cmdline(pid)
    ]
    assert servers == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""
