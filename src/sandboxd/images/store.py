"""The image store: named rootfs directories under ``<data_dir>/images/<name>/<tag>/``.

Why plain directories: the local backend uses an image only as the read-only lower layer of
an overlay, so an image is just a directory tree plus a little metadata (``image.json``).
Built images live in a machine-wide cache (``/var/cache/sandboxd`` or
``$SANDBOXD_IMAGE_CACHE``) keyed by their recipe, and a store's ``rootfs`` entry is a
symlink into it: many data directories (every test, every runner on the host) share one
build. Imported images are copied into the store itself. Nothing ever writes into a rootfs
after it is published: builds and imports happen in a temporary directory that is renamed
into place, and the backend never mounts a rootfs writable.

An unknown name is refused with the command that would provide it (DESIGN.md rule 7).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE = "/var/cache/sandboxd"
# A repository, optionally behind a registry host with a port ("127.0.0.1:5000/team/app").
_NAME_RE = re.compile(
    r"^(?:[a-z0-9][a-z0-9.-]*:[0-9]{1,5}/)?[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*\Z"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


class ImageError(Exception):
    """An image operation failed."""


class ImageNotFound(ImageError, LookupError):
    """No image by that name; the message names the command that provides one."""

    def __init__(self, name: str, hint: str) -> None:
        super().__init__(f"image {name!r} is not available; {hint}")
        self.name = name
        self.hint = hint


def parse_name(ref: str) -> tuple[str, str]:
    """``"python:3.11"`` → ``("python", "3.11")``; the tag defaults to ``latest``."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, "latest"
    if not _NAME_RE.match(name) or not _TAG_RE.match(tag):
        raise ImageError(f"invalid image name {ref!r} (expected NAME[:TAG], lowercase name)")
    return name, tag


def cache_dir() -> Path:
    """The machine-wide build cache (``$SANDBOXD_IMAGE_CACHE`` or ``/var/cache/sandboxd``)."""
    return Path(os.environ.get("SANDBOXD_IMAGE_CACHE") or DEFAULT_CACHE)


@dataclass(frozen=True)
class ImageInfo:
    """One stored image."""

    name: str
    tag: str
    rootfs: Path
    source: str
    created_at: float
    size_bytes: int | None = None

    @property
    def ref(self) -> str:
        """``name:tag``."""
        return f"{self.name}:{self.tag}"


class ImageStore:
    """Images of one data directory; see the module docstring for the layout."""

    def __init__(self, data_dir: str | os.PathLike[str], cache: Path | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.images_dir = self.data_dir / "images"
        self.cache = cache or cache_dir()

    def _dir(self, name: str, tag: str) -> Path:
        return self.images_dir / name / tag

    def hint_for(self, ref: str) -> str:
        """The command that would provide ``ref``."""
        from .build import RECIPES

        if ref in RECIPES or f"{ref}:latest" in RECIPES:
            return f"run `sandboxd images build {ref}`"
        buildable = ", ".join(sorted(RECIPES))
        return f"run `sandboxd images import {ref} PATH` (buildable here: {buildable})"

    def get(self, ref: str) -> ImageInfo:
        """Metadata of ``ref``; ``ImageNotFound`` (with the providing command) otherwise."""
        name, tag = parse_name(ref)
        meta = self._dir(name, tag) / "image.json"
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            raise ImageNotFound(f"{name}:{tag}", self.hint_for(f"{name}:{tag}")) from None
        rootfs = (self._dir(name, tag) / "rootfs").resolve()
        if not rootfs.is_dir():
            raise ImageNotFound(f"{name}:{tag}", self.hint_for(f"{name}:{tag}"))
        return ImageInfo(
            name,
            tag,
            rootfs,
            data.get("source", ""),
            data.get("created_at", 0.0),
            data.get("size_bytes"),
        )

    def resolve(self, ref: str) -> Path:
        """The rootfs directory of ``ref`` (read-only by convention: never write into it)."""
        return self.get(ref).rootfs

    def list_images(self) -> list[ImageInfo]:
        """Every image whose rootfs is present, sorted by reference."""
        found: list[ImageInfo] = []
        if not self.images_dir.is_dir():
            return found
        for meta in sorted(self.images_dir.rglob("image.json")):
            rel = meta.parent.relative_to(self.images_dir)
            name, tag = "/".join(rel.parts[:-1]), rel.parts[-1]
            try:
                found.append(self.get(f"{name}:{tag}"))
            except ImageError:
                continue
        return found

    def refs(self) -> list[str]:
        """References a sandbox may name: ``name:tag``, plus the bare ``name`` for ``latest``."""
        found: set[str] = set()
        for info in self.list_images():
            found.add(info.ref)
            if info.tag == "latest":
                found.add(info.name)
        return sorted(found)

    def publish(
        self,
        ref: str,
        rootfs: Path,
        *,
        source: str,
        link: bool,
        extra: dict[str, Any] | None = None,
    ) -> ImageInfo:
        """Register ``rootfs`` as ``ref``: a symlink (``link``) or a move into the store."""
        name, tag = parse_name(ref)
        target = self._dir(name, tag)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{tag}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        if link:
            (staging / "rootfs").symlink_to(rootfs.absolute())
        else:
            os.rename(rootfs, staging / "rootfs")
        meta = {"name": name, "tag": tag, "source": source, "created_at": time.time()}
        meta.update(extra or {})
        (staging / "image.json").write_text(json.dumps(meta, indent=2))
        old = target.parent / f".{tag}.{os.getpid()}.old"
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        return self.get(ref)

    def remove(self, ref: str) -> None:
        """Forget ``ref`` (a cached build stays in the cache)."""
        name, tag = parse_name(ref)
        target = self._dir(name, tag)
        if not target.exists():
            raise ImageNotFound(f"{name}:{tag}", self.hint_for(f"{name}:{tag}"))
        shutil.rmtree(target)
