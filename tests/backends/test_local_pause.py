"""Pausing on the local backend: real sandboxes frozen with the cgroup freezer and thawed.

Each test checks what a user would notice: a busy process stops using CPU (the cgroup's
own CPU counter stands still), nothing can run in a paused sandbox and asking fails at
once instead of hanging, the process continues from where it was (its counter, its files),
a paused sandbox stops and is destroyed, and a restarted runner finds it still paused.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sandboxd.backends.conformance import Harness, run
from sandboxd.backends.errors import SandboxNotRunning, SandboxPaused
from sandboxd.backends.local import freezer
from sandboxd.backends.local.cgroups import detect
from tests.backends.test_local_units import CGROUP_V1, MOUNTINFO_V1
from tests.support.faults import wait_idle

COUNTER = ("/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; done")


async def _count(h: Harness, sid: str) -> int:
    data = await h.backend.read_file(sid, "/tmp/n")
    return int(data.split()[0]) if data.strip() else 0


async def _until_counting(h: Harness, sid: str, above: int = 0) -> int:
    deadline = time.monotonic() + 30
    while True:
        try:
            value = await _count(h, sid)
        except Exception:  # the file is not there yet
            value = 0
        if value > above:
            return value
        assert time.monotonic() < deadline, f"the counter did not pass {above}"
        await asyncio.sleep(0.05)


async def _cpu_seconds(h: Harness, sid: str) -> float:
    return (await h.backend.stats(sid)).cpu_seconds


def test_pause_freezes_processes_and_resume_continues_them(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness

    async def scenario() -> None:
        async with h.sandbox(command=COUNTER) as sid:
            await h.backend.write_file(sid, "/tmp/kept", b"written before the pause")
            await _until_counting(h, sid, above=10)
            await h.backend.pause(sid)
            await h.backend.pause(sid)  # idempotent
            assert (await h.backend.state(sid)).paused
            before = await _cpu_seconds(h, sid)
            await asyncio.sleep(1.0)
            after = await _cpu_seconds(h, sid)
            assert after - before < 0.005, f"a paused sandbox used {after - before:.3f} s of CPU"
            for attempt in (
                h.backend.exec(sid, ["true"]),
                h.backend.read_file(sid, "/tmp/kept"),
                h.backend.write_file(sid, "/tmp/other", b"x"),
            ):
                with pytest.raises(SandboxPaused, match="is paused"):
                    await asyncio.wait_for(attempt, 5)  # refused at once, never a hang
            await h.backend.resume(sid)
            await h.backend.resume(sid)  # idempotent
            assert not (await h.backend.state(sid)).paused
            counted = await _count(h, sid)
            assert await _until_counting(h, sid, above=counted) > counted
            assert await h.backend.read_file(sid, "/tmp/kept") == b"written before the pause"
            r = await run(h, sid, ["echo", "alive"])
            assert r.stdout == b"alive\n"

    aio.run(asyncio.wait_for(scenario(), 120))


def test_a_paused_sandbox_stops_and_is_destroyed(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness

    async def scenario() -> None:
        # A shell that exits 0 on SIGTERM: the default keep-alive has no process to signal.
        spec = h.spec(command=("/bin/sh", "-c", 'trap "exit 0" TERM; sleep infinity & wait'))
        await h.backend.create(spec)
        sid = spec.sandbox_id
        try:
            await h.backend.start(sid)
            # Its shell exits 0 on SIGTERM only once it has set its trap (then it sleeps).
            await asyncio.to_thread(wait_idle, sid)
            await h.backend.pause(sid)
            began = time.monotonic()
            code = await asyncio.wait_for(h.backend.stop(sid, 10), 30)
            assert code == 0, "the paused process did not get its SIGTERM"
            assert time.monotonic() - began < 8, "the stop waited for its grace period"
            with pytest.raises(SandboxNotRunning):
                await h.backend.pause(sid)
        finally:
            await h.backend.destroy(sid)
        async with h.sandbox(command=COUNTER) as other:
            await h.backend.pause(other)
        # destroy() above killed a paused sandbox: its cgroup is gone, nothing is left
        assert other not in await h.backend.recover()

    aio.run(asyncio.wait_for(scenario(), 120))


def test_a_restarted_runner_finds_a_paused_sandbox_paused(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness

    async def scenario() -> None:
        async with h.sandbox(command=COUNTER) as sid:
            await _until_counting(h, sid)
            await h.backend.pause(sid)
            other = h.reopen()
            try:
                assert sid in await asyncio.wait_for(other.recover(), 30)
                assert (await other.state(sid)).paused
                with pytest.raises(SandboxPaused):
                    await asyncio.wait_for(other.exec(sid, ["true"]), 5)
                await other.resume(sid)
                reopened = Harness(other, h.image, None, h.reopen)
                counted = await _count(reopened, sid)
                assert await _until_counting(reopened, sid, above=counted) > counted
            finally:
                await other.close()

    aio.run(asyncio.wait_for(scenario(), 120))


def test_freezer_reports_unsupported_without_a_freezer_hierarchy() -> None:
    from sandboxd.backends.local.cgroups import SandboxCgroup

    old = SandboxCgroup(1, {"cpu": "/nonexistent/cpu", "memory": "/nonexistent/memory"})
    assert not freezer.supported(old) and not freezer.is_frozen(old)
    freezer.thaw(old)  # nothing to thaw: no error
    with pytest.raises(freezer.FreezeError, match="no freezer"):
        freezer.freeze(old)


def _v2_mount() -> str | None:
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                return left.split()[4]
    return None


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_cgroup_v2_freeze_on_a_real_unified_hierarchy() -> None:
    """The v2 path (``cgroup.freeze``/``cgroup.events``) on the kernel's own cgroup2 mount.

    CI hosts are cgroup v1 for controllers, but mount cgroup2 beside them (hybrid); freezing
    needs no controller there, so a real busy process is frozen and thawed through it.
    """
    import os
    import subprocess

    from sandboxd.backends.local.cgroups import SandboxCgroup

    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    mount = _v2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted on this host")
    directory = os.path.join(mount, f"sandboxd-test-freeze-{os.getpid()}")
    os.mkdir(directory)
    busy = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    try:
        with open(os.path.join(directory, "cgroup.procs"), "w") as fh:
            fh.write(str(busy.pid))
        cgroup = SandboxCgroup(2, {"unified": directory})
        assert freezer.supported(cgroup) and not freezer.is_frozen(cgroup)
        freezer.freeze(cgroup)
        assert freezer.is_frozen(cgroup)
        ticks = _cpu_ticks(busy.pid)
        time.sleep(0.5)  # a window in which a running loop would use CPU
        assert _cpu_ticks(busy.pid) == ticks, "a frozen process kept running"
        freezer.thaw(cgroup)
        assert not freezer.is_frozen(cgroup)
        deadline = time.monotonic() + 10
        while _cpu_ticks(busy.pid) == ticks:
            assert time.monotonic() < deadline, "the thawed process did not run again"
            time.sleep(0.05)
    finally:
        busy.kill()
        busy.wait()
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(directory)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


FORK_STORM = (
    "/bin/sh",
    "-c",
    "while :; do (i=0; while [ $i -lt 200 ]; do i=$((i+1)); done) & done",
)


def test_attack_nothing_inside_can_escape_stall_or_undo_a_pause(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """A fork storm is frozen whole (no child forked mid-freeze escapes, the freeze does not
    stall), and the sandbox has no cgroup file system to freeze or thaw itself with."""
    h = local_harness

    async def scenario() -> None:
        async with h.sandbox() as calm:
            probe = await run(
                h,
                calm,
                [
                    "/bin/sh",
                    "-c",
                    "ls /sys/fs/cgroup; echo THAWED > /sys/fs/cgroup/freezer/freezer.state;"
                    " echo 0 > /sys/fs/cgroup/cgroup.freeze; mount -t cgroup -o freezer x /mnt",
                ],
            )
            assert probe.stdout.strip() == b"", probe  # masked: an empty, read-only directory
            assert probe.code != 0 and probe.stderr.count(b"\n") >= 3, probe
        # Room for the storm: at the PID limit the shell cannot fork and exits, ending the
        # sandbox before the pause (a slow, loaded host lets children pile up).
        spec = h.spec(command=FORK_STORM, pids_max=4096)
        await h.backend.create(spec)
        sid = spec.sandbox_id
        try:
            await h.backend.start(sid)
            deadline = time.monotonic() + 30
            while (await h.backend.stats(sid)).pids < 20:  # the storm is going
                assert time.monotonic() < deadline, "the fork storm did not start"
                await asyncio.sleep(0.02)
            began = time.monotonic()
            await h.backend.pause(sid)
            assert time.monotonic() - began < 10
            pids = (await h.backend.stats(sid)).pids
            before = await _cpu_seconds(h, sid)
            await asyncio.sleep(1.0)  # a window in which an escaped child would use CPU
            assert await _cpu_seconds(h, sid) - before < 0.005, "part of the storm kept running"
            assert (await h.backend.stats(sid)).pids == pids, "processes forked while paused"
            await h.backend.resume(sid)
            assert not (await h.backend.state(sid)).paused
            await asyncio.wait_for(h.backend.stop(sid, 1), 30)  # nothing was left stuck
        finally:
            await h.backend.destroy(sid)

    aio.run(asyncio.wait_for(scenario(), 120))


def test_the_v1_freezer_is_used_where_mounted_and_never_required(tmp_path: Path) -> None:
    """Hosts without a (usable) freezer hierarchy keep a working backend, without pause."""
    freezer_root = tmp_path / "freezer"
    (tmp_path / "cg").write_text(CGROUP_V1 + "6:freezer:/\n")
    mounted = MOUNTINFO_V1 + f"40 31 0:37 / {freezer_root} rw,relatime - cgroup cgroup rw,freezer\n"
    (tmp_path / "mi").write_text(mounted)
    assert "freezer" not in detect(str(tmp_path / "cg"), str(tmp_path / "mi")).bases  # absent
    freezer_root.mkdir()
    layout = detect(str(tmp_path / "cg"), str(tmp_path / "mi"))
    assert layout.version == 1 and layout.bases["freezer"] == str(freezer_root)
    (tmp_path / "mi").write_text(MOUNTINFO_V1)
    assert "freezer" not in detect(str(tmp_path / "cg"), str(tmp_path / "mi")).bases
