"""The local terminal handling of ``cwsandbox sh``: raw mode and SIGWINCH, on a real pty."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import sys
import termios
import time
from collections.abc import Iterator

import pytest

from cwsandbox.cli._tty import raw_terminal, stdin_is_tty


@pytest.fixture
def pty_stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Replace sys.stdin with the slave side of a fresh pty; yields the slave fd."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "r", closefd=False)
    monkeypatch.setattr(sys, "stdin", stream)
    try:
        yield slave
    finally:
        stream.close()
        os.close(slave)
        os.close(master)


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_raw_mode_is_set_and_restored_and_sigwinch_resizes(pty_stdin: int) -> None:
    assert stdin_is_tty()
    before = termios.tcgetattr(pty_stdin)
    sizes: list[tuple[int, int]] = []
    with raw_terminal(lambda w, h: sizes.append((w, h))):
        raw = termios.tcgetattr(pty_stdin)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO  # keystrokes pass
        assert not raw[3] & termios.ISIG  # Ctrl-C is a byte for the remote shell
        set_size(pty_stdin, 132, 43)
        os.kill(os.getpid(), signal.SIGWINCH)
        time.sleep(0.05)
    assert sizes == [(132, 43)]
    assert termios.tcgetattr(pty_stdin) == before
    assert signal.getsignal(signal.SIGWINCH) in (signal.SIG_DFL, signal.SIG_IGN, None)


def test_restored_even_when_the_session_fails(pty_stdin: int) -> None:
    before = termios.tcgetattr(pty_stdin)
    with pytest.raises(RuntimeError), raw_terminal(None):
        raise RuntimeError("connection lost")
    assert termios.tcgetattr(pty_stdin) == before


def test_not_a_terminal_changes_nothing() -> None:
    if stdin_is_tty():
        pytest.skip("stdin is a terminal here")
    with raw_terminal(lambda w, h: None):
        pass
