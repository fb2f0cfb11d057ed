"""A small in-memory stand-in for a sandbox ``Backend``, for the supervisor's unit tests.

It is *not* a backend: real backends have their own conformance suite
(``sandboxd.backends.conformance``) and the lead writes the end-to-end tests with real
sandboxes. This stand-in only behaves enough like one (lifecycle, exit codes, typed errors,
exec sessions that stream) to pin down what the runner's supervisor does with the answers.

Exec programs understood by :class:`StandinExec`: ``echo WORDS...`` (stdout, exit 0),
``cat`` (stdin to stdout until stdin closes), ``fail CODE`` (stderr, exit CODE),
``sleep`` (runs until killed: 137), ``flood N`` (N stdout chunks of 1 KiB), anything else
(stderr "not found", exit 127, as a shell does).

Main-process logs are whatever the test appends with :meth:`StandinBackend.log`; they stay
readable after the main process ends, until destroy, as with a real backend.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandboxd.backends.base import (
    Backend,
    BackendConfig,
    ExecSession,
    Fingerprint,
    LogChunk,
    OutputChunk,
    PublishedPort,
    SandboxSpec,
    SandboxState,
    SandboxStats,
)
from sandboxd.backends.errors import (
    FileIsDirectory,
    FileNotFound,
    FileOperationError,
    FilePermissionDenied,
    FileTooLarge,
    ImageUnavailable,
    SandboxExists,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxPaused,
    SandboxStartError,
)
from sandboxd.images import ImageNotFound, ImageStore


class StandinExec(ExecSession):
    """A scripted process; see the module docstring for the programs."""

    def __init__(self, argv: list[str], tty: bool) -> None:
        self.argv = argv
        self.tty = tty
        self.resizes: list[tuple[int, int]] = []
        self.stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.killed_with: int | None = None
        self.closed = False
        self._out: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        code = 137
        try:
            code = await self._program()
        finally:
            if not self._exit.done():
                self._exit.set_result(code if self.killed_with is None else 128 + self.killed_with)
            self._out.put_nowait(None)

    async def _program(self) -> int:
        name, args = self.argv[0], self.argv[1:]
        if name == "echo":
            self._out.put_nowait(OutputChunk("stdout", (" ".join(args) + "\n").encode()))
            return 0
        if name == "cat":
            while (data := await self.stdin.get()) is not None:
                self._out.put_nowait(OutputChunk("stdout", data))
            return 0
        if name == "fail":
            self._out.put_nowait(OutputChunk("stderr", b"boom\n"))
            return int(args[0])
        if name == "sleep":
            await asyncio.Event().wait()
        if name == "flood":
            for i in range(int(args[0])):
                self._out.put_nowait(OutputChunk("stdout", bytes([65 + i % 26]) * 1024))
                await asyncio.sleep(0)
            return 0
        self._out.put_nowait(OutputChunk("stderr", f"exec {name}: not found\n".encode()))
        return 127

    async def write_stdin(self, data: bytes) -> None:
        await self.stdin.put(data)

    async def close_stdin(self) -> None:
        await self.stdin.put(None)

    async def resize(self, width: int, height: int) -> None:
        self.resizes.append((width, height))

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[OutputChunk]:
        while (chunk := await self._out.get()) is not None:
            yield chunk

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if not self._exit.done():
            self.killed_with = int(sig)
            self._task.cancel()

    async def close(self) -> None:
        if not self._exit.done():
            await self.kill()
            await asyncio.gather(self._task, return_exceptions=True)
        self.closed = True


@dataclass
class StandinSandbox:
    """One sandbox of the stand-in."""

    spec: SandboxSpec
    state: str = "created"
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    files: dict[str, bytes] = field(default_factory=dict)
    execs: list[StandinExec] = field(default_factory=list)
    stops: list[float] = field(default_factory=list)
    log: list[LogChunk] = field(default_factory=list)
    logged: asyncio.Event = field(default_factory=asyncio.Event)
    paused: bool = False

    @property
    def traps_term(self) -> bool:
        """Like the default keep-alive: a main process that traps SIGTERM exits 0."""
        return "trap" in " ".join(self.spec.command)


class StandinBackend(Backend):
    """In-memory backend; ``world`` may be shared by two instances to model a restart."""

    name = "standin"

    @classmethod
    def from_config(cls, config: BackendConfig) -> StandinBackend:
        """A fresh in-memory world (nothing is kept in ``config.data_dir``)."""
        return cls()

    def __init__(
        self, world: dict[str, StandinSandbox] | None = None, images: ImageStore | None = None
    ) -> None:
        self.world: dict[str, StandinSandbox] = world if world is not None else {}
        # With a store, images resolve the way the local backend resolves them; without
        # one, any image is accepted (tests about other things need not publish any).
        self.images = images
        self.calls: list[tuple[str, str]] = []
        self.fail_start: set[str] = set()
        self.start_delay = 0.0
        self.ports: tuple[PublishedPort, ...] = ()
        self.log_readers = 0  # open ``logs`` iterators (to see that readers get closed)

    def _get(self, sandbox_id: str) -> StandinSandbox:
        try:
            return self.world[sandbox_id]
        except KeyError:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}") from None

    def exit_main(self, sandbox_id: str, code: int, reason: str = "exited") -> None:
        """Make the main process end now (as if it exited by itself)."""
        sb = self._get(sandbox_id)
        if sb.state != "exited":
            sb.state, sb.exit_code, sb.reason = "exited", code, reason
            sb.finished_at = time.time()
            sb.exited.set()

    async def fingerprint(self) -> Fingerprint:
        return Fingerprint(name=self.name, available=True)

    def image_refs(self) -> list[str]:
        return self.images.refs() if self.images is not None else []

    async def create(self, spec: SandboxSpec) -> None:
        self.calls.append(("create", spec.sandbox_id))
        if self.images is not None:
            try:
                self.images.resolve(spec.image)
            except ImageNotFound as exc:
                raise ImageUnavailable(spec.image, str(exc)) from None
        if spec.sandbox_id in self.world:
            raise SandboxExists(spec.sandbox_id)
        self.world[spec.sandbox_id] = StandinSandbox(spec)

    async def start(self, sandbox_id: str) -> None:
        self.calls.append(("start", sandbox_id))
        sb = self._get(sandbox_id)
        await asyncio.sleep(self.start_delay)
        if sandbox_id in self.fail_start:
            self.exit_main(sandbox_id, 127, "start_failed")
            raise SandboxStartError(f"sandbox {sandbox_id!r}: exec {sb.spec.command[0]}: nope")
        sb.state, sb.started_at = "running", time.time()

    async def exec(
        self,
        sandbox_id: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tty: bool = False,
        tty_size: tuple[int, int] | None = None,
    ) -> ExecSession:
        sb = self._get(sandbox_id)
        if sb.state != "running":
            raise SandboxNotRunning(sandbox_id)
        if sb.paused:
            raise SandboxPaused(f"sandbox {sandbox_id!r} is paused")
        session = StandinExec(list(argv), tty)
        sb.execs.append(session)
        return session

    async def wait(self, sandbox_id: str) -> int:
        sb = self._get(sandbox_id)
        await sb.exited.wait()
        assert sb.exit_code is not None
        return sb.exit_code

    async def stop(self, sandbox_id: str, grace_seconds: float = 10.0) -> int:
        self.calls.append(("stop", sandbox_id))
        sb = self._get(sandbox_id)
        sb.stops.append(grace_seconds)
        sb.paused = False  # thawed first, as every pausing backend does
        if sb.state == "running":
            self.exit_main(sandbox_id, 0 if sb.traps_term else 143, "stopped")
        return await self.wait(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        self.calls.append(("destroy", sandbox_id))
        sb = self._get(sandbox_id)
        self.exit_main(sandbox_id, 137, "killed")
        for session in sb.execs:  # every process of the sandbox dies with it, as for real
            await session.kill()
        del self.world[sandbox_id]

    async def stats(self, sandbox_id: str) -> SandboxStats:
        self._get(sandbox_id)
        return SandboxStats(cpu_seconds=0.0, memory_bytes=0, memory_peak_bytes=0, pids=1)

    async def state(self, sandbox_id: str) -> SandboxState:
        sb = self._get(sandbox_id)
        state: Any = sb.state
        return SandboxState(
            sandbox_id,
            state,
            sb.exit_code,
            sb.reason,
            sb.started_at,
            sb.finished_at,
            self.ports if sb.state == "running" else (),
            paused=sb.paused,
        )

    supports_pause = True

    async def pause(self, sandbox_id: str) -> None:
        self.calls.append(("pause", sandbox_id))
        sb = self._get(sandbox_id)
        if sb.state != "running":
            raise SandboxNotRunning(sandbox_id)
        sb.paused = True

    async def resume(self, sandbox_id: str) -> None:
        self.calls.append(("resume", sandbox_id))
        sb = self._get(sandbox_id)
        if sb.state != "running":
            raise SandboxNotRunning(sandbox_id)
        sb.paused = False

    async def recover(self) -> list[str]:
        return sorted(sid for sid, sb in self.world.items() if sb.state == "running")

    async def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes,
        *,
        make_parents: bool = False,
        mode: int = 0o644,
    ) -> None:
        sb = self._get(sandbox_id)
        if sb.state != "running":
            raise SandboxNotRunning(sandbox_id)
        self._check(path)
        sb.files[path] = data

    async def read_file(self, sandbox_id: str, path: str, *, max_bytes: int | None = None) -> bytes:
        sb = self._get(sandbox_id)
        if sb.state != "running":
            raise SandboxNotRunning(sandbox_id)
        self._check(path)
        if path not in sb.files:
            raise FileNotFound(path, "no such file", 2)
        data = sb.files[path]
        if max_bytes is not None and len(data) > max_bytes:
            raise FileTooLarge(path, len(data), max_bytes)
        return data

    @staticmethod
    def _check(path: str) -> None:
        if path.startswith("/dir"):
            raise FileIsDirectory(path, "is a directory", 21)
        if path.startswith("/secret"):
            raise FilePermissionDenied(path, "permission denied", 13)
        if path.startswith("/broken"):
            raise FileOperationError(path, "input/output error", 5)

    def log(self, sandbox_id: str, data: bytes, stream: str = "stdout", at: float = 0.0) -> None:
        """Append main-process output (``at``: its time; default now)."""
        sb = self._get(sandbox_id)
        sb.log.append(
            LogChunk(at or time.time(), "stderr" if stream == "stderr" else "stdout", data)
        )
        sb.logged.set()

    def logs(
        self, sandbox_id: str, *, follow: bool = False, since: float | None = None
    ) -> AsyncIterator[LogChunk]:
        """Like a real backend: the log outlives the main process; ``follow`` waits for more."""
        sb = self._get(sandbox_id)

        async def chunks() -> AsyncIterator[LogChunk]:
            self.log_readers += 1
            sent = 0
            try:
                while True:
                    ended = sb.state == "exited"
                    sb.logged.clear()
                    while sent < len(sb.log):
                        chunk = sb.log[sent]
                        sent += 1
                        if since is None or chunk.timestamp >= since:
                            yield chunk
                    if not follow or ended:
                        return
                    waiter = asyncio.ensure_future(sb.logged.wait())
                    exited = asyncio.ensure_future(sb.exited.wait())
                    try:
                        await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        exited.cancel()
            finally:
                self.log_readers -= 1

        return chunks()

    async def close(self) -> None:
        self.calls.append(("close", ""))
