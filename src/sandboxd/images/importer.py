"""Importing a rootfs from a directory, a tarball, or (with skopeo + umoci) an OCI archive.

Why these three: a directory or a tarball of a root filesystem is what ``docker export``,
``mmdebstrap``, ``debootstrap`` and most image tools can produce, and needs only ``tar``.
OCI image archives have layers and whiteouts that need a real unpacker; rather than a
half-correct one of our own, we use ``skopeo`` + ``umoci`` when they are installed and say
how to install them otherwise. Everything is unpacked into a temporary directory inside the
store and renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .build import Progress, _stderr_progress
from .store import ImageError, ImageInfo, ImageStore, parse_name

_OCI_HINT = (
    "OCI archives need skopeo and umoci (apt-get install skopeo umoci); "
    "alternatively import a rootfs tarball, e.g. from `docker export`"
)


def _is_oci_dir(path: Path) -> bool:
    return (path / "oci-layout").is_file() and (path / "index.json").is_file()


def _is_oci_tar(path: Path) -> bool:
    try:
        with tarfile.open(path) as tar:
            names = {m.name.lstrip("./") for m in tar.getmembers()[:64]}
    except (tarfile.TarError, OSError):
        return False
    return "oci-layout" in names and "index.json" in names


def _run(argv: list[str], progress: Progress) -> None:
    progress(f"$ {' '.join(argv)}")
    proc = subprocess.run(argv, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"{argv[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _unpack_oci(source: Path, dest: Path, work: Path, progress: Progress) -> None:
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        raise ImageError(_OCI_HINT)
    transport = "oci" if source.is_dir() else "oci-archive"
    layout = work / "oci"
    _run(["skopeo", "copy", f"{transport}:{source}", f"oci:{layout}:import"], progress)
    _run(["umoci", "raw", "unpack", "--image", f"{layout}:import", str(dest)], progress)


def import_image(
    store: ImageStore, ref: str, path: str | Path, *, progress: Progress | None = None
) -> ImageInfo:
    """Import ``path`` (rootfs directory, rootfs tarball, or OCI archive/layout) as ``ref``."""
    report = progress or _stderr_progress
    parse_name(ref)
    source = Path(path).absolute()
    if not source.exists():
        raise ImageError(f"{source}: no such file or directory")
    store.images_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.images_dir, prefix=".import-") as tmp:
        work = Path(tmp)
        dest = work / "rootfs"
        if _is_oci_dir(source) or (source.is_file() and _is_oci_tar(source)):
            _unpack_oci(source, dest, work, report)
        elif source.is_dir():
            report(f"copying {source}")
            dest.mkdir()
            _run(["cp", "-a", "--reflink=auto", f"{source}/.", str(dest) + "/"], report)
        elif source.is_file():
            dest.mkdir()
            report(f"extracting {source}")
            _run(["tar", "--numeric-owner", "-xpf", str(source), "-C", str(dest)], report)
        else:
            raise ImageError(f"{source}: not a directory, tarball or OCI archive")
        if not any(dest.iterdir()):
            raise ImageError(f"{source}: the rootfs is empty")
        if not (dest / "bin").exists() and not (dest / "usr" / "bin").exists():
            report("warning: the rootfs has no /bin or /usr/bin")
        return store.publish(ref, dest, source=f"import:{source}", link=False)
