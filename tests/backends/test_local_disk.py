"""The writable layer is on disk and capped: ENOSPC at the cap, memory untouched, nothing left.

Each sandbox writes into its own ext4 filesystem, the size of its disk limit, on a loop
device over an unnamed image (``src/sandboxd/backends/local/disk.py``). These tests write
real data through real sandboxes and look at the kernel's own view afterwards: the
sandbox's ``df``, its cgroup's memory counters, and the host's loop devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType, MountedFile, NetworkSpec
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import FileOperationError, RunnerExhausted, SandboxStartError
from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.disk import DEFAULT_READY, DiskLayers
from sandboxd.backends.local.disk_template import MIN_INODES, DiskError
from sandboxd.backends.local.state import SandboxRecord
from sandboxd.images import ImageStore
from tests.support.postgres import small_tmpfs

from .disk_support import loop_devices, memory_stat, stray_files, wait_for_loops, wait_in_use
from .image_refs import BUSYBOX

MiB = 1 << 20
GiB = 1 << 30


def go(aio: asyncio.Runner, coro: object, timeout: float = 120) -> object:
    return aio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


def disk_dir(h: Harness) -> Path:
    return Path(getattr(h.backend, "data_dir")) / "disk"  # noqa: B009


async def df(h: Harness, sid: str, flag: str = "-k") -> tuple[int, int, int]:
    """``(size, used, available)`` of ``/`` inside, in KiB (``-k``) or inodes (``-i``)."""
    r = await run(h, sid, sh(f"df {flag} / | tail -1"))
    assert r.code == 0, r.stderr
    size, used, avail = (int(x) for x in r.stdout.split()[1:4])
    return size, used, avail


def test_a_write_past_the_cap_fails_with_enospc_and_keeps_what_was_written(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    cap = 64 * MiB
    b = local_harness.backend

    async def scenario() -> None:
        async with local_harness.sandbox(disk_bytes=cap) as sid:
            assert (await df(local_harness, sid))[0] == cap // 1024  # df / shows the cap
            r = await run(local_harness, sid, sh("head -c 41943040 /dev/urandom >/a; md5sum /a"))
            assert r.code == 0, r.stderr
            digest = r.stdout.split()[0]
            # cap + 1 MiB more; cat writes until the filesystem is full to the last block
            r = await run(local_harness, sid, sh(f"head -c {cap + MiB} /dev/zero | cat >/b"))
            assert r.code != 0 and b"No space left on device" in r.stderr, r
            r = await run(local_harness, sid, sh("md5sum /a; stat -c %s /a /b"))
            lines = r.stdout.split(b"\n")
            assert lines[0].split()[0] == digest  # the earlier data is intact
            written = int(lines[1]) + int(lines[2])
            # full means full: all but ext4's reserve for its own metadata (2 %), never more
            assert cap * 0.97 <= written <= cap, written
            with pytest.raises(FileOperationError) as err:
                await b.write_file(sid, "/c", b"x" * MiB)
            assert err.value.errno == 28  # ENOSPC through the files API as well
            r = await run(local_harness, sid, sh("rm /b && head -c 1048576 /dev/zero >/c"))
            assert r.code == 0, r.stderr  # what is deleted can be written again

    go(aio, scenario())


def test_writes_go_to_disk_not_to_memory(aio: asyncio.Runner, local_harness: Harness) -> None:
    """Three times the memory limit written to a file: no OOM kill, no shared memory used."""
    memory = 256 * MiB

    async def scenario() -> None:
        async with local_harness.sandbox(memory_bytes=memory, disk_bytes=GiB) as sid:
            cmd = ["dd", "if=/dev/zero", "of=/big", "bs=1M", "count=768"]
            r = await run(local_harness, sid, cmd)
            assert r.code == 0, r.stderr
            r = await run(local_harness, sid, sh("sync; stat -c %s /big"))
            assert int(r.stdout) == 768 * MiB
            stats = await local_harness.backend.stats(sid)
            assert stats.oom_kills == 0
            assert stats.memory_peak_bytes <= memory
            rec = local_harness.backend._records[sid]  # type: ignore[attr-defined]
            # a tmpfs layer would hold the file as shmem, charged and never reclaimed
            assert memory_stat(rec.cgroup).get("shmem", 0) < 16 * MiB
            assert (await local_harness.backend.state(sid)).state == "running"

    go(aio, scenario())


@pytest.mark.slow
def test_four_gib_written_with_one_gib_of_memory(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    async def scenario() -> None:
        async with local_harness.sandbox(memory_bytes=GiB, disk_bytes=10 * GiB) as sid:
            assert (await df(local_harness, sid))[0] == 10 * GiB // 1024
            cmd = ["dd", "if=/dev/zero", "of=/big", "bs=4M", "count=1024"]
            r = await run(local_harness, sid, cmd)
            assert r.code == 0, r.stderr
            r = await run(local_harness, sid, sh("sync; stat -c %s /big"))
            assert int(r.stdout) == 4 * GiB
            stats = await local_harness.backend.stats(sid)
            assert stats.oom_kills == 0 and stats.memory_peak_bytes <= GiB

    go(aio, scenario(), timeout=300)


def test_inodes_are_capped_too(aio: asyncio.Runner, local_harness: Harness) -> None:
    """Empty files cost no blocks; the inode count is capped, also with ENOSPC."""

    async def scenario() -> None:
        async with local_harness.sandbox(disk_bytes=16 * MiB) as sid:
            inodes, used, _ = await df(local_harness, sid, "-i")
            assert MIN_INODES <= inodes <= MIN_INODES + 64
            fill = "i=0; while true 2>/dev/null >/f$i; do i=$((i+1)); done; echo $i; true >/z"
            r = await run(local_harness, sid, sh(fill))
            assert b"No space left on device" in r.stderr, r
            assert int(r.stdout) <= inodes - used
            _, _, avail_kib = await df(local_harness, sid)
            assert avail_kib > 8 * 1024  # the blocks were not what ran out

    go(aio, scenario())


def test_a_layer_is_not_read_through_behind_the_sandboxs_back(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """Every mounted layer says ``no_prefetch_block_bitmaps`` (``/proc/fs/ext4/<dev>``).

    Without it the kernel's ext4lazyinit thread reads all block bitmaps of each new layer
    after its mount (80 of them at 10 GiB): CPU and loop-device reads on every create, for
    bitmaps that a sandbox which writes little never needs.
    """

    async def scenario() -> None:
        async with local_harness.sandbox(disk_bytes=10 * GiB) as sid:
            r = await run(local_harness, sid, sh("echo x > /written"))
            assert r.code == 0, r.stderr
            devices = loop_devices(disk_dir(local_harness))
            assert devices
            for dev in devices:
                options = Path(f"/proc/fs/ext4/{dev}/options").read_text().split()
                assert "no_prefetch_block_bitmaps" in options, (dev, options)
                assert "noinit_itable" in options, (dev, options)

    go(aio, scenario())


def test_stop_and_destroy_leave_no_device_file_or_mount(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    b = local_harness.backend
    where = disk_dir(local_harness)

    async def scenario() -> None:
        before = await wait_in_use(b, 0)
        spec = local_harness.spec(disk_bytes=128 * MiB)
        await b.create(spec)
        sid = spec.sandbox_id
        try:
            await b.start(sid)
            assert await wait_in_use(b, before + 1) == before + 1
            r = await run(local_harness, sid, sh("head -c 67108864 /dev/zero >/data; sync"))
            assert r.code == 0, r.stderr
            state_dir = b._records[sid].state_dir  # type: ignore[attr-defined]
            await b.stop(sid, 1)
            # stopped: the layer is already gone (the namespace went with the last process)
            assert await wait_in_use(b, before) == before
            assert stray_files(where) == []
            assert str(state_dir) not in Path("/proc/self/mountinfo").read_text()
        finally:
            await b.destroy(sid)
        assert not state_dir.exists()
        assert await wait_in_use(b, before) == before

    go(aio, scenario())


def test_a_create_that_fails_after_the_layer_is_mounted_leaves_nothing(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """The agent dies after mounting the layer (a mounted file onto a directory)."""
    b = local_harness.backend
    where = disk_dir(local_harness)

    async def scenario() -> None:
        before = await wait_in_use(b, 0)
        spec = local_harness.spec(mounted_files=(MountedFile("/etc", b"x"),))
        with pytest.raises(SandboxStartError):
            await b.create(spec)
        assert await wait_in_use(b, before) == before
        assert stray_files(where) == []
        assert not (Path(getattr(b, "data_dir")) / "sandboxes" / spec.sandbox_id).exists()  # noqa: B009

    go(aio, scenario())


def hold_for_a_while(pid: int, seconds: float) -> Callable[[], None]:
    """Stop process ``pid`` for ``seconds`` (through a pidfd: never another process).

    Returns what resumes it at once; call it when the test ends, whatever happened (a loop
    closed before ``seconds`` would leave the process stopped for good). A process already
    gone (under load, a failed sandbox's keeper may end first) is left.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return lambda: None
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
    except ProcessLookupError:
        os.close(pidfd)
        return lambda: None
    resumed = False

    def resume() -> None:
        nonlocal resumed
        if not resumed:
            resumed = True
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            os.close(pidfd)

    asyncio.get_running_loop().call_later(seconds, resume)
    return resume


def test_a_create_and_start_whose_main_process_cannot_start_leaves_nothing(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """The runner's one-call create: the agent reports the failed start with its readiness;
    the layer, the network, the id range, the cgroups and the state directory all go."""
    b = local_harness.backend
    where = disk_dir(local_harness)

    async def scenario() -> None:
        before = await wait_in_use(b, 0)
        internet = NetworkSpec(egress=EgressType.INTERNET)
        spec = local_harness.spec(command=("/no/such/program",), network=internet)
        sid = spec.sandbox_id
        seen: list[str] = []
        build = b._build_with_disk  # type: ignore[attr-defined]

        async def watched(rec: object, *args: object) -> None:
            try:
                await build(rec, *args)
            finally:
                seen.extend(getattr(rec, "cgroup").unique_dirs)  # noqa: B009

        b._build_with_disk = watched  # type: ignore[attr-defined]
        try:
            with pytest.raises(SandboxStartError, match="/no/such/program"):
                await b.create_and_start(spec)
        finally:
            del b._build_with_disk  # type: ignore[attr-defined]
        assert await wait_in_use(b, before) == before
        assert stray_files(where) == []
        assert not (Path(getattr(b, "data_dir")) / "sandboxes" / sid).exists()  # noqa: B009
        assert seen and not [d for d in seen if os.path.exists(d)]  # the cgroups were made
        assert sid not in b._net.claims().values()  # type: ignore[attr-defined]
        tag = b._net.tag_for(sid)  # type: ignore[attr-defined]
        shown = subprocess.run(["ip", "link", "show", "dev", f"sbx{tag}"], capture_output=True)
        assert shown.returncode != 0  # the veth's host end is gone
        assert b._net.netns_fd(b._net.lease_at(1, tag)) is None  # type: ignore[attr-defined]
        assert sid not in [label for _ids, label in b._ids.claims()]  # type: ignore[attr-defined]

    go(aio, scenario())


def test_a_failed_create_returns_after_its_keeper_ended_and_frees_the_id(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """The keeper writes exit.json in the state directory as it ends; a teardown that
    removed the directory before then could leave it behind, and the sandbox's id taken
    (seen in CI: a create again with the id of a failed one said "already exists").

    The failure is injected after the sandbox was set up and runs (standing in for what
    can fail then: publishing its ports, a cancelled create), and its keeper is held
    stopped for 0.3 s, so that the create's teardown finds it still running; the check
    comes before the hold ends."""
    b = local_harness.backend

    async def scenario() -> None:
        spec = local_harness.spec(command=("sleep", "1000"))
        keepers: list[SandboxRecord] = []
        resumes: list[Callable[[], None]] = []
        build = b._build_with_disk  # type: ignore[attr-defined]

        async def failing(rec: SandboxRecord, *args: object) -> None:
            await build(rec, *args)
            keepers.append(replace(rec))  # its keeper's pid and start time
            assert rec.keeper_pid is not None and rec.agent_alive()
            resumes.append(hold_for_a_while(rec.keeper_pid, 0.3))
            raise SandboxStartError("injected: a failure after the sandbox runs")

        b._build_with_disk = failing  # type: ignore[attr-defined]
        try:
            with pytest.raises(SandboxStartError, match="injected"):
                await b.create_and_start(spec)
            assert keepers, "the sandbox was never built"
            assert not keepers[0].agent_alive(), "the create returned before its keeper ended"
        finally:
            del b._build_with_disk  # type: ignore[attr-defined]
            for resume in resumes:  # never a keeper left stopped, whatever failed
                resume()
        assert not (Path(getattr(b, "data_dir")) / "sandboxes" / spec.sandbox_id).exists()  # noqa: B009
        await b.create_and_start(spec)  # the id is free
        await b.destroy(spec.sandbox_id)

    go(aio, scenario())


def test_a_full_host_disk_refuses_the_create(aio: asyncio.Runner, tmp_path: Path) -> None:
    async def scenario(layers: DiskLayers) -> None:
        try:
            with pytest.raises(DiskError, match="disk is full") as caught:
                await layers.take(GiB)
            # The runner's fault, not the request's: placement backs the runner off.
            assert isinstance(caught.value, RunnerExhausted)
            assert caught.value.resource == "disk"
            room = layers.room()  # what heartbeats report: the largest layer that fits
            assert room is not None and 8 * MiB < room <= 48 * MiB
            with pytest.raises(DiskError, match="disk is full"):
                await layers.take(room + MiB)
            fd = await layers.take(8 * MiB)  # a layer that fits is still made
            assert os.statvfs(f"/proc/self/fd/{fd}").f_blocks * 4096 == 8 * MiB
            os.close(fd)
        finally:
            await layers.close()
        assert await wait_for_loops(layers.disk_dir, 0) == []

    with small_tmpfs(tmp_path / "host", "48m") as mount:
        go(aio, scenario(DiskLayers(mount / "disk")))
    assert DiskLayers(tmp_path / "roomy").room() is None  # 1 GiB free or more: any size


# -- a runner killed with SIGKILL -------------------------------------------------------------

RUNNER = """
import asyncio, json, sys
from pathlib import Path
from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore

async def main(data_dir, images_dir, prefix, count):
    backend = LocalBackend(data_dir, images=ImageStore(images_dir))
    await backend.recover()
    def spec(sid):
        return SandboxSpec(sid, "busybox:latest", memory_bytes=128 << 20, disk_bytes=32 << 20)
    await backend.create(spec(f"{prefix}warm"))  # zygote and template ready: creates are quick
    await backend.destroy(f"{prefix}warm")
    print(json.dumps({"ready": True}), flush=True)
    for i in range(count):
        sid = f"{prefix}{i}"
        await backend.create(spec(sid))
        await backend.start(sid)
        print(json.dumps({"sid": sid, "agent": backend._records[sid].agent_pid}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def start_runner(
    data_dir: Path, images: ImageStore, prefix: str, count: int
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", RUNNER, str(data_dir), str(images.data_dir), prefix, str(count)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/")


def test_a_killed_runner_leaves_live_layers_working_and_ended_ones_freed(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "runner"
    where = data_dir / "disk"
    runner = start_runner(data_dir, image_store, "k", 2)
    assert runner.stdout is not None
    made = [json.loads(runner.stdout.readline()) for _ in range(3)][1:]
    live, ended = made[0]["sid"], made[1]["sid"]
    ready = DEFAULT_READY  # what the runner keeps made ahead

    async def scenario() -> None:
        assert len(await wait_for_loops(where, 2 + ready)) == 2 + ready
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        # the layers it made ahead died with it; the sandboxes' layers did not
        assert len(await wait_for_loops(where, 2)) == 2
        os.kill(made[1]["agent"], signal.SIGKILL)  # one sandbox ends while no runner watches
        assert len(await wait_for_loops(where, 1)) == 1  # and the kernel frees its layer
        backend = LocalBackend(data_dir, images=image_store)
        h = Harness(backend, BUSYBOX, None, lambda: backend)
        try:
            assert await backend.recover() == [live]
            assert (await df(h, live))[0] == 32 * 1024  # re-adopted with its cap
            r = await run(h, live, ["dd", "if=/dev/zero", "of=/x", "bs=1M", "count=40"])
            assert b"No space left on device" in r.stderr, r
            for sid in (live, ended):
                await backend.destroy(sid)
            assert await wait_in_use(backend, 0) == 0
            assert stray_files(where) == []
        finally:
            await backend.close()
        assert await wait_for_loops(where, 0) == []  # and close() freed the ready ones

    go(aio, scenario())


def test_runners_killed_mid_create_leave_no_layer_behind(
    aio: asyncio.Runner, image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """SIGKILL at every stage of a create, again and again; then recover and clean up.

    Each runner recovers what the last one left, then creates sandboxes back to back (about
    10 ms each) until it is killed a few milliseconds in: before, during and after the
    layer of one of them is copied, attached and mounted.
    """
    data_dir = tmp_path / "runner"
    where = data_dir / "disk"
    created = 0
    delays = (0.002, 0.009, 0.021, 0.045)
    for round_no, delay in enumerate(delays):
        runner = start_runner(data_dir, image_store, f"r{round_no}-", 50)
        assert runner.stdout is not None
        assert json.loads(runner.stdout.readline()) == {"ready": True}
        time.sleep(delay)
        runner.send_signal(signal.SIGKILL)
        created += len(runner.stdout.readlines())
        runner.wait()
    assert created < len(delays) * 50  # each was killed while creating

    async def scenario() -> None:
        backend = LocalBackend(data_dir, images=image_store)
        try:
            await backend.recover()
            for sid in list(backend._records):
                await backend.destroy(sid)
            assert await wait_in_use(backend, 0) == 0
            assert stray_files(where) == []
            # Nor a state directory or a user-id range of a create killed before its first
            # record: each would hold one of the host's ranges for good.
            assert list(backend.sandboxes_dir.iterdir()) == []
        finally:
            await backend.close()
        assert await wait_for_loops(where, 0) == []
        assert backend._ids.claimed() == []  # type: ignore[attr-defined]

    go(aio, scenario())
