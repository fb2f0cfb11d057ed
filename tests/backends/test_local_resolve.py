"""Path resolution inside a root (``resolve.py``), on a directory tree made by the test.

No root privileges needed: ``openat2`` with ``RESOLVE_IN_ROOT`` works on any directory, so
these run the resolver against a fake sandbox root full of hostile links and check where
each path lands.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sandboxd.backends.local.resolve import Root, find_executable


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("inside")
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (root / "bin" / "data").write_text("not executable")
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink("../../bin/tool", root / "usr" / "bin" / "alias")
    os.symlink("/etc", root / "abs-etc")  # absolute: must mean the root's /etc
    os.symlink("../../../../..", root / "climb")  # relative climb: stops at the root
    os.symlink("/proc/self/fd/3", root / "magic")
    os.symlink("/proc/self/exe", root / "bin" / "selfexe")
    (tmp_path / "outside").write_text("host")
    return root


def test_symlinks_resolve_within_the_root(tree: Path) -> None:
    with Root(str(tree)) as root:
        for path in ("/etc/passwd", "/abs-etc/passwd", "/climb/etc/passwd", "/../../etc/passwd"):
            fd = root.open(path, os.O_RDONLY)
            try:
                assert os.read(fd, 100) == b"inside", path
            finally:
                os.close(fd)
        with pytest.raises(FileNotFoundError):
            root.open("/climb/outside", os.O_RDONLY)  # the sibling of the root stays out


def test_magic_links_are_refused(tree: Path) -> None:
    """``/proc`` named inside the root means the root's own (absent) ``/proc``; the process's
    real ``/proc/self`` magic links are never reached from a root-relative walk."""
    with Root(str(tree)) as root:
        for path in ("/magic/x", "/proc/self/fd/3", "/bin/selfexe"):
            with pytest.raises(OSError) as info:
                root.open(path, os.O_RDONLY)
            assert info.value.errno in (errno.ELOOP, errno.ENOENT, errno.EXDEV), path


def test_makedirs_creates_inside_only(tree: Path, tmp_path: Path) -> None:
    with Root(str(tree)) as root:
        root.makedirs("/abs-etc/new/deeper")
        assert (tree / "etc" / "new" / "deeper").is_dir()
        root.makedirs("/climb/a/b")
        assert (tree / "a" / "b").is_dir() and not (tmp_path / "a").exists()
        with pytest.raises(FileExistsError):
            root.makedirs("/etc/passwd/sub")  # a file in the way
        with pytest.raises(OSError):
            root.makedirs("/magic/x")


def test_find_executable_keeps_the_name_and_stays_inside(tree: Path) -> None:
    with Root(str(tree)) as root:
        real = root.real_path(root.open_dir("/"))
        assert find_executable(root, "tool", "/usr/bin:/bin", "/") == f"{real}/bin/tool"
        # a symlinked command keeps its own name (ps shows it), its directory is resolved
        assert find_executable(root, "alias", "/usr/bin", "/") == f"{real}/usr/bin/alias"
        assert find_executable(root, "./tool", "", "/bin") == f"{real}/bin/tool"
        with pytest.raises(PermissionError):
            find_executable(root, "data", "/bin", "/")
        # this fake root has no /proc, so the links dangle inside it; with a real /proc they
        # are refused as magic links (tests/backends/test_local_boundary.py)
        for link in ("/bin/selfexe", "/magic"):
            with pytest.raises(OSError):
                find_executable(root, link, "", "/")
        with pytest.raises(FileNotFoundError):
            find_executable(root, "missing", "/bin:/usr/bin", "/")
