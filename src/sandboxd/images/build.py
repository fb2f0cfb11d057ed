"""Building images from Debian's packages with ``mmdebstrap``, cached machine-wide.

Why mmdebstrap: it needs nothing but Debian's mirror (the one registry the hosts reach),
runs unprivileged-or-root, and is fast (python:3.11 in well under a minute). Each recipe is
data (suite, variant, packages, hooks); its hash names the cache entry
``<cache>/builds/<hash>/rootfs``, so changing a recipe builds anew and an unchanged one is
reused by every data directory and test run. A file lock makes concurrent builders of the
same recipe (parallel test workers) wait for one build instead of racing.

``python:3.11`` carries what users of the public image rely on: python3 (3.11, Debian
bookworm's) with pip and venv, a ``python`` command, bash, coreutils, procps, curl, git,
ca-certificates. Debian marks its Python "externally managed" (PEP 668); like the public
image, ours lets ``pip install`` work system-wide, so that marker is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .store import ImageError, ImageInfo, ImageStore, parse_name

Progress = Callable[[str], None]
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """How to build one image."""

    suite: str
    variant: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...] = ()
    busybox_links: bool = False

    def key(self) -> str:
        """Content hash naming the cache entry."""
        raw = json.dumps({"v": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


_SLIM = (
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)
_CLEAN = 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt/*'
_PYTHON = Recipe(
    suite="bookworm",
    variant="apt",
    packages=(
        "python3",
        "python3-pip",
        "python3-venv",
        "python-is-python3",
        "bash",
        "coreutils",
        "procps",
        "curl",
        "git",
        "ca-certificates",
    ),
    hooks=('rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED', _CLEAN),
)
_DEBIAN = Recipe(
    suite="bookworm", variant="minbase", packages=("ca-certificates",), hooks=(_CLEAN,)
)
_BUSYBOX = Recipe(
    suite="bookworm", variant="extract", packages=("busybox-static",), busybox_links=True
)

RECIPES: dict[str, Recipe] = {
    "python:3.11": _PYTHON,
    "debian:bookworm": _DEBIAN,
    "debian:12": _DEBIAN,
    "busybox:latest": _BUSYBOX,
}


def _stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _finish_busybox(rootfs: Path) -> None:
    """Applet links, the usual directories and a root account for a busybox-only tree."""
    busybox = rootfs / "bin" / "busybox"
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = rootfs / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    for sub, mode in (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("root", 0o700),
                      ("tmp", 0o1777), ("etc", 0o755), ("home", 0o755)):  # fmt: skip
        path = rootfs / sub
        path.mkdir(exist_ok=True)
        path.chmod(mode)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")


def build_rootfs(recipe: Recipe, dest: Path, progress: Progress) -> None:
    """Run mmdebstrap for ``recipe`` into ``dest`` (which must not exist)."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    argv = ["mmdebstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}"]
    if recipe.variant != "extract":
        argv += ["--mode=root", *_SLIM]
    argv += [f"--customize-hook={hook}" for hook in recipe.hooks]
    argv += [recipe.suite, str(dest)]
    progress(f"$ {' '.join(argv)}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for raw in proc.stdout:
        line = raw.rstrip()
        tail = [*tail[-19:], line]
        progress(line)
    if proc.wait() != 0:
        raise ImageError("mmdebstrap failed:\n" + "\n".join(tail))
    if recipe.busybox_links:
        _finish_busybox(dest)


def cached_build(store: ImageStore, recipe: Recipe, progress: Progress, force: bool) -> Path:
    """The rootfs of ``recipe`` in the cache, building it once (under a lock) if missing."""
    builds = store.cache / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    entry = builds / recipe.key()
    rootfs = entry / "rootfs"
    with open(builds / f"{recipe.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rootfs.is_dir() and (entry / "done").exists() and not force:
            progress(f"using cached build {entry}")
            return rootfs
        tmp = builds / f".{recipe.key()}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        started = time.monotonic()
        build_rootfs(recipe, tmp / "rootfs", progress)
        (tmp / "done").write_text(json.dumps(asdict(recipe)))
        if entry.exists():
            shutil.rmtree(entry)
        os.rename(tmp, entry)
        progress(f"built in {time.monotonic() - started:.1f}s: {rootfs}")
        return rootfs


def build_image(
    store: ImageStore,
    ref: str,
    *,
    progress: Progress | None = None,
    force: bool = False,
    recipe: Recipe | None = None,
) -> ImageInfo:
    """Build (or take from the cache) a known image and publish it in ``store`` as ``ref``."""
    name, tag = parse_name(ref)
    full = f"{name}:{tag}"
    recipe = recipe or RECIPES.get(full)
    if recipe is None:
        known = ", ".join(sorted(RECIPES))
        raise ImageError(f"no recipe for {full!r}; buildable images: {known}")
    report = progress or _stderr_progress
    rootfs = cached_build(store, recipe, report, force)
    return store.publish(full, rootfs, source=f"build:{recipe.key()}", link=True)


def build_python_image(
    store: ImageStore, ref: str = "python:3.11", *, progress: Progress | None = None
) -> ImageInfo:
    """``python:3.11`` from Debian bookworm (see the module docstring for its contents)."""
    if parse_name(ref) != ("python", "3.11"):
        raise ImageError("only python:3.11 can be built (Debian bookworm ships Python 3.11)")
    return build_image(store, ref, progress=progress)


def build_busybox_image(
    store: ImageStore, ref: str = "busybox:latest", *, progress: Progress | None = None
) -> ImageInfo:
    """A tiny busybox-only rootfs (a few MB, seconds to build), for fast tests."""
    return build_image(store, ref, progress=progress, recipe=_BUSYBOX)
