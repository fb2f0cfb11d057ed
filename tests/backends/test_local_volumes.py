"""Persistent volumes of the local backend: data outlives sandboxes, and stays inside.

Real sandboxes on the local backend (root): one writes into a volume and is destroyed, the
next (another user namespace, other host ids) reads the files back as its own root's; a
read-only bind refuses writes; a sub-path is confined. The attacks a sandbox can prepare
from inside (a symlink in the volume that a later ``sub_path`` walks through, to a host
directory or out through ``..``) must fail the create and leave the host untouched, and
names that could climb (``..``, ``/``) never reach a path.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sandboxd.backends.base import VolumeBinding, VolumeSource
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import InvalidSpec, SandboxStartError, VolumeNotFound


def go(aio: asyncio.Runner, coro: object, timeout: float = 120) -> object:
    return aio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


def source(claim: str, sub_path: str = "") -> VolumeSource:
    return VolumeSource(organization="org-a", claim_name=claim, sub_path=sub_path)


def bind(src: VolumeSource, path: str = "/data", read_only: bool = False) -> VolumeBinding:
    return VolumeBinding(source=src, mount_path=path, read_only=read_only)


def volume_dir(h: Harness, claim: str) -> Path:
    return Path(getattr(h.backend, "data_dir")) / "volumes" / "org-a" / claim  # noqa: B009


def test_data_survives_the_sandbox_and_belongs_to_the_next_ones_root(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness
    vol = source("keep")

    async def scenario() -> tuple[bytes, bytes, int]:
        await h.backend.prepare_volume(vol, create=True)
        async with h.sandbox(volumes=(bind(vol),)) as sid:
            r = await run(h, sid, sh("echo kept > /data/note && mkdir /data/d && id -u"))
            assert r.code == 0, r.stderr
        async with h.sandbox(volumes=(bind(vol, "/again"),)) as sid:
            seen = await run(h, sid, sh("cat /again/note; stat -c '%u:%g' /again/note /again"))
            wrote = await run(h, sid, sh("echo more >> /again/note"))
        async with h.sandbox(volumes=(bind(vol, "/ro", read_only=True),)) as sid:
            refused = await run(h, sid, sh("echo x > /ro/new"))
        return seen.stdout, seen.stderr, wrote.code * 1000 + refused.code

    out, err, codes = go(aio, scenario())  # type: ignore[misc]
    assert out == b"kept\n0:0\n0:0\n", err
    assert codes // 1000 == 0 and codes % 1000 != 0  # the second writes; read-only refuses
    on_disk = volume_dir(h, "keep")
    assert (on_disk / "note").read_text() == "kept\nmore\n"
    assert (on_disk / "note").stat().st_uid == 0  # the sandbox's root is 0 on disk, as in images
    assert not (on_disk / "new").exists()


def test_a_sub_path_is_confined_and_made_when_missing(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness

    async def scenario() -> bytes:
        await h.backend.prepare_volume(source("subs"), create=True)
        async with h.sandbox(volumes=(bind(source("subs", "a/b")),)) as sid:
            r = await run(h, sid, sh("echo deep > /data/f; ls /data/.. | head -1"))
            assert r.code == 0, r.stderr
            return r.stdout

    go(aio, scenario())
    assert (volume_dir(h, "subs") / "a" / "b" / "f").read_text() == "deep\n"


@pytest.mark.parametrize(
    "link",
    ["/etc", "../../../../../../etc", "/proc/self/root/etc"],
)
def test_a_symlink_planted_in_the_volume_is_never_followed_by_a_later_sub_path(
    aio: asyncio.Runner, local_harness: Harness, link: str
) -> None:
    h = local_harness
    claim = f"plant-{abs(hash(link)) % 10_000}"
    vol = source(claim)

    async def scenario() -> None:
        await h.backend.prepare_volume(vol, create=True)
        async with h.sandbox(volumes=(bind(vol),)) as sid:
            r = await run(h, sid, sh(f"ln -s {link} /data/esc && mkdir /data/ok"))
            assert r.code == 0, r.stderr
        with pytest.raises(InvalidSpec) as refused:
            await h.backend.prepare_volume(source(claim, "esc"), create=True)
        assert refused.value.field == "volume.sub_path"
        with pytest.raises(InvalidSpec):  # below a real directory, the same
            await h.backend.prepare_volume(source(claim, "esc/x"), create=True)
        with pytest.raises((InvalidSpec, SandboxStartError)):
            async with h.sandbox(volumes=(bind(source(claim, "esc/shadow-dir")),)):
                pass

    go(aio, scenario())
    assert not Path("/etc/shadow-dir").exists()
    assert os.readlink(volume_dir(h, claim) / "esc") == link


def test_names_that_could_climb_never_become_paths(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    for bad in ("..", "a/b", "/abs", "", ".hidden", "UPPER"):
        with pytest.raises(InvalidSpec):
            VolumeSource(organization="org-a", claim_name=bad)
    for bad_sub in ("../x", "/etc", "a/../../b", "a//b", "./a"):
        with pytest.raises(InvalidSpec):
            VolumeSource(organization="org-a", claim_name="fine", sub_path=bad_sub)
    for bad_mount in ("/proc/x", "/", "/sys", "/dev/shm", "relative", "/a/../proc"):
        with pytest.raises(InvalidSpec):
            bind(source("fine"), bad_mount)
    with pytest.raises(VolumeNotFound):
        go(aio, local_harness.backend.prepare_volume(source("never-made"), create=False))
