"""Read the CPU and memory limits that cgroups place on the runner's own process.

Why this exists: a runner inside a container or a systemd slice must not advertise the whole
host. The scheduler trusts what a runner reports, so if the runner says "64 cores" while its
cgroup allows 2, sandboxes would be placed that can never get the CPU they were promised.

What it handles:

* cgroup v2 (a single unified hierarchy): ``cpu.max`` and ``memory.max``.
* cgroup v1 (one hierarchy per controller, possibly next to a controller-less ``unified``
  mount, i.e. "hybrid" hosts): ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` and
  ``memory.limit_in_bytes``.
* Nested limits: a parent cgroup's limit binds its children, so every ancestor up to the
  mount root is read and the tightest limit wins.
* Containers with a private cgroup mount: ``/proc/self/cgroup`` names the host-side path
  (e.g. ``/docker/<id>``) which does not exist under the container's mount, whose root *is*
  the container's cgroup. Then the mount root is used.

Everything is read under injectable roots so tests can build fake trees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# cgroup v1 reports "no memory limit" as PAGE_COUNTER_MAX rounded to the page size
# (9223372036854771712 on 4 KiB pages); anything this large means "unlimited".
_UNLIMITED_THRESHOLD = 1 << 62


@dataclass(frozen=True)
class CgroupMembership:
    """Where the current process sits, as listed in ``/proc/self/cgroup``.

    ``v1`` maps each v1 controller name (``cpu``, ``memory``, ...) to a pair of the hierarchy's
    controller list as written in the file (``cpu,cpuacct``) and the cgroup path; ``v2`` is the
    path in the unified hierarchy, or ``None`` when the process is in none.
    """

    v1: dict[str, tuple[str, str]]
    v2: str | None


def read_membership(proc_root: Path) -> CgroupMembership:
    """Parse ``<proc_root>/self/cgroup``; a missing file means "no cgroups" (not Linux)."""
    v1: dict[str, tuple[str, str]] = {}
    v2: str | None = None
    try:
        text = (proc_root / "self" / "cgroup").read_text()
    except OSError:
        return CgroupMembership(v1={}, v2=None)
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and controllers == "":
            v2 = path
            continue
        for controller in controllers.split(","):
            if controller and not controller.startswith("name="):
                v1[controller] = (controllers, path)
    return CgroupMembership(v1=v1, v2=v2)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_dirs(mount: Path, cgroup_path: str) -> list[Path]:
    """Directories from the own cgroup up to the mount root, innermost first.

    Falls back to just the mount root when the listed path does not exist under the mount
    (a container whose cgroup mount is rooted at its own cgroup).
    """
    relative = PurePosixPath(cgroup_path).relative_to("/") if cgroup_path.startswith("/") else None
    own = mount / relative if relative is not None else mount
    if not own.is_dir():
        return [mount] if mount.is_dir() else []
    dirs = [own]
    current = own
    while current != mount and mount in current.parents:
        current = current.parent
        dirs.append(current)
    return dirs


def _v1_mount(cgroup_root: Path, controller: str, controllers: str) -> Path | None:
    """Find the v1 hierarchy for ``controller``: ``cpu,cpuacct/``, ``cpu/`` or ``cpuacct,cpu/``."""
    reversed_list = ",".join(reversed(controllers.split(",")))
    for name in (controllers, controller, reversed_list):
        candidate = cgroup_root / name
        if candidate.is_dir():
            return candidate
    return None


def _v2_mount(cgroup_root: Path) -> Path | None:
    """The unified hierarchy: the root itself on pure v2, ``unified/`` on hybrid hosts."""
    if (cgroup_root / "cgroup.controllers").exists():
        return cgroup_root
    unified = cgroup_root / "unified"
    if (unified / "cgroup.controllers").exists():
        return unified
    return None


def _parse_v2_cpu_max(text: str | None) -> int | None:
    """``cpu.max`` is ``"<quota|max> <period>"``; return millicores or ``None`` for no limit."""
    if not text:
        return None
    fields = text.split()
    if fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota * 1000 // period


def _parse_v1_cpu(quota_text: str | None, period_text: str | None) -> int | None:
    """v1 quota/period in microseconds; a quota of ``-1`` means no limit."""
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota * 1000 // period


def _parse_bytes(text: str | None) -> int | None:
    """A memory limit in bytes; ``max`` (v2) or a huge v1 value means no limit."""
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or value >= _UNLIMITED_THRESHOLD:
        return None
    return value


def _tightest(values: list[int | None]) -> int | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None


def _tightest_limit(
    proc_root: Path,
    cgroup_root: Path,
    controller: str,
    read_v1: Callable[[Path], int | None],
    read_v2: Callable[[Path], int | None],
) -> int | None:
    """The tightest limit of ``controller`` on the own cgroup and its ancestors (v1 or v2)."""
    membership = read_membership(proc_root)
    if controller in membership.v1:
        controllers, path = membership.v1[controller]
        mount = _v1_mount(cgroup_root, controller, controllers)
        if mount is None:
            return None
        return _tightest([read_v1(directory) for directory in _own_dirs(mount, path)])
    if membership.v2 is not None:
        mount = _v2_mount(cgroup_root)
        if mount is None:
            return None
        return _tightest([read_v2(directory) for directory in _own_dirs(mount, membership.v2)])
    return None


def cpu_limit_millicores(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The tightest CPU quota on the own cgroup and its ancestors, in millicores, or ``None``."""
    return _tightest_limit(
        proc_root,
        cgroup_root,
        "cpu",
        lambda d: _parse_v1_cpu(
            _read_text(d / "cpu.cfs_quota_us"), _read_text(d / "cpu.cfs_period_us")
        ),
        lambda d: _parse_v2_cpu_max(_read_text(d / "cpu.max")),
    )


def memory_limit_bytes(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The tightest memory limit on the own cgroup and its ancestors, in bytes, or ``None``."""
    return _tightest_limit(
        proc_root,
        cgroup_root,
        "memory",
        lambda d: _parse_bytes(_read_text(d / "memory.limit_in_bytes")),
        lambda d: _parse_bytes(_read_text(d / "memory.max")),
    )
