"""A host whose kernel makes no more cgroups fails creates as the runner's fault.

The kernel's own limits cannot be reached here cheaply (v1's memory controller allows
65,535 cgroups; this host has no cgroup v2 controllers for ``cgroup.max.descendants``), so
the v1 tree the manager works on lives on a tmpfs that has run out of inodes: ``mkdir``
fails there with the same ``ENOSPC``, from the real kernel, and the manager cannot tell
the two apart. Root is needed to mount the tmpfs.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sandboxd.backends.errors import RunnerExhausted
from sandboxd.backends.local.cgroups import CgroupManager, CgroupsExhausted, Layout
from sandboxd.backends.local.parent_cgroup import ParentLimits
from sandboxd.runner import failures
from tests.support.postgres import small_tmpfs

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")


def test_no_room_for_a_cgroup_is_the_runners_exhaustion(tmp_path: Path) -> None:
    inodes = 1 + 2 * len(CONTROLLERS)  # the root, each base and its sandboxd-x group
    with small_tmpfs(tmp_path / "cg", size="1m", inodes=inodes) as root:
        bases = {c: str(root / c) for c in CONTROLLERS}
        for base in bases.values():
            Path(base).mkdir()
        manager = CgroupManager("sandboxd-x", Layout(1, bases), ParentLimits())
        with pytest.raises(CgroupsExhausted) as caught:
            manager.create("sb-1")
        exc = caught.value
        assert isinstance(exc, RunnerExhausted) and isinstance(exc, OSError)
        assert exc.resource == "cgroups"
        assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC
        assert str(exc).startswith("the kernel makes no more cgroups here: ")
        # Nothing of the sandbox was left half made; the groups stay for the next create.
        assert [sorted(p.name for p in Path(b).iterdir()) for b in bases.values()] == [
            ["sandboxd-x"]
        ] * len(CONTROLLERS)
        assert [list(Path(b, "sandboxd-x").iterdir()) for b in bases.values()] == [[]] * len(
            CONTROLLERS
        )
        failure = failures.from_backend_error(exc, "sb-1")
        assert failure.reason == "CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED"
        assert failure.metadata["resource"] == "cgroups"
