"""The conformance checks every backend must pass (DESIGN.md rule 4), shipped in the package.

Each ``check_*`` is an async function taking a :class:`Harness`: the backend under test, the
reference of an image it has with busybox (``/bin/sh``, ``cat``, ``sleep``...), optionally
one of python:3.11, and a way to open a second backend instance on the same state (a runner
restart). Why in the package and not only in the test tree: an out-of-tree backend (a VM or
a remote one) proves it can stand in for the local backend by passing the same checks, with
:func:`run_checks` from its own tests or with ``sandboxd backends check NAME``. The project's
own tests (``tests/backends/test_conformance.py``) run every check on every built-in backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sandboxd.backends.base import (
    Backend,
    ExecSession,
    MountedFile,
    SandboxSpec,
    ScratchSpec,
    Stream,
)
from sandboxd.backends.errors import (
    BackendError,
    BackendUnavailable,
    FileIsDirectory,
    FileNotFound,
    FilePermissionDenied,
    ImageUnavailable,
    ParentNotFound,
    RunnerExhausted,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxStartError,
)

_counter = itertools.count(1)


@dataclass
class Harness:
    """What the checks need: the backend, images to run, and how to reopen its state."""

    backend: Backend
    image: str
    python_image: str | None
    reopen: Callable[[], Backend]
    prefix: str = "t-"
    # Ids of every spec made, so a caller can destroy what a failing check left behind.
    created: list[str] = field(default_factory=list)

    def created_archive(self) -> Path:
        """A fresh file for an archive a check writes (in a temporary directory of its own)."""
        return Path(tempfile.mkdtemp(prefix="sandboxd-conformance-")) / "scratch.tar"

    def spec(self, **kw: Any) -> SandboxSpec:
        """A spec with a fresh id on the busybox image; ``kw`` overrides any field."""
        sid = kw.pop("sandbox_id", None) or f"{self.prefix}{next(_counter)}"
        self.created.append(sid)  # whatever a failed check leaves behind can be destroyed
        base = SandboxSpec(sandbox_id=sid, image=self.image, memory_bytes=256 << 20)
        return replace(base, **kw)

    @contextlib.asynccontextmanager
    async def sandbox(self, start: bool = True, **kw: Any) -> AsyncIterator[str]:
        """Create (and start, as the runner does) a sandbox for the block; destroyed after."""
        spec = self.spec(**kw)
        if start:
            await self.backend.create_and_start(spec)
        else:
            await self.backend.create(spec)
        try:
            yield spec.sandbox_id
        finally:
            await self.backend.destroy(spec.sandbox_id)


@dataclass
class Result:
    """An exec's exit code and output, whole and as the chunks it arrived in."""

    code: int
    stdout: bytes
    stderr: bytes
    chunks: list[tuple[Stream, bytes]]


async def collect(session: ExecSession, stdin: bytes | None = None) -> Result:
    """Feed ``stdin`` (then end of input), gather all output and the exit code."""

    async def feed() -> None:
        if stdin is not None:
            await session.write_stdin(stdin)
        await session.close_stdin()

    feeder = asyncio.ensure_future(feed())
    chunks = [(c.stream, c.data) async for c in session]
    code = await session.wait()
    await feeder
    await session.close()
    out = b"".join(d for s, d in chunks if s == "stdout")
    err = b"".join(d for s, d in chunks if s == "stderr")
    return Result(code, out, err, chunks)


async def run(
    h: Harness, sid: str, argv: list[str], stdin: bytes | None = None, **kw: Any
) -> Result:
    """Exec ``argv`` in sandbox ``sid`` and collect its result."""
    return await collect(await h.backend.exec(sid, argv, **kw), stdin)


def sh(script: str) -> list[str]:
    """The argv that runs ``script`` with the sandbox's ``/bin/sh``."""
    return ["/bin/sh", "-c", script]


# -- exec ------------------------------------------------------------------------------------
async def check_exec_output_and_exit_code(h: Harness) -> None:
    async with h.sandbox() as sid:
        r = await run(h, sid, sh("echo out; echo err >&2; exit 3"))
        assert (r.code, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
        r = await run(h, sid, ["true"])
        assert (r.code, r.stdout, r.stderr) == (0, b"", b"")


async def check_exec_stdin_roundtrip(h: Harness) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: more than any pipe buffer
    async with h.sandbox() as sid:
        r = await run(h, sid, ["cat"], stdin=payload)
        assert r.code == 0 and r.stdout == payload
        r = await run(h, sid, ["wc", "-c"])  # no stdin at all means EOF, not a hang
        assert r.code == 0 and r.stdout.strip() == b"0"


async def check_exec_signals_are_128_plus_n(h: Harness) -> None:
    async with h.sandbox() as sid:
        assert (await run(h, sid, sh("kill -TERM $$"))).code == 143
        assert (await run(h, sid, sh("kill -KILL $$"))).code == 137
        assert (await run(h, sid, sh("kill -INT $$"))).code == 130
        session = await h.backend.exec(sid, ["sleep", "100"])
        await session.kill()
        assert await asyncio.wait_for(session.wait(), 5) == 137
        await session.close()


async def check_exec_env_and_cwd(h: Harness) -> None:
    async with h.sandbox(env={"SPEC_VAR": "from-spec"}, workdir="/tmp") as sid:
        r = await run(h, sid, sh("echo $SPEC_VAR $EXTRA; pwd"), env={"EXTRA": "x y"})
        assert r.stdout == b"from-spec x y\n/tmp\n"
        r = await run(h, sid, ["pwd"], cwd="/etc")
        assert r.stdout == b"/etc\n"


async def check_exec_missing_program_is_127(h: Harness) -> None:
    async with h.sandbox() as sid:
        r = await run(h, sid, ["/no/such/program"])
        assert r.code == 127 and b"/no/such/program" in r.stderr
        r = await run(h, sid, ["/etc/passwd"])  # not executable
        assert r.code == 126


async def check_exec_streams_before_exit(h: Harness) -> None:
    async with h.sandbox() as sid:
        session = await h.backend.exec(sid, sh("echo first; sleep 2; echo second"))
        started = time.monotonic()
        first = await session.__aiter__().__anext__()
        assert first.data == b"first\n" and time.monotonic() - started < 1.5
        rest = [c async for c in session]
        assert b"".join(c.data for c in rest) == b"second\n"
        assert await session.wait() == 0
        await session.close()


async def check_exec_large_output(h: Harness) -> None:
    async with h.sandbox() as sid:
        r = await run(h, sid, sh("head -c 8388608 /dev/zero; echo done >&2"))
        assert r.code == 0 and len(r.stdout) == 8 << 20 and r.stderr == b"done\n"


async def check_exec_concurrent_no_head_of_line_blocking(h: Harness) -> None:
    async with h.sandbox() as sid:
        slow = await h.backend.exec(sid, ["sleep", "30"])
        results = await asyncio.wait_for(
            asyncio.gather(*(run(h, sid, sh(f"echo {i}")) for i in range(20))), 15
        )
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(20)]
        await slow.close()


async def check_exec_tty(h: Harness) -> None:
    async with h.sandbox() as sid:
        r = await run(h, sid, sh("tty; stty size"), tty=True, tty_size=(100, 30))
        assert r.code == 0
        lines = r.stdout.replace(b"\r", b"").split(b"\n")
        assert lines[0].startswith(b"/dev/pts/") and lines[1] == b"30 100"
        session = await h.backend.exec(sid, sh("read x; stty size"), tty=True)
        await session.resize(120, 40)
        await session.write_stdin(b"go\n")
        out = b"".join([c.data async for c in session])
        assert b"40 120" in out and await session.wait() == 0
        await session.close()


# -- files -----------------------------------------------------------------------------------
async def check_files_roundtrip(h: Harness) -> None:
    big = bytes(range(256)) * 20000  # ~5 MB, binary
    async with h.sandbox() as sid:
        await h.backend.write_file(sid, "/tmp/big.bin", big)
        assert await h.backend.read_file(sid, "/tmp/big.bin") == big
        await h.backend.write_file(sid, "/tmp/empty", b"")
        assert await h.backend.read_file(sid, "/tmp/empty") == b""
        r = await run(h, sid, ["wc", "-c", "/tmp/big.bin"])
        assert r.stdout.split()[0] == str(len(big)).encode()
        await run(h, sid, sh("echo from-exec > /tmp/made"))
        assert await h.backend.read_file(sid, "/tmp/made") == b"from-exec\n"
        await h.backend.write_file(sid, "/tmp/a/b/c.txt", b"deep", make_parents=True)
        assert (await run(h, sid, ["cat", "/tmp/a/b/c.txt"])).stdout == b"deep"


async def check_file_errors_are_typed(h: Harness) -> None:
    mounted = (MountedFile("/etc/app/config.json", b'{"a": 1}'),)
    async with h.sandbox(mounted_files=mounted) as sid:
        for exc, coro in (
            (FileNotFound, h.backend.read_file(sid, "/does/not/exist")),
            (FileIsDirectory, h.backend.read_file(sid, "/tmp")),
            (FileIsDirectory, h.backend.write_file(sid, "/tmp", b"x")),
            (ParentNotFound, h.backend.write_file(sid, "/no/such/dir/f", b"x")),
            (FilePermissionDenied, h.backend.write_file(sid, "/etc/app/config.json", b"x")),
        ):
            try:
                await coro
            except exc:
                continue
            raise AssertionError(f"expected {exc.__name__}")


async def check_mounted_files_are_read_only(h: Harness) -> None:
    mounted = (MountedFile("/etc/app/config.json", b'{"a": 1}'), MountedFile("/x", b"top"))
    async with h.sandbox(mounted_files=mounted) as sid:
        assert (await run(h, sid, ["cat", "/etc/app/config.json"])).stdout == b'{"a": 1}'
        r = await run(h, sid, sh("echo hacked > /etc/app/config.json"))
        assert r.code != 0
        r = await run(h, sid, sh("rm -f /x; mv /x /y"))
        assert r.code != 0
        assert await h.backend.read_file(sid, "/x") == b"top"
        assert await h.backend.read_file(sid, "/etc/app/config.json") == b'{"a": 1}'


# -- main process, logs, stop --------------------------------------------------------------
async def check_wait_returns_main_exit_code(h: Harness) -> None:
    async with h.sandbox(command=("/bin/sh", "-c", "echo bye; exit 7")) as sid:
        assert await asyncio.wait_for(h.backend.wait(sid), 10) == 7
        state = await h.backend.state(sid)
        assert (state.state, state.exit_code, state.reason) == ("exited", 7, "exited")
        try:
            await h.backend.exec(sid, ["true"])
        except SandboxNotRunning:
            pass
        else:
            raise AssertionError("exec after exit must raise SandboxNotRunning")


async def check_create_and_start(h: Harness) -> None:
    """Create then start, or both at once (the runner's way); a failed start leaves nothing."""
    async with h.sandbox(start=False, command=("sleep", "1000")) as sid:
        assert (await h.backend.state(sid)).state == "created"
        await h.backend.start(sid)
        assert (await h.backend.state(sid)).state == "running"
    async with h.sandbox(command=("/bin/sh", "-c", "echo started; exec sleep 1000")) as sid:
        assert (await h.backend.state(sid)).state == "running"
        assert (await run(h, sid, ["true"])).code == 0
        deadline = time.monotonic() + 10
        while b"started\n" not in b"".join([c.data async for c in h.backend.logs(sid)]):
            assert time.monotonic() < deadline, "the main process's output never reached the log"
            await asyncio.sleep(0.02)
    bad = h.spec(command=("/no/such/program",))
    try:
        await h.backend.create_and_start(bad)
    except SandboxStartError as exc:
        assert "/no/such/program" in str(exc), exc
    else:
        raise AssertionError("a main process that cannot start must raise SandboxStartError")
    try:
        await h.backend.state(bad.sandbox_id)
    except SandboxNotFound:
        pass
    else:
        raise AssertionError("a failed create_and_start must leave nothing behind")
    await h.backend.create_and_start(replace(bad, command=("sleep", "1000")))  # the id is free
    await h.backend.destroy(bad.sandbox_id)


async def check_logs_of_main_process(h: Harness) -> None:
    script = "echo one; echo two >&2; sleep 1; echo three"
    async with h.sandbox(command=("/bin/sh", "-c", script)) as sid:
        follow = [c async for c in h.backend.logs(sid, follow=True)]
        assert b"".join(c.data for c in follow if c.stream == "stdout") == b"one\nthree\n"
        assert [c.data for c in follow if c.stream == "stderr"] == [b"two\n"]
        assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(follow))
        assert await h.backend.wait(sid) == 0
        after = [c async for c in h.backend.logs(sid)]  # still served after the end
        assert after == follow
        late = [c async for c in h.backend.logs(sid, since=follow[-1].timestamp)]
        assert [c.data for c in late] == [b"three\n"]


async def wait_for_sleep(h: Harness, sid: str, *, or_no_shell: bool = False) -> None:
    """Until the main command's ``sleep`` runs (a shell's trap is only set by then).

    ``or_no_shell``: also done when no shell runs at all, for the default keep-alive,
    which a backend may carry out without one (``keep_alive.py``).
    """
    for _ in range(200):
        listing = (await run(h, sid, ["ps", "-o", "args"])).stdout
        if b"sleep" in listing or (or_no_shell and b"/bin/sh" not in listing):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("main process never started sleeping")


async def check_stop_exit_codes(h: Harness) -> None:
    async with h.sandbox() as sid:  # default keep-alive traps TERM and exits 0
        await wait_for_sleep(h, sid, or_no_shell=True)
        assert await asyncio.wait_for(h.backend.stop(sid, 5), 10) == 0
        assert (await h.backend.state(sid)).reason == "stopped"
    async with h.sandbox(command=("sleep", "1000")) as sid:
        assert await asyncio.wait_for(h.backend.stop(sid, 5), 10) == 143
        assert (await h.backend.state(sid)).reason == "stopped"
    stubborn = ("/bin/sh", "-c", 'trap "" TERM; while true; do sleep 1; done')
    async with h.sandbox(command=stubborn) as sid:
        await wait_for_sleep(h, sid)
        started = time.monotonic()
        assert await asyncio.wait_for(h.backend.stop(sid, 0.5), 10) == 137
        assert time.monotonic() - started < 4
        for coro in (h.backend.exec(sid, ["true"]), h.backend.read_file(sid, "/etc/passwd")):
            try:
                await coro
            except SandboxNotRunning:
                continue
            raise AssertionError("operation on a stopped sandbox must raise")


async def check_lifetime_is_enforced(h: Harness) -> None:
    async with h.sandbox(command=("sleep", "1000"), max_lifetime_seconds=1) as sid:
        assert await asyncio.wait_for(h.backend.wait(sid), 15) == 143
        assert (await h.backend.state(sid)).reason == "lifetime"
    async with h.sandbox(max_lifetime_seconds=1) as sid:  # the keep-alive ends with 0
        assert await asyncio.wait_for(h.backend.wait(sid), 15) == 0
        assert (await h.backend.state(sid)).reason == "lifetime"


async def check_ids_and_lookup_errors(h: Harness) -> None:
    async with h.sandbox() as sid:
        try:
            await h.backend.create(h.spec(sandbox_id=sid))
        except SandboxExists:
            pass
        else:
            raise AssertionError("duplicate create must raise SandboxExists")
    for op in (h.backend.destroy("nope"), h.backend.wait("nope"), h.backend.stats("nope")):
        try:
            await op
        except SandboxNotFound:
            continue
        raise AssertionError("unknown id must raise SandboxNotFound")


async def check_images_by_reference(h: Harness) -> None:
    assert h.image in h.backend.image_refs(), "the harness's image must be listed"
    spec = h.spec(image="no-such-image:never")
    try:
        await h.backend.create(spec)
    except ImageUnavailable as exc:
        assert exc.image == "no-such-image:never"
    else:
        await h.backend.destroy(spec.sandbox_id)
        raise AssertionError("an image the backend does not have must raise ImageUnavailable")


async def check_stats_and_hostname(h: Harness) -> None:
    async with h.sandbox(hostname="box-one") as sid:
        assert (await run(h, sid, ["hostname"])).stdout == b"box-one\n"
        await run(h, sid, sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"))
        stats = await h.backend.stats(sid)
        assert stats.cpu_seconds > 0 and stats.memory_bytes > 0 and stats.pids >= 1


async def check_recover_after_restart(h: Harness) -> None:
    async with h.sandbox() as sid:
        await h.backend.write_file(sid, "/tmp/state", b"kept")
        other = h.reopen()
        try:
            assert sid in await other.recover()
            r = await run(Harness(other, h.image, None, h.reopen), sid, ["cat", "/tmp/state"])
            assert r.stdout == b"kept"
        finally:
            await other.close()


async def check_python_image(h: Harness) -> None:
    if h.python_image is None:
        return
    async with h.sandbox(image=h.python_image) as sid:
        script = "import sys, venv, ssl; print(sys.version_info[:2])"
        r = await run(h, sid, ["python", "-c", script])
        assert r.code == 0 and r.stdout == b"(3, 11)\n", r.stderr
        for tool in (["pip", "--version"], ["bash", "--version"], ["git", "--version"],
                     ["curl", "--version"], ["ps", "aux"]):  # fmt: skip
            r = await run(h, sid, tool)
            assert r.code == 0, (tool, r.stderr)
        r = await run(h, sid, ["python", "-m", "venv", "/tmp/venv"])
        assert r.code == 0, r.stderr
        # like the public image, pip may install system-wide (no PEP 668 marker)
        r = await run(h, sid, sh("ls /usr/lib/python3.11/EXTERNALLY-MANAGED"))
        assert r.code != 0


async def check_pause_if_supported(h: Harness) -> None:
    """A backend with ``supports_pause`` freezes, refuses work at once, thaws, and stops."""
    if not h.backend.supports_pause:
        return
    async with h.sandbox() as sid:
        await h.backend.write_file(sid, "/tmp/kept", b"kept")
        await h.backend.pause(sid)
        await h.backend.pause(sid)
        assert (await h.backend.state(sid)).paused
        try:
            await asyncio.wait_for(h.backend.exec(sid, ["true"]), 5)
        except SandboxNotRunning:
            pass
        else:
            raise AssertionError("exec into a paused sandbox was not refused")
        await h.backend.resume(sid)
        await h.backend.resume(sid)
        assert not (await h.backend.state(sid)).paused
        assert (await run(h, sid, ["cat", "/tmp/kept"])).stdout == b"kept"
        await h.backend.pause(sid)
        assert await asyncio.wait_for(h.backend.stop(sid, 10), 30) == 0  # thawed, got SIGTERM


async def check_scratch_snapshot_and_restore(h: Harness) -> None:
    """A scratch file system: capped, archived (running and after the end), restored elsewhere.

    Only for backends that declare ``supports_scratch``; the others must refuse the archive
    with ``BackendUnavailable``.
    """
    if not h.backend.supports_scratch:
        async with h.sandbox() as sid:
            try:
                await h.backend.open_scratch_archive(sid)
            except BackendUnavailable:
                return
            raise AssertionError("a backend without scratch file systems opened an archive")
    scratch = ScratchSpec(mount_path="/work/data", size_bytes=32 << 20)
    archive = h.created_archive()
    async with h.sandbox(scratch=scratch) as sid:
        script = "df -k /work/data | tail -1; mkdir -p /work/data/d && "
        r = await run(h, sid, sh(script + "echo kept > /work/data/d/f && ln -s d/f /work/data/l"))
        assert r.code == 0, r.stderr
        assert int(r.stdout.split()[1]) == (32 << 20) // 1024, r.stdout  # df shows the size
        r = await run(h, sid, sh("head -c 40000000 /dev/zero | cat > /work/data/big"))
        assert r.code != 0 and b"No space left on device" in r.stderr, r
        await run(h, sid, sh("rm /work/data/big"))
        reader = await h.backend.open_scratch_archive(sid)
        async with contextlib.aclosing(reader):
            with archive.open("wb") as out:
                async for chunk in reader:
                    out.write(chunk)
        await h.backend.stop(sid, 1)
        reader = await h.backend.open_scratch_archive(sid)  # after the end, too
        async with contextlib.aclosing(reader):
            assert b"kept" in b"".join([chunk async for chunk in reader])
    restored = ScratchSpec(mount_path="/restored", size_bytes=16 << 20, restore_archive=archive)
    async with h.sandbox(scratch=restored) as sid:
        r = await run(h, sid, sh("cat /restored/d/f; readlink /restored/l"))
        assert r.code == 0 and r.stdout == b"kept\nd/f\n", r


async def check_disk_room(h: Harness) -> None:
    """``disk_room_bytes`` (sent with every heartbeat, for placement) is None or a size.

    A layer larger than a size it gives fails as the runner's exhaustion, not the request's
    (``RunnerExhausted`` naming ``disk``), so that the control plane backs the runner off.
    """
    room = h.backend.disk_room_bytes()
    assert room is None or (isinstance(room, int) and room >= 0), f"disk room {room!r}"
    if room is not None:
        try:
            async with h.sandbox(disk_bytes=room + (1 << 20)):
                raise AssertionError(f"a layer larger than the {room} bytes of room was made")
        except RunnerExhausted as exc:
            assert exc.resource == "disk", exc.resource


CHECKS: list[Callable[[Harness], Awaitable[None]]] = [
    check_exec_output_and_exit_code,
    check_create_and_start,
    check_exec_stdin_roundtrip,
    check_exec_signals_are_128_plus_n,
    check_exec_env_and_cwd,
    check_exec_missing_program_is_127,
    check_exec_streams_before_exit,
    check_exec_large_output,
    check_exec_concurrent_no_head_of_line_blocking,
    check_exec_tty,
    check_files_roundtrip,
    check_file_errors_are_typed,
    check_mounted_files_are_read_only,
    check_wait_returns_main_exit_code,
    check_logs_of_main_process,
    check_stop_exit_codes,
    check_lifetime_is_enforced,
    check_ids_and_lookup_errors,
    check_images_by_reference,
    check_stats_and_hostname,
    check_recover_after_restart,
    check_pause_if_supported,
    check_python_image,
    check_scratch_snapshot_and_restore,
    check_disk_room,
]


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``error`` is empty when it passed."""

    name: str
    seconds: float
    error: str = ""

    @property
    def passed(self) -> bool:
        """Whether the check passed."""
        return not self.error


async def run_checks(
    harness: Harness,
    checks: list[Callable[[Harness], Awaitable[None]]] | None = None,
    *,
    timeout: float = 120.0,
) -> list[CheckResult]:
    """Run ``checks`` (all of :data:`CHECKS` by default) one after another; never raises.

    Each check gets ``timeout`` seconds; a failure is recorded with its message and the
    next check runs, so one report shows everything a new backend still lacks.
    """
    results: list[CheckResult] = []
    for check in checks if checks is not None else CHECKS:
        name = check.__name__.removeprefix("check_")
        started = time.monotonic()
        error = ""
        try:
            await asyncio.wait_for(check(harness), timeout)
        except TimeoutError:
            error = f"did not finish within {timeout:g}s"
        except Exception as exc:  # a check failing in any way is a result, not a crash
            error = f"{type(exc).__name__}: {exc}".strip()
        results.append(CheckResult(name, time.monotonic() - started, error))
    return results


async def destroy_leftovers(harness: Harness) -> None:
    """Destroy every sandbox a check made and did not destroy (e.g. one that failed)."""
    for sid in harness.created:
        with contextlib.suppress(BackendError):
            await harness.backend.destroy(sid)
    harness.created.clear()


__all__ = [
    "CHECKS",
    "CheckResult",
    "Harness",
    "Result",
    "collect",
    "destroy_leftovers",
    "run",
    "run_checks",
    "sh",
]
