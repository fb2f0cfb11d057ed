"""The default keep-alive command, carried out by the sandbox's agent instead of a shell.

Every client sends ``/bin/sh -c 'trap "exit 0" TERM INT; sleep infinity & wait'`` when the
user gives no command. The local backend's agent (PID 1) stays up in its place: no shell
and no ``sleep`` in the sandbox, and a stop or the end of the lifetime ends it with exit
code 0, as that shell would (``src/sandboxd/backends/keep_alive.py``). Any other command,
however close, runs as given. Real sandboxes on the busybox image.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path

from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.conformance import Harness, run, sh
from sandboxd.backends.errors import SandboxStartError
from sandboxd.backends.keep_alive import KEEP_ALIVE, keeps_alive
from sandboxd.backends.local import LocalBackend
from sandboxd.images import ImageStore

from .image_refs import BUSYBOX, publish


def go(aio: asyncio.Runner, coro: object, timeout: float = 60) -> object:
    return aio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def process_names(h: Harness, sid: str) -> list[str]:
    """The command names of every process in the sandbox but the listing's own."""
    r = await run(h, sid, sh("cat /proc/[0-9]*/comm"))
    assert r.code == 0, r
    return sorted(n for n in r.stdout.decode().split() if n not in ("sh", "cat"))


def test_only_the_exact_default_is_recognised() -> None:
    assert SandboxSpec(sandbox_id="k", image=BUSYBOX).command == KEEP_ALIVE
    assert keeps_alive(list(KEEP_ALIVE))
    near = (
        ("sh", *KEEP_ALIVE[1:]),  # another path to a shell
        (*KEEP_ALIVE[:2], 'trap "exit 0" TERM; sleep infinity & wait'),  # INT not trapped
        (*KEEP_ALIVE[:2], KEEP_ALIVE[2] + " "),
        (*KEEP_ALIVE, "extra"),
        KEEP_ALIVE[:2],
        (),
    )
    for argv in near:
        assert not keeps_alive(argv), argv


def test_a_default_sandbox_runs_no_shell_and_stops_with_zero(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness

    async def scenario() -> None:
        async with h.sandbox() as sid:
            assert await process_names(h, sid) == ["sandboxd-init"]  # no sh, no sleep
            assert (await h.backend.state(sid)).state == "running"
            assert (await run(h, sid, ["true"])).code == 0
            started = time.monotonic()
            assert await h.backend.stop(sid, 5) == 0  # not 143: the trap's exit code
            assert time.monotonic() - started < 2  # nothing waited out the grace period
            state = await h.backend.state(sid)
            assert (state.state, state.exit_code, state.reason) == ("exited", 0, "stopped")

    go(aio, scenario())


def test_its_lifetime_ends_it_with_zero_and_execs_with_it(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness

    async def scenario() -> None:
        async with h.sandbox(max_lifetime_seconds=1) as sid:
            session = await h.backend.exec(sid, ["sleep", "1000"])  # outlives nothing
            assert await asyncio.wait_for(h.backend.wait(sid), 15) == 0
            state = await h.backend.state(sid)
            assert (state.exit_code, state.reason) == (0, "lifetime")
            assert await asyncio.wait_for(session.wait(), 10) in (137, -9)

    go(aio, scenario())


def test_a_command_close_to_the_default_runs_its_shell(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    h = local_harness
    close = ("/bin/sh", "-c", 'trap "exit 0" TERM; sleep infinity & wait')

    async def scenario() -> None:
        async with h.sandbox(command=close) as sid:
            for _ in range(200):  # the shell forks its sleep a moment after it starts
                names = await process_names(h, sid)
                if "sleep" in names:
                    break
                await asyncio.sleep(0.02)
            assert names == ["sandboxd-init", "sleep"], names
            listing = (await run(h, sid, ["ps", "-o", "args"])).stdout
            assert b"/bin/sh -c trap" in listing, listing  # the user's shell runs
            assert await h.backend.stop(sid, 5) == 0

    go(aio, scenario())


def test_an_image_without_a_shell_stays_up_by_default(
    aio: asyncio.Runner,
    local_harness: Harness,
    image_store: ImageStore,
    busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    """The keep-alive needs no ``/bin/sh`` in the image; a command that names it still does."""
    rootfs = tmp_path / "no-shell"
    assert os.system(f"cp -a {busybox_rootfs} {rootfs}") == 0
    (rootfs / "bin" / "sh").unlink()
    image = publish(image_store, rootfs, "no-shell")
    h = local_harness

    async def scenario() -> None:
        async with h.sandbox(image=image) as sid:
            r = await run(h, sid, ["/bin/busybox", "cat", "/proc/1/comm"])
            assert (r.code, r.stdout) == (0, b"sandboxd-init\n"), r
            assert await h.backend.stop(sid, 5) == 0
        try:  # a command that names the shell fails to start, as before
            async with h.sandbox(image=image, command=("/bin/sh", "-c", "true")):
                raise AssertionError("started a shell the image does not have")
        except SandboxStartError as exc:
            assert "exec /bin/sh: No such file or directory" in str(exc), exc

    go(aio, scenario())


def test_a_warm_slot_claimed_with_the_default_runs_no_shell(
    aio: asyncio.Runner, local_backend: LocalBackend, busybox_rootfs: Path
) -> None:
    h = Harness(local_backend, BUSYBOX, None, lambda: local_backend, prefix="keep-t-")
    b = local_backend

    async def scenario() -> None:
        template = h.spec()
        slot = await b.prepare(template)
        sid = "keep-t-claimed"
        await b.claim(slot, replace(template, sandbox_id=sid, env={"WHO": "claimant"}))
        try:
            assert await process_names(h, sid) == ["sandboxd-init"]
            r = await run(h, sid, sh("echo $WHO"))
            assert r.stdout == b"claimant\n", r
            assert await b.stop(sid, 5) == 0
        finally:
            await b.destroy(sid)

    go(aio, scenario())


def test_a_paused_default_sandbox_stops_with_zero(
    aio: asyncio.Runner, local_harness: Harness
) -> None:
    """Its agent is frozen with the rest; a stop thaws it first and it answers at once."""
    h = local_harness

    async def scenario() -> None:
        async with h.sandbox() as sid:
            await h.backend.pause(sid)
            assert (await h.backend.state(sid)).paused
            started = time.monotonic()
            assert await asyncio.wait_for(h.backend.stop(sid, 10), 30) == 0
            assert time.monotonic() - started < 8, "the stop waited out its grace period"

    go(aio, scenario())
