"""The image store: build (mmdebstrap), import (directory, tarball, OCI), list, resolve.

See ``store.py`` for the on-disk layout and the cache, ``build.py`` for the recipes
(``python:3.11`` and friends), ``importer.py`` for imports and ``cli.py`` for the
``sandboxd images`` commands.
"""

from __future__ import annotations

from .build import RECIPES, build_busybox_image, build_image, build_python_image
from .importer import import_image
from .store import ImageError, ImageInfo, ImageNotFound, ImageStore, cache_dir, parse_name

__all__ = [
    "RECIPES",
    "ImageError",
    "ImageInfo",
    "ImageNotFound",
    "ImageStore",
    "build_busybox_image",
    "build_image",
    "build_python_image",
    "cache_dir",
    "import_image",
    "parse_name",
]
