"""``Sandbox.shell``: an interactive terminal (a PTY in the sandbox) over StreamExec (§5).

A terminal differs from ``exec`` in what its user needs: output is one raw byte stream
(stdout and stderr are the same PTY; ANSI sequences must pass untouched, so nothing is
decoded), it is never accumulated (a shell may run for hours), the reader is bounded so a
slow terminal slows the sandbox down instead of filling memory, there is no deadline, and
the window size can change at any time (``resize``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shlex
import sys
from dataclasses import dataclass, field

import grpc

from cwsandbox import _loop
from cwsandbox._error_mapping import sandbox_error
from cwsandbox._exec import pump_stdin
from cwsandbox._exec_stream import READY_WAIT_SECONDS, ExecChannel, Exit
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._operation import OperationRef
from cwsandbox._streams import StreamReader, StreamWriter
from cwsandbox.exceptions import SandboxExecutionError, SandboxNotRunningError

__all__ = ["DEFAULT_SHELL", "TerminalResult", "TerminalSession", "local_terminal_size", "open_tty"]

DEFAULT_SHELL = ("/bin/bash",)
#: Output frames that may wait unread before the sandbox is slowed down.
OUTPUT_FRAMES = 256
#: Exit code reported when the server ended the call without an ``exit`` frame.
NO_EXIT_CODE = -1


@dataclass(frozen=True)
class TerminalResult:
    """How a terminal session ended: its exit code (no output: a terminal keeps none)."""

    returncode: int
    command: list[str] = field(default_factory=list)


def local_terminal_size() -> tuple[int, int] | None:
    """(columns, rows) of the terminal on stdout (or stdin), or None if neither is one."""
    for stream in (sys.stdout, sys.stdin):
        try:
            if stream is not None and stream.isatty():
                size = os.get_terminal_size(stream.fileno())
                return size.columns, size.lines
        except (OSError, ValueError):
            continue
    return None


class TerminalSession(OperationRef[TerminalResult]):
    """A running terminal: ``output`` (raw bytes), ``stdin``, ``resize``; awaitable.

    ``result()`` gives the ``TerminalResult``; ``wait()`` just the exit code.
    """

    def __init__(
        self,
        future: concurrent.futures.Future[TerminalResult],
        command: list[str],
        output: StreamReader[bytes],
        stdin: StreamWriter,
        resize_queue: asyncio.Queue[tuple[int, int] | None],
    ) -> None:
        super().__init__(future)
        self._command = list(command)
        self.output = output
        self.stdin = stdin
        self._resizes = resize_queue

    @property
    def command(self) -> list[str]:
        """The command running on the terminal."""
        return list(self._command)

    @property
    def returncode(self) -> int | None:
        """The exit code once the session has ended, else ``None``."""
        future = self._future
        if not future.done() or future.cancelled() or future.exception() is not None:
            return None
        return future.result().returncode

    def resize(self, width: int, height: int) -> None:
        """Tell the terminal its new size (columns, rows); does not wait."""
        if not (isinstance(width, int) and isinstance(height, int)) or width < 1 or height < 1:
            raise ValueError(f"terminal size must be positive integers, got {width}x{height}")
        if not self._future.done():
            _loop.loop().call_soon_threadsafe(self._resizes.put_nowait, (width, height))

    def wait(self, timeout: float | None = None) -> int:
        """Block until the session ends and return its exit code."""
        return self.result(timeout).returncode

    def cancel(self) -> bool:
        """End the session: the call is cancelled (the server kills the shell)."""
        cancelled = super().cancel()
        if cancelled:
            self.output._end(SandboxExecutionError("the terminal session was cancelled"))
        return cancelled

    def __repr__(self) -> str:
        state = "running" if not self._future.done() else f"returncode={self.returncode}"
        return f"<TerminalSession {shlex.join(self._command)!r} {state}>"


async def _pump_resizes(channel: ExecChannel, queue: asyncio.Queue[tuple[int, int] | None]) -> None:
    with contextlib.suppress(Exception):  # the call ended; the reading side reports why
        await channel.ready.wait()
        while (size := await queue.get()) is not None:
            await channel.resize(*size)


async def _run_tty(
    life: Lifecycle,
    *,
    argv: list[str],
    width: int | None,
    height: int | None,
    connect_timeout: float,
    output: StreamReader[bytes],
    stdin: StreamWriter,
    resizes: asyncio.Queue[tuple[int, int] | None],
) -> TerminalResult:
    channel: ExecChannel | None = None
    tasks: list[asyncio.Task[None]] = []
    failure: BaseException | None = None
    try:
        sid = await life.ensure_running()
        try:
            channel = await ExecChannel.open(
                life.transport,
                sid,
                argv,
                deadline=None,
                connect_timeout=connect_timeout,
                interactive=True,
                tty=True,
                width=width,
                height=height,
            )
            tasks = [
                asyncio.create_task(pump_stdin(channel, stdin)),
                asyncio.create_task(_pump_resizes(channel, resizes)),
            ]
            ready_by = asyncio.get_running_loop().time() + READY_WAIT_SECONDS
            while True:
                event = await channel.next(ready_by)
                if isinstance(event, Exit):
                    code = NO_EXIT_CODE if event.code is None else event.code
                    return TerminalResult(code, list(argv))
                if event.data:
                    # Waits while the reader is full; once it is closed, output is dropped
                    # (the shell keeps running and is never blocked by a reader gone away).
                    await output._put(event.data)
        except grpc.RpcError as err:
            raise sandbox_error(err, operation="shell", sandbox_id=sid) from None
    except BaseException as exc:
        failure = exc
        raise
    finally:
        for task in tasks:
            task.cancel()
        if channel is not None:
            channel.cancel()
        stdin._fail(SandboxNotRunningError("the terminal session has ended"))
        output._end(
            SandboxExecutionError("the terminal session was cancelled")
            if isinstance(failure, asyncio.CancelledError)
            else failure
        )


def open_tty(
    life: Lifecycle,
    argv: list[str],
    *,
    width: int | None,
    height: int | None,
    connect_timeout: float,
) -> TerminalSession:
    """Start ``argv`` on a PTY in the sandbox and return its session at once."""
    output: StreamReader[bytes] = StreamReader(limit=OUTPUT_FRAMES)
    stdin = StreamWriter()
    resizes: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
    future = _loop.submit(
        _run_tty(
            life,
            argv=argv,
            width=width,
            height=height,
            connect_timeout=connect_timeout,
            output=output,
            stdin=stdin,
            resizes=resizes,
        )
    )
    return TerminalSession(future, argv, output, stdin, resizes)
