"""Attacks on scratch file systems: a snapshot or a restore must never touch a host file.

The runner archives a sandbox's scratch file system and fills a new one from an archive,
as host root (``backends/local/scratch_archive.py``). So the sandbox plants what would
trick a careless archiver (symlinks to host files and directories, a FIFO that blocks a
reader, hard links and device nodes), and archives are crafted the way a tampered snapshot
would be (``../``, absolute names, writing through a symlink the archive made, hard links,
devices). Each archive is checked entry by entry; each crafted restore must fail the create
and leave a host sentinel directory exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
from pathlib import Path

import pytest

from sandboxd.backends.base import ScratchSpec
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import SandboxStartError
from sandboxd.runner.scratch_transfers import ScratchTransfers
from sandboxd_protocol.sandboxd_v1 import runner_pb2

MiB = 1 << 20
PLANT = (
    "cd /data && echo mine > own && ln -s /etc/passwd abs-link && ln -s ../../../etc up-link "
    "&& ln -s /proc/self/root/etc/shadow proc-link && mkfifo pipe && mkdir dir "
    "&& ln own dir/same-inode; ln /etc/hostname hard-host 2>/dev/null; "
    "mknod dev c 1 3 2>/dev/null; true"
)


def go(aio: asyncio.Runner, coro: object, timeout: float = 120) -> object:
    return aio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def archive_of(h: Harness, sid: str) -> bytes:
    reader = await h.backend.open_scratch_archive(sid)
    async with contextlib.aclosing(reader):
        return b"".join([chunk async for chunk in reader])


def test_a_snapshot_archives_links_as_text_and_never_reads_through_them(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    scratch = ScratchSpec(mount_path="/data", size_bytes=16 * MiB)

    async def scenario() -> bytes:
        async with local_harness.sandbox(scratch=scratch) as sid:
            r = await run(local_harness, sid, sh(PLANT + "; ls /data"))
            assert r.code == 0, r.stderr
            assert b"hard-host" not in r.stdout  # links never cross into another file system
            assert b"dev\n" not in r.stdout  # no device nodes in a user namespace
            return await archive_of(local_harness, sid)

    data = go(aio, scenario())
    assert isinstance(data, bytes)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"abs-link", "dir", "dir/same-inode", "own", "proc-link", "up-link"}
        assert members["abs-link"].issym() and members["abs-link"].linkname == "/etc/passwd"
        assert members["up-link"].linkname == "../../../etc"
        assert members["proc-link"].linkname == "/proc/self/root/etc/shadow"
        assert members["dir/same-inode"].isfile()  # a hard link inside: a file of its own
        own = tar.extractfile("own")
        assert own is not None and own.read() == b"mine\n"
        assert all(m.uid == 0 for m in members.values())  # the sandbox's ids, not the host's
    host_passwd = Path("/etc/passwd").read_bytes()
    assert host_passwd[:64] not in data  # nothing of the host file was read


def _tar(*entries: tuple[str, str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind in ("sym", "hard"):
                assert isinstance(payload, str)
                info.linkname = payload
            if kind == "chr":
                info.devmajor, info.devminor = 8, 0
            tar.addfile(info)
    return buf.getvalue()


def crafted(sentinel: Path) -> dict[str, bytes]:
    target = str(sentinel)
    return {
        "dot-dot": _tar(
            ("../../../../../..", "dir", b""), (f"../../../..{target}/x", "file", b"!")
        ),
        "absolute": _tar((f"{target}/x", "file", b"!")),
        "inner-dot-dot": _tar(("a", "dir", b""), (f"a/../../..{target}/x", "file", b"!")),
        "through-symlink": _tar(("l", "sym", target), ("l/x", "file", b"!")),
        "dir-symlink-then-dir": _tar(("l", "sym", target), ("l/sub", "dir", b"")),
        "hard-link-to-host": _tar(("h", "hard", f"{target}/keep")),
        "device": _tar(("disk", "chr", b"")),
        "fifo": _tar(("p", "fifo", b"")),
        "too-big": _tar(("big", "file", b"\0" * (24 * MiB))),
        "not-a-tar": b"this is not an archive" * 100,
    }


@pytest.mark.parametrize(
    "case",
    [
        "dot-dot",
        "absolute",
        "inner-dot-dot",
        "through-symlink",
        "dir-symlink-then-dir",
        "hard-link-to-host",
        "device",
        "fifo",
        "too-big",
        "not-a-tar",
    ],
)
def test_a_crafted_archive_fails_the_restore_and_touches_nothing_outside(
    aio: asyncio.Runner, local_harness: Harness, tmp_path: Path, case: str
) -> None:
    sentinel = tmp_path / "host-dir"
    sentinel.mkdir()
    (sentinel / "keep").write_text("host file\n")
    archive = tmp_path / "crafted.tar"
    archive.write_bytes(crafted(sentinel)[case])
    spec = local_harness.spec(
        scratch=ScratchSpec(mount_path="/data", size_bytes=16 * MiB, restore_archive=archive)
    )

    async def scenario() -> None:
        with pytest.raises(SandboxStartError, match="restoring the scratch file system failed"):
            await local_harness.backend.create(spec)

    go(aio, scenario())
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep"]
    assert (sentinel / "keep").read_text() == "host file\n"
    assert (sentinel / "keep").stat().st_nlink == 1


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def test_the_file_system_is_thawed_after_each_archive(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """An archive freezes the file system while it is written; writes go on afterwards."""
    scratch = ScratchSpec(mount_path="/data", size_bytes=32 * MiB)

    async def scenario() -> None:
        async with local_harness.sandbox(scratch=scratch) as sid:
            r = await run(local_harness, sid, sh("head -c 8000000 /dev/urandom > /data/a"))
            assert r.code == 0, r.stderr
            first = await archive_of(local_harness, sid)
            r = await run(local_harness, sid, sh("echo more > /data/b && cat /data/b"))
            assert r.code == 0 and r.stdout == b"more\n", r  # thawed again
            second = await archive_of(local_harness, sid)
            assert _names(first) == ["a"] and _names(second) == ["a", "b"]

    go(aio, scenario())


class RecordingCall:
    """Stands in for the control plane's end of an ``Operate`` call (a mock, unavoidable
    here: the runner's side is tested against a real sandbox, without a control plane).
    It keeps the frames the runner writes and ends the call when asked to read."""

    def __init__(self) -> None:
        self.frames: list[runner_pb2.OperationUp] = []

    async def write(self, frame: runner_pb2.OperationUp) -> None:
        self.frames.append(frame)

    async def done_writing(self) -> None:
        return None

    async def read(self) -> object:
        return None  # the end of the call


def test_the_runner_cuts_an_archive_at_the_control_planes_cap(
    aio: asyncio.Runner, local_harness: Harness, tmp_path: Path
) -> None:
    scratch = ScratchSpec(mount_path="/data", size_bytes=32 * MiB)
    transfers = ScratchTransfers(local_harness.backend, tmp_path / "staging")
    call = RecordingCall()

    async def scenario() -> None:
        async with local_harness.sandbox(scratch=scratch) as sid:
            r = await run(local_harness, sid, sh("head -c 6000000 /dev/urandom > /data/a"))
            assert r.code == 0, r.stderr
            command = runner_pb2.OpenScratchArchive(sandbox_id=sid, max_bytes=2 * MiB)
            await transfers.send_archive(command, call)  # type: ignore[arg-type]
            r = await run(local_harness, sid, sh("echo thawed > /data/b && cat /data/b"))
            assert r.stdout == b"thawed\n", r  # cut short, the file system is thawed again

    go(aio, scenario())
    kinds = [f.WhichOneof("frame") for f in call.frames]
    assert kinds[0] == "opened" and kinds[-1] == "done"
    sent = sum(len(f.data) for f in call.frames if f.WhichOneof("frame") == "data")
    assert sent <= 2 * MiB
    assert call.frames[-1].done.failure.reason == "CWSANDBOX_FSS_SIZE_EXCEEDED"
