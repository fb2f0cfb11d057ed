"""Every conformance check, against every backend that has a harness fixture."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sandboxd.backends import backend_names
from sandboxd.backends.base import Backend
from sandboxd.backends.conformance import CHECKS, Harness, check_disk_room
from sandboxd.images import ImageStore
from tests.support.postgres import small_tmpfs

from .image_refs import BUSYBOX

# backend name -> harness fixture; a new backend adds its fixture in conftest.py
HARNESSES = {"local": "local_harness"}


def test_every_builtin_backend_has_a_harness() -> None:
    assert set(backend_names()) == set(HARNESSES)


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    fixture: Harness = request.getfixturevalue(HARNESSES[request.param])
    return fixture


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(
    aio: asyncio.Runner, harness: Harness, check: Callable[[Harness], Awaitable[None]]
) -> None:
    aio.run(asyncio.wait_for(check(harness), 120))


def _disk_room_check(aio: asyncio.Runner, backend: Backend) -> None:
    harness = Harness(backend, BUSYBOX, None, lambda: backend, prefix=f"dr{os.getpid()}-")
    aio.run(asyncio.wait_for(check_disk_room(harness), 120))


def test_the_disk_room_check_passes_a_full_disk_that_says_so(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A local backend whose layers sit on a 16 MiB tmpfs reports that room, and a larger
    layer is refused as the runner's exhaustion (``check_disk_room``)."""
    from sandboxd.backends.local import LocalBackend

    backend = LocalBackend(tmp_path / "full", images=image_store)
    with small_tmpfs(tmp_path / "full" / "disk", "16m"):
        try:
            assert backend.disk_room_bytes() == 16 << 20
            _disk_room_check(aio, backend)
        finally:
            aio.run(backend.close())


def test_the_disk_room_check_fails_a_backend_that_reports_less_room_than_it_has(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Placement trusts the room a runner reports; a backend that makes a layer larger than
    it said fits fails the check (here one that says 1 MiB on a roomy disk)."""
    from sandboxd.backends.local import LocalBackend

    class Understated(LocalBackend):
        def disk_room_bytes(self) -> int | None:
            return 1 << 20

    backend = Understated(tmp_path / "roomy", images=image_store)
    try:
        with pytest.raises(AssertionError, match="larger than the 1048576 bytes"):
            _disk_room_check(aio, backend)
    finally:
        aio.run(backend.close())
