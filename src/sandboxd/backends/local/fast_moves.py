"""Cgroup moves that never wait for an RCU grace period: the kernel's ``favordynmods``.

Why: the keeper moves every new agent into its sandbox's cgroups (``keeper.join_cgroups``).
Each move takes the kernel's global ``cgroup_threadgroup_rwsem`` for writing, and in the
lock's default mode a writer that finds it idle waits for a whole RCU grace period first.
Measured on the 2-core development host (cgroup v1, Linux 6.18), instrumenting the agent and
its spare keeper over 30 sequential creates: the keeper's move took 10.4 ms (median), and
the agent, its root file system built after 3 ms, waited 8.3 ms of its 13.6 ms set-up for
it, the longest step of a cold create. ``cgroup_primer.py`` starts that grace period early;
with moves spread out, it still mostly waits.

Linux 6.0 and later have a mode for hosts that make and move processes all the time:
``favordynmods``. The lock then stays on its slow path, where a writer never waits for a
grace period, and every fork and exit pays a memory barrier more instead (nanoseconds,
against a fork's tens of microseconds). It is how Linux always ran for years before 6.0,
which made it optional (its commit: "cgroup: Make !percpu threadgroup_rwsem operations
optional"). The same measurement with the mode on: the move 0.49 ms, the agent's wait
0.64 ms, its whole set-up 5.5 ms.

The mode is a mount option of any cgroup hierarchy, and it acts on the whole host. So the
runner makes a hierarchy of its own for it, one that changes nothing else: a named cgroup
v1 hierarchy without controllers (``none,name=sandboxd-fast-moves``), made with
``fsopen``/``fsconfig``/``fsmount`` and attached nowhere, so no mount table shows it and
no process is ever moved into it (every process's ``/proc/PID/cgroup`` lists it, at
``/``, while it exists). The existing mounts of the host (systemd's, say) are never
remounted. The runner holds the mount's descriptor while it runs; a second runner on the
host joins the same hierarchy. What happens when the last one lets go is the kernel's: on
some kernels the mode ends with the hierarchy; others (the development host's 6.18 among
them) keep it until the next boot, and log "favordynmods: per threadgroup rwsem mechanism
can't be disabled".

An operator who does not want the host in this mode sets ``SANDBOXD_FAST_CGROUP_MOVES=0``;
the runner then primes each move instead. Where the hierarchy cannot be made (no cgroup v1
support, a runner inside a cgroup namespace) the runner primes too, and says so once.
"""

from __future__ import annotations

import errno
import os
import time

from .syscalls import FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FsSetting, mount_fs_detached

__all__ = ["BUSY_SECONDS", "ENV", "HIERARCHY_NAME", "hold_fast_moves", "wanted"]

HIERARCHY_NAME = "sandboxd-fast-moves"
"""The named hierarchy's name: every runner on a host shares the one hierarchy."""
ENV = "SANDBOXD_FAST_CGROUP_MOVES"
"""The operator's switch: ``0`` (or ``false``, ``no``, ``off``) keeps the kernel's default."""
BUSY_SECONDS = 0.5
"""How long a hierarchy that is still being taken down (``EBUSY``) is waited out."""

_SETTINGS: tuple[FsSetting, ...] = (
    (FSCONFIG_SET_STRING, b"name", HIERARCHY_NAME.encode()),
    (FSCONFIG_SET_FLAG, b"none", None),  # no controller: it limits and accounts nothing
    (FSCONFIG_SET_FLAG, b"favordynmods", None),
)


def wanted() -> bool:
    """Whether the operator lets the runner put the host in this mode (the default)."""
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def hold_fast_moves() -> int:
    """Make (or join) the hierarchy; the descriptor that holds it. ``OSError`` if not.

    ``EBUSY`` while the hierarchy its last holder let go of is still being taken down (about
    50 ms here: a runner restarted at once, a test after a test) is waited out, up to
    :data:`BUSY_SECONDS`; it happens once per runner at most, before its first create.
    """
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            return _hold_once()
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def _hold_once() -> int:
    return mount_fs_detached("cgroup", _SETTINGS, made="making the hierarchy")
