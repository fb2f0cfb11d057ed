"""Pulling OCI images from a registry into the image store (``sandboxd images pull``).

Why skopeo + umoci: a registry speaks the distribution API with auth challenges, mirrors and
manifest lists, and an image is layers with whiteouts; both tools are maintained, packaged by
Debian, and used by container runtimes. skopeo copies the image into an OCI layout in a
temporary directory inside the store, umoci unpacks it, and the rootfs is renamed into place,
so a failed pull leaves nothing behind and a sandbox never sees half an image.

Registry credentials come from a file in the containers-auth format (``auth.json``, as
``skopeo login`` or ``docker login`` write it); it must be readable by its owner only, like
every secret sandboxd reads, and it is never copied into the store.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from .build import Progress, _stderr_progress
from .store import ImageError, ImageInfo, ImageStore, parse_name

__all__ = ["pull_image", "tree_size"]

_NEEDS = "pulling images needs skopeo and umoci (apt-get install skopeo umoci)"
_STEP = re.compile(r"^(Getting image source signatures|Copying (blob|config) \S+|Writing manifest)")


def _check_authfile(path: Path) -> None:
    try:
        info = path.stat()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the credentials file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path}: the credentials file is not a regular file")
    if info.st_mode & 0o077:
        raise ImageError(
            f"{path}: the credentials file is readable by others (mode "
            f"{stat.S_IMODE(info.st_mode):o}); chmod 600 it"
        )


def _copy(argv: list[str], progress: Progress) -> None:
    """Run skopeo, reporting each step it prints; ImageError with its last words if it fails."""
    progress(f"$ {' '.join(argv)}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.strip()
        if _STEP.match(line):
            progress(line)
        tail = [*tail[-4:], line]
    if proc.wait() != 0:
        raise ImageError(f"skopeo could not pull the image: {' '.join(tail) or 'no output'}")


def tree_size(root: Path) -> int:
    """Bytes the files under ``root`` take (regular files, each hard link once)."""
    total, seen = 0, set()
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def pull_image(
    store: ImageStore,
    ref: str,
    *,
    authfile: Path | None = None,
    tls_verify: bool = True,
    progress: Progress | None = None,
) -> ImageInfo:
    """Pull ``ref`` (``[registry[:port]/]name[:tag]``) from its registry into ``store``."""
    report = progress or _stderr_progress
    parse_name(ref)
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        raise ImageError(_NEEDS)
    argv = ["skopeo", "copy", f"--src-tls-verify={'true' if tls_verify else 'false'}"]
    if authfile is not None:
        _check_authfile(authfile)
        argv += ["--src-authfile", str(authfile)]
    store.images_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.images_dir, prefix=".pull-") as tmp:
        work = Path(tmp)
        layout, dest = work / "oci", work / "rootfs"
        _copy([*argv, f"docker://{ref}", f"oci:{layout}:pull"], report)
        report("unpacking the layers")
        unpacked = subprocess.run(
            ["umoci", "raw", "unpack", "--image", f"{layout}:pull", str(dest)],
            capture_output=True,
            text=True,
            check=False,
        )
        if unpacked.returncode != 0:
            raise ImageError(f"umoci could not unpack {ref}: {unpacked.stderr.strip()}")
        if not dest.is_dir() or not any(dest.iterdir()):
            raise ImageError(f"{ref}: the image has an empty root file system")
        size = tree_size(dest)
        return store.publish(
            ref, dest, source=f"pull:{ref}", link=False, extra={"size_bytes": size}
        )
