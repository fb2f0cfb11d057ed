"""Fixtures for the backend tests: one event loop, cached images, one backend per session.

The images come from the machine-wide build cache (``$SANDBOXD_IMAGE_CACHE`` or
``/var/cache/sandboxd``): the first run builds busybox (seconds) and python:3.11 (about a
minute); later runs reuse them. Tests that need root, cgroups or mmdebstrap skip with the
reason when those are missing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.backends.base import Backend
from sandboxd.backends.conformance import Harness
from sandboxd.images import ImageStore, build_busybox_image, build_python_image

from .image_refs import BUSYBOX, PYTHON


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts, cgroups")


@pytest.fixture(scope="session")
def aio() -> Iterator[asyncio.Runner]:
    """One event loop for the whole session, so a backend can span tests."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="session")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    return ImageStore(tmp_path_factory.mktemp("images"))


def _build(fn: object, store: ImageStore) -> Path:
    _require_root()
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed")
    info = fn(store, progress=lambda _line: None)  # type: ignore[operator]
    return Path(info.rootfs)


@pytest.fixture(scope="session")
def busybox_rootfs(image_store: ImageStore) -> Path:
    return _build(build_busybox_image, image_store)


@pytest.fixture(scope="session")
def python_rootfs(image_store: ImageStore) -> Path:
    return _build(build_python_image, image_store)


@pytest.fixture(scope="session")
def local_backend(
    aio: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory, image_store: ImageStore
) -> Iterator[Backend]:
    _require_root()
    from sandboxd.backends.local import LocalBackend

    backend = LocalBackend(tmp_path_factory.mktemp("local-backend"), images=image_store)
    fp = aio.run(backend.fingerprint())
    if not fp.available:
        pytest.skip(f"local backend unavailable: {fp.reason}")
    yield backend
    aio.run(_shutdown(backend))


async def _shutdown(backend: Backend) -> None:
    for sid in list(getattr(backend, "_records", {})):
        await backend.destroy(sid)
    await backend.close()


_ids = itertools.count(1)


def new_local_backend(data_dir: Path, images: ImageStore) -> Backend:
    from sandboxd.backends.local import LocalBackend

    return LocalBackend(data_dir, images=images)


@pytest.fixture
def local_harness(
    aio: asyncio.Runner,
    local_backend: Backend,
    image_store: ImageStore,
    busybox_rootfs: Path,
    python_rootfs: Path,
) -> Harness:
    data_dir = Path(getattr(local_backend, "data_dir"))  # noqa: B009
    return Harness(  # the rootfs fixtures made sure both images are in the store
        backend=local_backend,
        image=BUSYBOX,
        python_image=PYTHON,
        reopen=lambda: new_local_backend(data_dir, image_store),
        prefix=f"t{os.getpid()}-",
    )
