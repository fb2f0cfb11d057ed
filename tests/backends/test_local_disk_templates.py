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

from sandboxd.backends.local.disk import (
    BLOCK,
    MIN_INODES,
    DiskTemplates,
    cap_blocks,
    make_template,
    read_superblock,
)

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
    templates = DiskTemplates(tmp_path / "disk")

    async def many() -> list[dict[str, object]]:
        return await asyncio.gather(*(templates.layer(96 * MiB) for _ in range(8)))

    layers = asyncio.run(many())
    assert all(layer == layers[0] for layer in layers)
    assert len(os.listdir(tmp_path / "disk")) == 1


def test_small_layers_still_get_a_few_thousand_inodes(tmp_path: Path) -> None:
    template = make_template(tmp_path, cap_blocks(MiB))
    fd = os.open(template.path, os.O_RDONLY)
    try:
        count = int.from_bytes(os.pread(fd, 4, 1024), "little")  # s_inodes_count
    finally:
        os.close(fd)
    assert count >= MIN_INODES
