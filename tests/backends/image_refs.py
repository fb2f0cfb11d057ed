"""Image references the backend tests use, and publishing a test-made rootfs as an image.

Specs name images by reference (the backend resolves them in its image store), so a test
that crafts a root file system (a hostile one, with planted symlinks or device nodes)
publishes it in the session's store under a fresh name and names that.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from sandboxd.images import ImageStore

BUSYBOX = "busybox:latest"
PYTHON = "python:3.11"

_published = itertools.count(1)


def publish(store: ImageStore, rootfs: Path, name: str) -> str:
    """Publish ``rootfs`` (linked, not moved) as a new image; its reference."""
    ref = f"{name}-{os.getpid()}-{next(_published)}:latest"
    store.publish(ref, rootfs, source="test", link=True)
    return ref
