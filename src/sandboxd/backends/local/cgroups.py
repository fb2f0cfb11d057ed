"""Per-sandbox cgroups on cgroup v1 (one hierarchy per controller) and v2 (unified).

Why beneath our own cgroup: the runner may itself be confined (a systemd slice, a container,
a per-process cgroup as on this project's CI), and sandboxes must count against that
budget. So the backend reads ``/proc/self/cgroup`` and ``/proc/self/mountinfo``, finds its
own cgroup in every hierarchy it needs (``cpu``, ``cpuacct``, ``memory``, ``pids`` on v1;
the unified tree on v2) and creates ``sandboxd-<tag>/<sandbox>`` below it. ``sandboxd-<tag>``
is bounded as a whole by the runner's allocatable capacity (``parent_cgroup.py``). The sandbox's
processes join these cgroups before any namespace exists (see ``zygote.py``), so nothing
the user runs is ever outside them. Paths are recorded in the sandbox's state so that a
restarted runner, possibly in a different cgroup itself, still finds them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Collection
from dataclasses import dataclass

from ..errors import RunnerExhausted
from . import parent_cgroup
from .parent_cgroup import ParentLimits

V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
V2_CONTROLLERS = ("cpu", "memory", "pids")
FREEZER = "freezer"
"""The v1 hierarchy that pauses sandboxes (``freezer.py``); used where mounted, not required."""
CFS_PERIOD_US = 100_000


class CgroupError(OSError):
    """The cgroup layout is unusable (missing controller, not writable); a cgroup stays busy."""


class CgroupsExhausted(CgroupError, RunnerExhausted):
    """The kernel makes no more cgroups here: the runner's fault, never the request's.

    ``ENOSPC`` when a controller has no ids left (v1's memory controller has 65,535, and
    the memory cgroups of removed sandboxes hold theirs while page cache still charges
    them: the classic "mkdir: no space left on device" of a busy container host),
    ``EAGAIN`` at a v2 ``cgroup.max.descendants`` or ``cgroup.max.depth``, ``ENOMEM``.
    The directory names are the sandbox ids the control plane made, so no request can
    cause it, and every create on this runner fails alike until the kernel frees ids: as a
    ``RunnerExhausted`` it counts against the runner and Starts go elsewhere.
    """

    def __init__(self, message: str) -> None:
        RunnerExhausted.__init__(self, "cgroups", message)


_EXHAUSTED = frozenset({errno.ENOSPC, errno.EAGAIN, errno.ENOMEM})


@dataclass(frozen=True)
class Layout:
    """Where our own cgroup lives: ``version`` 1 or 2 and controller → directory."""

    version: int
    bases: dict[str, str]


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of every cgroup mount."""
    out = []
    with open(mountinfo) as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] in ("cgroup", "cgroup2"):
                opts = set(rfields[2].split(",")) if len(rfields) > 2 else set()
                out.append((fields[3], fields[4], rfields[0], opts))
    return out


def _join(mount_point: str, mount_root: str, path: str) -> str:
    rel = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
    if rel.startswith(".."):
        rel = ""  # our cgroup is outside this mount's view (cgroup namespace): use its root
    return os.path.normpath(os.path.join(mount_point, rel))


def detect(
    proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> Layout:
    """Find our own cgroup in each needed hierarchy; prefers v1 controllers when mounted."""
    own: dict[str, str] = {}
    unified_path = None
    with open(proc_cgroup) as fh:
        for line in fh:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if hid == "0" and controllers == "":
                unified_path = path
            for name in controllers.split(","):
                if name:
                    own[name] = path
    mounts = _mounts(mountinfo)
    v1: dict[str, str] = {}
    for root, point, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        for name in V1_CONTROLLERS:
            if name in opts and name in own and name not in v1:
                v1[name] = _join(point, root, own[name])
    if len(v1) == len(V1_CONTROLLERS):
        for root, point, fstype, opts in mounts:  # optional: without it, no pause (freezer.py)
            if fstype == "cgroup" and FREEZER in opts and FREEZER in own:
                path = _join(point, root, own[FREEZER])
                if os.access(path, os.W_OK):  # a read-only freezer must not break the backend
                    v1[FREEZER] = path
                break
        return Layout(1, v1)
    for root, point, fstype, _opts in mounts:
        if fstype == "cgroup2" and unified_path is not None:
            base = _join(point, root, unified_path)
            ctl = os.path.join(base, "cgroup.controllers")  # what was delegated to us
            with contextlib.suppress(OSError), open(ctl) as fh:
                available = set(fh.read().split())
                if set(V2_CONTROLLERS) <= available:
                    return Layout(2, {"unified": base})
    missing = sorted(set(V1_CONTROLLERS) - set(v1))
    raise CgroupError(errno.ENOENT, f"cgroup controllers not available: {', '.join(missing)}")


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _parent_quota(quota_file: str) -> int | None:
    """The v1 CFS quota of the cgroup above ``quota_file``'s (``None``: unlimited)."""
    parent = os.path.join(os.path.dirname(os.path.dirname(quota_file)), "cpu.cfs_quota_us")
    try:
        with open(parent) as fh:
            value = int(fh.read())
    except (OSError, ValueError):
        return None
    return value if value > 0 else None


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _enable_v2_controllers(base: str) -> None:
    """Enable cpu/memory/pids for children of ``base``, moving our processes to a leaf if needed.

    cgroup v2 forbids controllers in a cgroup's subtree while the cgroup itself holds
    processes ("no internal processes"), so our own processes move to ``base/runner``.
    """
    want = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    ctl = os.path.join(base, "cgroup.subtree_control")
    if set(V2_CONTROLLERS) <= set(_read(ctl).split()):
        return
    try:
        _write(ctl, want)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        leaf = os.path.join(base, "runner")
        os.makedirs(leaf, exist_ok=True)
        for pid in _read(os.path.join(base, "cgroup.procs")).split():
            with contextlib.suppress(OSError):
                _write(os.path.join(leaf, "cgroup.procs"), pid)
        _write(ctl, want)


@dataclass(frozen=True)
class SandboxCgroup:
    """The cgroup directories of one sandbox (one per v1 hierarchy, or one on v2)."""

    version: int
    dirs: dict[str, str]

    @property
    def unique_dirs(self) -> list[str]:
        """Each directory once (co-mounted v1 controllers share one)."""
        return sorted(set(self.dirs.values()))

    def procs_files(self) -> list[str]:
        """Files to write "0" into to join every hierarchy."""
        return [os.path.join(d, "cgroup.procs") for d in self.unique_dirs]

    def _file(self, controller: str, v1_name: str, v2_name: str) -> str:
        if self.version == 1:
            return os.path.join(self.dirs[controller], v1_name)
        return os.path.join(self.dirs["unified"], v2_name)

    def set_limits(
        self, *, cpu_millicores: int | None, memory_bytes: int | None, pids_max: int | None
    ) -> None:
        """Apply CPU quota, memory limit (swap included where possible) and PID limit.

        On v1 a child's CPU quota may not exceed its parent's (the kernel answers EINVAL),
        so it is capped at the runner-wide parent's quota; more could not be used anyway.
        """
        if cpu_millicores:
            quota = max(1000, cpu_millicores * CFS_PERIOD_US // 1000)
            if self.version == 1:
                parent = _parent_quota(self._file("cpu", "cpu.cfs_quota_us", ""))
                quota = min(quota, parent) if parent else quota
                _write(self._file("cpu", "cpu.cfs_period_us", ""), str(CFS_PERIOD_US))
                _write(self._file("cpu", "cpu.cfs_quota_us", ""), str(quota))
            else:
                _write(self._file("cpu", "", "cpu.max"), f"{quota} {CFS_PERIOD_US}")
        if memory_bytes:
            _write(self._file("memory", "memory.limit_in_bytes", "memory.max"), str(memory_bytes))
            swap = self._file("memory", "memory.memsw.limit_in_bytes", "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, str(memory_bytes) if self.version == 1 else "0")
        if pids_max:
            _write(self._file("pids", "pids.max", "pids.max"), str(pids_max))

    def stats(self) -> dict[str, int]:
        """cpu_usage_ns, memory_bytes, memory_peak_bytes, pids, oom_kills (missing → 0)."""
        out = {
            "cpu_usage_ns": 0,
            "memory_bytes": 0,
            "memory_peak_bytes": 0,
            "pids": 0,
            "oom_kills": 0,
        }
        with contextlib.suppress(OSError, ValueError):
            if self.version == 1:
                out["cpu_usage_ns"] = int(_read(self._file("cpuacct", "cpuacct.usage", "")))
                out["memory_bytes"] = int(_read(self._file("memory", "memory.usage_in_bytes", "")))
                peak = self._file("memory", "memory.max_usage_in_bytes", "")
                out["memory_peak_bytes"] = int(_read(peak))
                events = _read(self._file("memory", "memory.oom_control", ""))
            else:
                for line in _read(self._file("cpu", "", "cpu.stat")).splitlines():
                    if line.startswith("usage_usec "):
                        out["cpu_usage_ns"] = int(line.split()[1]) * 1000
                out["memory_bytes"] = int(_read(self._file("memory", "", "memory.current")))
                with contextlib.suppress(OSError):
                    out["memory_peak_bytes"] = int(_read(self._file("memory", "", "memory.peak")))
                events = _read(self._file("memory", "", "memory.events"))
            for line in events.splitlines():
                if line.startswith("oom_kill "):
                    out["oom_kills"] = int(line.split()[1])
            out["pids"] = int(_read(self._file("pids", "pids.current", "pids.current")))
        return out

    def pids(self) -> list[int]:
        """Every process still in the sandbox's cgroups."""
        found: set[int] = set()
        for d in self.unique_dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in _read(os.path.join(d, "cgroup.procs")).split())
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL whatever is left (v2: ``cgroup.kill``), paused (frozen) processes too."""
        if self.version == 2:
            kill = os.path.join(self.dirs["unified"], "cgroup.kill")
            if os.path.exists(kill):
                with contextlib.suppress(OSError):
                    _write(kill, "1")
                return
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        freezer = self.dirs.get(FREEZER)
        if freezer:  # a frozen v1 task dies of its SIGKILL only once thawed
            with contextlib.suppress(OSError):
                _write(os.path.join(freezer, "freezer.state"), "THAWED")

    def remove(self, timeout: float = 5.0) -> None:
        """Kill leftovers and remove the directories, waiting for dying tasks to leave.

        The per-data-dir group directory above is removed too once it is empty (another
        sandbox keeps it busy); ``CgroupManager.create`` recreates it on demand.
        """
        deadline = time.monotonic() + timeout
        for d in self.unique_dirs:
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    self.kill_all()
                    time.sleep(0.005)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(d))


class CgroupManager:
    """Creates sandbox cgroups beneath our own, under a per-data-dir group name.

    ``limits`` bound the group as a whole (default: this host's allocatable capacity, see
    ``parent_cgroup.host_limits``); they are written whenever the group directory is made
    and the first time this manager uses one that already exists.
    """

    def __init__(
        self, group: str, layout: Layout | None = None, limits: ParentLimits | None = None
    ) -> None:
        self.layout = layout or detect()
        self.group = group
        self.limits = limits or parent_cgroup.host_limits(self.layout.version, self.layout.bases)
        self._ready = False
        self._bounded: set[str] = set()  # group directories we wrote the limits into

    def _group_dirs(self) -> dict[str, str]:
        return {c: os.path.join(base, self.group) for c, base in self.layout.bases.items()}

    def _prepare(self) -> None:
        if self._ready:
            return
        if self.layout.version == 2:
            _enable_v2_controllers(self.layout.bases["unified"])
        self._ready = True

    def _make_groups(self) -> None:
        """Make the group directories that are missing; bound every one we have not yet."""
        dirs = self._group_dirs()
        for d in set(dirs.values()):
            if not os.path.isdir(d):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(d)
                self._bounded.discard(d)  # new (by us or a concurrent create): bound it
            if self.layout.version == 2:
                _enable_v2_controllers(d)
        if not set(dirs.values()) <= self._bounded:
            parent_cgroup.apply(self.layout.version, dirs, self.limits)
            self._bounded.update(dirs.values())

    def create(self, sandbox_id: str) -> SandboxCgroup:
        """Make the sandbox's cgroup directories (fails if they exist)."""
        self._prepare()
        dirs = {c: os.path.join(d, sandbox_id) for c, d in self._group_dirs().items()}
        for attempt in range(3):  # a concurrent destroy may remove an empty group dir
            made: list[str] = []
            try:
                self._make_groups()
                for d in sorted(set(dirs.values())):
                    os.mkdir(d)
                    made.append(d)
                return SandboxCgroup(self.layout.version, dirs)
            except OSError as exc:
                for d in reversed(made):
                    with contextlib.suppress(OSError):
                        os.rmdir(d)
                if exc.errno in _EXHAUSTED:
                    why = f"the kernel makes no more cgroups here: {exc}"
                    raise CgroupsExhausted(why) from exc
                if isinstance(exc, FileNotFoundError):
                    self._bounded.clear()  # a group dir went away: bound it again
                if not isinstance(exc, FileNotFoundError) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def existing(self, sandbox_id: str) -> SandboxCgroup | None:
        """The cgroup of ``sandbox_id`` as far as its directories exist; None if none does."""
        dirs = {c: os.path.join(d, sandbox_id) for c, d in self._group_dirs().items()}
        dirs = {c: d for c, d in dirs.items() if os.path.isdir(d)}
        return SandboxCgroup(self.layout.version, dirs) if dirs else None

    def end_sandboxes(self, keep: Collection[str] = ()) -> int:
        """Kill every sandbox in this group but ``keep`` and remove its cgroups; how many.

        For a group whose backend is gone for good (``orphans.py``), or, sparing the
        sandboxes it knows, for a backend's own group when it starts (``unrecorded.py``).
        Blocking (it waits for the killed tasks to leave their cgroups): run it in a thread.
        ``CgroupError`` when some cgroup keeps a process: its ids and network must not be
        handed to another sandbox yet.
        """
        names: set[str] = set()
        for d in set(self._group_dirs().values()):
            with contextlib.suppress(OSError):
                names.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
        names.difference_update(keep)
        stuck = []
        for name in sorted(names):
            cgroup = self.existing(name)
            if cgroup is None:
                continue
            cgroup.kill_all()
            try:
                cgroup.remove()
            except OSError as exc:
                stuck.append(f"{name} ({exc.strerror or exc})")
        if stuck:
            raise CgroupError(f"sandboxes of {self.group} did not end: {', '.join(stuck)}")
        return len(names)

    def cleanup_group(self) -> bool:
        """Remove the (empty) group directories; busy ones are left in place.

        True when none is left (no sandbox of this group has cgroups any more).
        """
        for d in set(self._group_dirs().values()):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        self._ready = False
        self._bounded.clear()
        return not any(os.path.isdir(d) for d in self._group_dirs().values())
