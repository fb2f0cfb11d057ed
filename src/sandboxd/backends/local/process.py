"""Runner-side half of exec and of agent requests, on asyncio without extra threads.

Why raw file descriptors with ``loop.add_reader``: an exec is three pipes (or one PTY
master) handed to the agent, so the runner reads and writes the process's own pipes with no
copy through the agent and no subprocess on the runner side. Output is read only while the
consumer keeps up (at most ``HIGH_WATER`` bytes are buffered; then reading pauses and the
process blocks on its pipe), so a slow client never makes the runner buffer without bound.
When the exit code arrives, what the process wrote is already in the pipes: it is read
until the pipe is empty and the stream ends, even if a background child keeps the pipe open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
from collections import deque
from collections.abc import AsyncIterator

from ..base import ExecSession, OutputChunk, Stream
from . import protocol
from .spawn import set_winsize

HIGH_WATER = 1 << 20
READ_SIZE = 1 << 16
KILLED_WITH_SANDBOX = 137  # the agent (PID 1) died: everything in the sandbox got SIGKILL


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_readable(fd: int | socket.socket) -> None:
    """Wait until ``fd`` is readable.

    A socket is watched by its descriptor number. Why: asyncio looks a watched object up
    first, and for one it does not watch yet builds a ``KeyError`` whose message is the
    object's ``repr``, which for a socket asks the kernel for both of its addresses; 13 us
    of every add and remove, several times on each exec's and each warm claim's path.
    """
    if isinstance(fd, socket.socket):
        fd = fd.fileno()
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _resolve, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    """Wait until ``fd`` is writable."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _resolve, fut)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


async def recv(sock: socket.socket) -> tuple[protocol.Message | None, list[int]]:
    """Receive one message from a non-blocking socket."""
    while True:
        try:
            return protocol.recv(sock)
        except BlockingIOError:
            await wait_readable(sock)
        except ConnectionResetError:
            return None, []


async def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to a non-blocking fd."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await wait_writable(fd)
            continue
        view = view[n:]


def connect(path: str) -> socket.socket:
    """A non-blocking connection to an agent (or zygote) socket."""
    sock = protocol.connect(path)
    sock.setblocking(False)
    return sock


async def request(
    path: str, msg: protocol.Message, fds: list[int] | None = None
) -> protocol.Message:
    """One request/one reply on a fresh connection; EOF becomes a ``ConnectionError``."""
    return await reply_to(send_request(path, msg, fds))


def send_request(path: str, msg: protocol.Message, fds: list[int] | None = None) -> socket.socket:
    """Connect and send ``msg`` at once (no await); :func:`reply_to` reads the answer.

    Why split: the peer starts working the moment the request is sent, and a caller with
    work of its own to do meanwhile (a warm claim's records) does it before it waits.
    """
    sock = connect(path)
    try:
        protocol.send(sock, msg, fds or [])
    except BaseException:
        sock.close()
        raise
    return sock


async def reply_to(sock: socket.socket) -> protocol.Message:
    """The one reply on ``sock`` (which it closes); EOF becomes a ``ConnectionError``."""
    try:
        reply, extra = await recv(sock)
    finally:
        sock.close()
    for fd in extra:
        os.close(fd)
    if reply is None:
        raise ConnectionError("agent closed the connection")
    return reply


class LocalExecSession(ExecSession):
    """An exec'd process inside a local sandbox."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        stdin: int,
        outputs: dict[int, Stream],
        tty: bool,
        pid: int | None = None,
    ) -> None:
        self.tty = tty
        self.pid = pid
        self._sock = sock
        self._sock_fd = sock.fileno()  # watched by number (see wait_readable); closed last
        self._stdin: int | None = stdin
        self._outputs = dict(outputs)
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[OutputChunk] = deque()
        self._buffered = 0
        self._paused = False
        self._exited = False
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._wakeup: asyncio.Future[None] | None = None
        for fd in self._outputs:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._pump, fd)
        if stdin >= 0 and stdin not in self._outputs:
            os.set_blocking(stdin, False)
        self._loop.add_reader(self._sock_fd, self._on_control)

    # -- output ----------------------------------------------------------------------------
    def _notify(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _end_stream(self, fd: int) -> None:
        stream = self._outputs.pop(fd, None)
        if stream is None:
            return
        self._loop.remove_reader(fd)
        if fd == self._stdin:
            self._stdin = None
        os.close(fd)

    def _pump(self, fd: int) -> None:
        while fd in self._outputs and self._buffered < HIGH_WATER:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                if self._exited:
                    self._end_stream(fd)  # the process is gone and its output is read
                break
            except OSError as exc:  # EIO: a PTY whose other side is closed
                if exc.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self._end_stream(fd)
                break
            self._chunks.append(OutputChunk(self._outputs[fd], data))
            self._buffered += len(data)
        if self._buffered >= HIGH_WATER and not self._paused:
            self._paused = True
            for out in self._outputs:
                self._loop.remove_reader(out)
        self._notify()

    def _resume(self) -> None:
        if self._paused and self._buffered < HIGH_WATER // 2:
            self._paused = False
            for fd in list(self._outputs):
                self._loop.add_reader(fd, self._pump, fd)
                self._pump(fd)

    def _on_control(self) -> None:
        try:
            msg, fds = protocol.recv(self._sock)
        except BlockingIOError:
            return
        except OSError:
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is not None and "pid" in msg:
            self.pid = msg["pid"]
        if msg is not None and "exit" not in msg:
            return
        self.finish(KILLED_WITH_SANDBOX if msg is None else int(msg["exit"]))

    def finish(self, code: int) -> None:
        """Record the exit code, then read what is left in the pipes and end the streams."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock_fd)
        self._exited = True
        if not self._exit.done():
            self._exit.set_result(code)
        if not self._paused:
            for fd in list(self._outputs):
                self._pump(fd)
        self._notify()

    async def __anext__(self) -> OutputChunk:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk.data)
                self._resume()
                return chunk
            if not self._outputs and self._exited:
                raise StopAsyncIteration
            # Output to come, or (every pipe at its end) the exit code: :meth:`finish` wakes
            # this too, one turn of the event loop sooner than a shield of ``_exit`` would.
            self._wakeup = self._loop.create_future()
            await self._wakeup

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self

    # -- input and control -----------------------------------------------------------------
    async def write_stdin(self, data: bytes) -> None:
        """Write to stdin; silently dropped once the process closed its stdin."""
        if self._stdin is None:
            return
        with contextlib.suppress(BrokenPipeError):
            await write_all(self._stdin, data)

    async def close_stdin(self) -> None:
        """Close the stdin pipe; on a TTY send EOF (^D) instead."""
        if self._stdin is None:
            return
        if self.tty:
            with contextlib.suppress(OSError):
                await write_all(self._stdin, b"\x04")
            return
        os.close(self._stdin)
        self._stdin = None

    async def resize(self, width: int, height: int) -> None:
        """TIOCSWINSZ on the PTY master; the kernel sends SIGWINCH."""
        if self.tty and self._stdin is not None:
            set_winsize(self._stdin, width, height)

    async def wait(self) -> int:
        """The exit code."""
        return await asyncio.shield(self._exit)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Ask the agent to signal the process group."""
        if self._exited:
            return
        with contextlib.suppress(OSError):
            protocol.send(self._sock, {"signal": int(sig)})

    async def close(self) -> None:
        """Kill if still running and release every descriptor."""
        if not self._exited:
            await self.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), 5.0)
        for fd in list(self._outputs):
            self._end_stream(fd)
        if self._stdin is not None:
            os.close(self._stdin)
            self._stdin = None
        if self._sock.fileno() >= 0:  # not closed yet, so the number still names it
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock_fd)
            self._sock.close()
        if not self._exit.done():
            self._exit.set_result(KILLED_WITH_SANDBOX)
        self._exited = True
        self._notify()  # a reader waiting for output or the exit code: the stream is over


async def open_exec(
    socket_path: str,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    tty: bool,
    tty_size: tuple[int, int] | None,
) -> LocalExecSession:
    """Start a process through the agent: hand it three pipes, or get a PTY master back."""
    msg: protocol.Message = {"op": "exec", "argv": argv, "env": env, "cwd": cwd}
    sock = connect(socket_path)
    try:
        if tty:
            protocol.send(sock, msg | {"tty": True, "size": tty_size})
            reply, fds = await recv(sock)
            if reply is None or not fds:
                raise ConnectionError("sandbox ended while starting the exec")
            master = fds[0]
            session = LocalExecSession(
                sock, stdin=master, outputs={master: "stdout"}, tty=True, pid=reply.get("pid")
            )
            if "exit" in reply:
                session.finish(int(reply["exit"]))
            return session
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            protocol.send(sock, msg, [in_r, out_w, err_w])
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        outputs: dict[int, Stream] = {out_r: "stdout", err_r: "stderr"}
        return LocalExecSession(sock, stdin=in_w, outputs=outputs, tty=False)
    except BaseException:
        sock.close()
        raise
