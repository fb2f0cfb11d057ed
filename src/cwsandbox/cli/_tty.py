"""The local end of ``cwsandbox sh``/``exec -i``: raw mode, window size, stdin forwarding.

Raw mode hands every keystroke (Ctrl-C, Ctrl-D, arrow keys) to the remote terminal instead
of letting the local one interpret it; it is always restored, however the session ends.
SIGWINCH (the window changed size) becomes a ``resize``. Stdin is read on a daemon thread,
because reading a terminal blocks and the output must keep flowing meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from cwsandbox._streams import StreamWriter

__all__ = ["forward_stdin", "raw_terminal", "stdin_is_tty", "write_out"]

CHUNK = 64 * 1024


def stdin_is_tty() -> bool:
    """Whether stdin is an interactive terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def raw_terminal(on_resize: Callable[[int, int], None] | None) -> Iterator[None]:
    """Put the stdin terminal into raw mode (and follow SIGWINCH) for the block's duration."""
    if not stdin_is_tty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    previous: Any = None
    if on_resize is not None and threading.current_thread() is threading.main_thread():

        def resized(_signum: int, _frame: object) -> None:
            with contextlib.suppress(OSError):
                size = os.get_terminal_size(fd)
                on_resize(size.columns, size.lines)

        previous = signal.signal(signal.SIGWINCH, resized)
    try:
        tty.setraw(fd, termios.TCSANOW)  # keep what was typed before raw mode
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)


def _read_chunk(stream: IO[bytes], interactive: bool) -> bytes:
    if interactive:
        return os.read(stream.fileno(), CHUNK)  # whatever was typed, at once
    read1 = getattr(stream, "read1", None)
    return read1(CHUNK) if callable(read1) else stream.read(CHUNK)


def forward_stdin(writer: StreamWriter) -> threading.Thread:
    """Copy local stdin to ``writer`` on a daemon thread; close it at end of input."""
    stream: IO[bytes] = sys.stdin.buffer
    interactive = stdin_is_tty()

    def run() -> None:
        try:
            while data := _read_chunk(stream, interactive):
                writer.write(data).result()
        except Exception:  # the remote side ended first; nothing left to feed
            return
        with contextlib.suppress(Exception):
            writer.close().result()

    thread = threading.Thread(target=run, name="cwsandbox-stdin", daemon=True)
    thread.start()
    return thread


def write_out(data: bytes, fd: int = 1) -> None:
    """Write bytes to local stdout (fd 1) or stderr (fd 2) and flush at once."""
    stream = sys.stdout if fd == 1 else sys.stderr
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:  # a text-only stream (rare): decode rather than fail
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()
