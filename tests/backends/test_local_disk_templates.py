"""Disk templates: one ext4 image per layer size, calibrated so that ``df`` shows the cap.

Pure host-side work (``mkfs.ext4`` on nameless files in a directory), so these run without
any sandbox; what a sandbox then sees of its layer is in ``test_local_disk.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from sandboxd.backends.local.disk import DiskLayers
from sandboxd.backends.local.disk_template import (
    BLOCK,
    MIN_INODES,
    cap_blocks,
    make_template,
    read_superblock,
)

from .disk_support import wait_for_loops

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _needs_mkfs() -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)")


def superblock(path: Path) -> object:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_superblock(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "disk_bytes",
    [1, 8 * MiB, 127 * MiB, 1000 * 1000 * 1000, 1 << 30, 10 << 30],
    ids=["1B-is-1MiB", "8MiB", "127MiB-a-dropped-group", "1GB-unaligned", "1GiB", "10GiB"],
)
def test_a_template_is_exactly_the_cap(tmp_path: Path, disk_bytes: int) -> None:
    cap = cap_blocks(disk_bytes)
    assert cap * BLOCK >= max(disk_bytes, MiB)
    template = make_template(tmp_path, cap)
    sb = superblock(template.path)
    assert sb.usable == cap  # type: ignore[attr-defined]
    assert template.size == sb.blocks * BLOCK  # type: ignore[attr-defined]
    # sparse: only the metadata is data, and the agent copies exactly these extents
    assert sum(length for _, length in template.extents) < 2 * MiB
    assert os.stat(template.path).st_blocks * 512 < 4 * MiB
    assert os.listdir(tmp_path) == [template.path.name]  # no half-made leftovers


def test_templates_are_made_once_and_damaged_ones_again(tmp_path: Path) -> None:
    first = make_template(tmp_path, cap_blocks(64 * MiB))
    inode = os.stat(first.path).st_ino
    assert make_template(tmp_path, cap_blocks(64 * MiB)) == first
    assert os.stat(first.path).st_ino == inode
    with open(first.path, "r+b") as fh:
        fh.truncate(0)  # a template a crash left empty
    again = make_template(tmp_path, cap_blocks(64 * MiB))
    assert superblock(again.path).usable == cap_blocks(64 * MiB)  # type: ignore[attr-defined]


def test_concurrent_creates_of_a_new_size_share_one_template(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and mounts")
    layers = DiskLayers(tmp_path / "disk", ready=0)

    async def many() -> list[int]:
        try:
            return await asyncio.gather(*(layers.take(96 * MiB) for _ in range(8)))
        finally:
            await layers.close()

    fds = asyncio.run(many())
    assert len(set(fds)) == 8
    for fd in fds:
        assert os.statvfs(f"/proc/self/fd/{fd}").f_blocks * BLOCK == 96 * MiB
        assert sorted(os.listdir(f"/proc/self/fd/{fd}")) == ["lost+found", "upper", "work"]
        os.close(fd)
    assert len(os.listdir(tmp_path / "disk")) == 1


def test_layers_are_made_ahead_for_recent_sizes_and_freed_on_close(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and mounts")
    layers = DiskLayers(tmp_path / "disk", ready=2)

    async def scenario() -> None:
        try:
            for size in (16 * MiB, 32 * MiB, 48 * MiB):
                os.close(await layers.take(size))
                layers.refill()
                await layers.settle()
            assert layers.ready == 4  # two of each of the two sizes asked for last
            fd = await layers.take(48 * MiB)  # a ready one
            assert layers.ready == 3
            os.close(fd)
        finally:
            await layers.close()
        assert layers.ready == 0

    asyncio.run(scenario())
    assert asyncio.run(wait_for_loops(tmp_path / "disk", 0)) == []


def test_small_layers_still_get_a_few_thousand_inodes(tmp_path: Path) -> None:
    template = make_template(tmp_path, cap_blocks(MiB))
    fd = os.open(template.path, os.O_RDONLY)
    try:
        count = int.from_bytes(os.pread(fd, 4, 1024), "little")  # s_inodes_count
    finally:
        os.close(fd)
    assert count >= MIN_INODES
