"""Pausing a sandbox: every process of its cgroup frozen by the kernel, and thawed again.

Why the cgroup freezer and not ``SIGSTOP``: a stopped process is visible to its parent
(``waitpid`` reports it), another process of the sandbox can send it ``SIGCONT``, and a
process forked at the wrong moment escapes the signal. The freezer acts on the cgroup, which
every process of the sandbox is in from before its first instruction (``zygote.py``), so
nothing inside can notice it or undo it, nothing escapes it, and frozen tasks use no CPU
while keeping their memory, files and descriptors: after a thaw they continue exactly where
they were.

cgroup v1 has a ``freezer`` hierarchy of its own (``freezer.state``: ``THAWED``,
``FREEZING``, ``FROZEN``); a sandbox joins it only if the runner found that hierarchy
mounted (``cgroups.detect``), so older sandboxes and hosts without it cannot be paused.
cgroup v2 has ``cgroup.freeze`` in every non-root cgroup, and reports the outcome in
``cgroup.events`` (``frozen 1``).

Freezing is not instantaneous: a task in an uninterruptible sleep (disk I/O, say) freezes
when it leaves it, so :func:`freeze` waits, writing the request again as v1 wants, and
thaws back when the cgroup did not freeze in time, so a failed pause never leaves a
half-frozen sandbox behind.
"""

from __future__ import annotations

import contextlib
import os
import time

from .cgroups import SandboxCgroup

__all__ = ["FreezeError", "freeze", "is_frozen", "supported", "thaw"]

FREEZE_TIMEOUT_SECONDS = 10.0
_POLL_SECONDS = 0.002


class FreezeError(OSError):
    """The sandbox's cgroup could not be frozen (or has no freezer)."""


def _path(cgroup: SandboxCgroup, v1_name: str, v2_name: str) -> str | None:
    if cgroup.version == 1:
        directory = cgroup.dirs.get("freezer")
        return os.path.join(directory, v1_name) if directory else None
    return os.path.join(cgroup.dirs["unified"], v2_name)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def supported(cgroup: SandboxCgroup) -> bool:
    """Whether this sandbox's cgroup can be frozen (v1: it joined a freezer hierarchy)."""
    path = _path(cgroup, "freezer.state", "cgroup.freeze")
    return path is not None and os.path.exists(path)


def is_frozen(cgroup: SandboxCgroup) -> bool:
    """Frozen, or asked to freeze (a half-frozen sandbox cannot serve anything either)."""
    path = _path(cgroup, "freezer.state", "cgroup.freeze")
    if path is None:
        return False
    try:
        value = _read(path).strip()
    except OSError:
        return False
    return value in ("FROZEN", "FREEZING") if cgroup.version == 1 else value == "1"


def _done(cgroup: SandboxCgroup) -> bool:
    if cgroup.version == 1:
        path = _path(cgroup, "freezer.state", "")
        assert path is not None
        return _read(path).strip() == "FROZEN"
    events = _read(os.path.join(cgroup.dirs["unified"], "cgroup.events"))
    return "frozen 1" in events.splitlines()


def freeze(cgroup: SandboxCgroup, timeout: float = FREEZE_TIMEOUT_SECONDS) -> None:
    """Freeze every process of the sandbox; returns once the kernel says they all are.

    Blocking (call it in a thread). Idempotent: freezing a frozen cgroup returns at once.
    Raises :class:`FreezeError` when there is no freezer, or the cgroup did not freeze
    within ``timeout`` (it is thawed again then).
    """
    path = _path(cgroup, "freezer.state", "cgroup.freeze")
    if path is None or not os.path.exists(path):
        raise FreezeError("this sandbox's cgroup has no freezer (it cannot be paused)")
    request = "FROZEN" if cgroup.version == 1 else "1"
    deadline = time.monotonic() + timeout
    try:
        _write(path, request)
        while not _done(cgroup):
            if time.monotonic() > deadline:
                thaw(cgroup)
                raise FreezeError(f"the sandbox's processes did not freeze within {timeout:g} s")
            time.sleep(_POLL_SECONDS)
            if cgroup.version == 1:
                _write(path, request)  # v1 retries a FREEZING cgroup on each write
    except FreezeError:
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            thaw(cgroup)
        raise FreezeError(f"freezing the sandbox's cgroup failed: {exc}") from exc


def thaw(cgroup: SandboxCgroup) -> None:
    """Let every process of the sandbox run again (idempotent; nothing when unsupported)."""
    path = _path(cgroup, "freezer.state", "cgroup.freeze")
    if path is None:
        return
    with contextlib.suppress(FileNotFoundError):  # the cgroup is gone: nothing to thaw
        _write(path, "THAWED" if cgroup.version == 1 else "0")
