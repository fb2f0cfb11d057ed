"""Starting the grace period a cgroup move waits for as soon as a create arrives.

Why: the keeper moves each new agent into its sandbox's cgroups (``keeper.py`` writes the
agent's pid into every hierarchy's ``cgroup.procs``). Every such move takes the kernel's
global ``cgroup_threadgroup_rwsem`` for writing, and when nobody took it during the last RCU
grace period, taking it waits for a whole new one: 5–14 ms on the 2-core development host
(cgroup v1, kernel 6.18, a loaded machine), the longest step of a cold create. The agent
had its root file system built after 2 ms and then sat waiting for its cgroups. Once taken,
the lock stays on its fast path for a grace period after its last writer, so moves that
follow one another closely wait for nothing.

So a create starts that grace period the moment it arrives, in parallel with the work that
precedes the move (the writable layer, the cgroups, the network, the zygote's forks): a
thread writes the runner's own pid into the cgroup it is already in. That move changes
nothing (the process is already there) but takes the lock, and the keeper's real move,
about 8 ms later, finds the grace period over or nearly so: 1 ms instead of 13 in the
measurement that led here (``bench/sandboxes.py`` shows it through the whole platform).

At most one priming write is in flight; a create that finds one running starts no other.
Failures are ignored: priming only ever saves time. A host whose cgroup hierarchies are
mounted with ``favordynmods`` keeps the lock on its slow path all the time, and gains (and
loses) nothing. That is the better way, and the runner takes it where it can
(:meth:`CgroupPrimer.hold_fast_moves`, ``fast_moves.py``): then nothing is primed.
"""

from __future__ import annotations

import logging
import os
import threading

from . import fast_moves
from .cgroups import CgroupError, detect

__all__ = ["CgroupPrimer"]

log = logging.getLogger(__name__)


class CgroupPrimer:
    """Takes the cgroup migration lock in the background (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._procs: str | None = None
        self._fast: int | None = None  # the descriptor holding fast moves (fast_moves.py)
        self._tried_fast = False
        self._fast_lock = threading.Lock()  # two first creates at once make it once

    @property
    def fast(self) -> bool:
        """Whether this runner holds the host's cgroup moves fast (nothing to prime)."""
        return self._fast is not None

    @property
    def tried_fast(self) -> bool:
        """Whether :meth:`hold_fast_moves` ran already (it runs once per backend)."""
        return self._tried_fast

    def hold_fast_moves(self) -> bool:
        """Make the host's cgroup moves fast, once; whether they are (``fast_moves.py``).

        Not when the operator said no; tried once per backend (it needs root).
        """
        with self._fast_lock:
            if not self._tried_fast:
                self._tried_fast = True
                if not fast_moves.wanted():
                    log.info("cgroup moves are primed: %s=0", fast_moves.ENV)
                else:
                    try:
                        self._fast = fast_moves.hold_fast_moves()
                    except OSError as exc:
                        log.warning("cgroup moves are primed, not fast (favordynmods): %s", exc)
        return self.fast

    def close(self) -> None:
        """Let go of fast moves (the kernel may keep the mode: see ``fast_moves.py``)."""
        with self._fast_lock:
            if self._fast is not None:
                os.close(self._fast)
                self._fast = None
            self._tried_fast = False

    def _own_procs(self) -> str | None:
        """``cgroup.procs`` of the cgroup this process is in now (one hierarchy is enough)."""
        try:
            layout = detect()
        except (CgroupError, OSError, ValueError):
            return None
        base = layout.bases.get("pids") or layout.bases.get("unified")
        return os.path.join(base, "cgroup.procs") if base else None

    def prime(self) -> bool:
        """Start a priming write unless one is running or moves are fast; whether one was."""
        with self._lock:
            if self._busy or self._fast is not None:
                return False
            self._busy = True
        thread = threading.Thread(target=self._write, name="cgroup-primer", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (interpreter shutting down): no priming
            with self._lock:
                self._busy = False
            return False
        return True

    def _write(self) -> None:
        try:
            # Found once (after the backend's cgroups are set up: on cgroup v2 the runner
            # moves into a leaf then), and again after a write that failed.
            if self._procs is None:
                self._procs = self._own_procs()
            if self._procs is not None:
                try:
                    with open(self._procs, "w") as fh:
                        fh.write(str(os.getpid()))
                except OSError:
                    self._procs = None
        finally:
            with self._lock:
                self._busy = False
