"""The I/O half of ``Sandbox``: commands, terminals, files and logs.

Kept apart from lifecycle (``_sandbox``) so neither module grows past what one can read in
a sitting. Every method validates its arguments in the caller's thread (so mistakes raise
where they are made), then hands a coroutine to the background loop and returns at once: an
``OperationRef``, a ``Process``/``TerminalSession``, or a ``StreamReader``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable, Sequence
from datetime import datetime
from typing import Any

from cwsandbox import _loop
from cwsandbox._exec import Process, check_command, spawn, with_cwd
from cwsandbox._files import (
    check_contents,
    check_path,
    check_source,
    open_read_stream,
    read_file,
    write_file,
    write_stream,
)
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._logs import LINE_LIMIT, LogRequest, run_logs
from cwsandbox._operation import OperationRef
from cwsandbox._sandbox_state import SandboxState
from cwsandbox._streams import StreamReader
from cwsandbox._terminal import DEFAULT_SHELL, TerminalSession, local_terminal_size, open_tty
from cwsandbox.exceptions import SandboxNotRunningError

__all__ = ["SandboxIOMixin", "positive_seconds"]


def positive_seconds(value: float | None, default: float | None, what: str) -> float | None:
    """``value`` as float seconds (``default`` when None); positive, or ``ValueError``."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _dimension(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


class SandboxIOMixin:
    """``exec``, ``shell``, files and logs of a ``Sandbox`` (needs ``_life`` and friends)."""

    _life: Lifecycle
    _state: SandboxState
    _request_timeout: float

    def _timeout(self, value: float | None) -> float:
        seconds = positive_seconds(value, self._request_timeout, "timeout_seconds")
        assert seconds is not None
        return seconds

    # --- commands ----------------------------------------------------------------------------

    def exec(
        self,
        command: Sequence[str],
        *,
        cwd: str | None = None,
        check: bool = False,
        timeout_seconds: float | None = None,
        stdin: bool = False,
    ) -> Process:
        """Run ``command`` (an argv list) in the sandbox; returns a ``Process`` at once.

        ``process.result()`` (or ``await process``) gives the ``ProcessResult``; with
        ``check=True`` a non-zero exit raises ``SandboxExecutionError``. ``stdin=True``
        gives ``process.stdin`` to write to (close it when done); ``process.stdout`` and
        ``process.stderr`` yield output as it arrives. After ``timeout_seconds`` (default
        ``request_timeout_seconds``) the command is killed and ``SandboxCommandTimeoutError``
        raised. A command killed by signal N exits with 128+N.
        """
        argv = check_command(command)
        with_cwd(argv, cwd)  # validate cwd now
        return spawn(
            self._life,
            argv,
            cwd=cwd,
            check=check,
            timeout=self._timeout(timeout_seconds),
            connect_timeout=self._request_timeout,
            stdin=stdin,
        )

    def shell(
        self,
        command: Sequence[str] | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
    ) -> TerminalSession:
        """Start an interactive terminal (a PTY) running ``command`` (default ``/bin/bash``).

        ``session.output`` yields raw bytes (stdout and stderr together, escape sequences
        intact), ``session.stdin`` takes input, ``session.resize(w, h)`` follows a window
        change, and ``session.wait()`` returns the exit code. Without ``width``/``height``
        the size of the local terminal is used when there is one.
        """
        argv = list(DEFAULT_SHELL) if command is None else check_command(command)
        cols, rows = _dimension(width, "width"), _dimension(height, "height")
        if cols is None and rows is None:
            cols, rows = local_terminal_size() or (None, None)
        return open_tty(
            self._life, argv, width=cols, height=rows, connect_timeout=self._request_timeout
        )

    # --- files ---------------------------------------------------------------------------------

    def read_file(
        self, filepath: str, *, timeout_seconds: float | None = None
    ) -> OperationRef[bytes]:
        """Read a whole file (unary up to 32 MiB, streamed beyond; held in memory).

        ``SandboxFileError`` (with ``.reason`` and ``.filepath``) if it cannot be read,
        including ``CWSANDBOX_FILE_TOO_LARGE`` for a file over 256 MiB: stream those with
        ``read_file_streaming``.
        """
        path = check_path(filepath)
        timeout = self._timeout(timeout_seconds)
        return OperationRef(_loop.submit(read_file(self._life, path, timeout)))

    def write_file(
        self, filepath: str, contents: bytes, *, timeout_seconds: float | None = None
    ) -> OperationRef[None]:
        """Write ``contents`` to a file, replacing it (unary up to 32 MiB, streamed beyond).

        Missing parent directories are created.
        """
        path = check_path(filepath)
        data = check_contents(contents)
        timeout = self._timeout(timeout_seconds)
        return OperationRef(_loop.submit(write_file(self._life, path, data, timeout)))

    def read_file_streaming(
        self, filepath: str, *, timeout_seconds: float | None = None
    ) -> StreamReader[bytes]:
        """Stream a file of any size out of the sandbox as ``bytes`` chunks, in order.

        Memory stays bounded: at most a few MiB wait unread, and a slow reader slows the
        transfer instead. Errors (missing file, a directory, permission denied, a short
        read: ``CWSANDBOX_FILE_TRUNCATED``) are raised by the iteration. ``close()`` the
        reader to stop early. No deadline unless ``timeout_seconds`` is given.
        """
        path = check_path(filepath)
        timeout = positive_seconds(timeout_seconds, None, "timeout_seconds")
        return open_read_stream(self._life, path, timeout)

    def write_file_streaming(
        self,
        filepath: str,
        source: bytes | Iterable[bytes] | AsyncIterable[bytes],
        *,
        timeout_seconds: float | None = None,
    ) -> OperationRef[None]:
        """Stream ``source`` into a file of any size, with constant memory.

        ``source`` is ``bytes``, a binary file object (read 1 MiB at a time), or a sync or
        async iterable of ``bytes`` chunks (pulled only as fast as the sandbox takes them;
        blocking sources on a worker thread). The file is written in place; the written size
        is checked against what was sent. No deadline unless ``timeout_seconds`` is given.
        """
        path = check_path(filepath)
        checked = check_source(source)
        timeout = positive_seconds(timeout_seconds, None, "timeout_seconds")
        return OperationRef(_loop.submit(write_stream(self._life, path, checked, timeout)))

    # --- logs ------------------------------------------------------------------------------------

    def stream_logs(
        self,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        since_time: datetime | None = None,
        timestamps: bool = False,
        timeout_seconds: float | None = None,
    ) -> StreamReader[str]:
        """The main process's output (not exec output) as lines, each ending in a newline.

        ``follow=True`` keeps streaming new lines until the sandbox ends or the reader is
        closed; it needs a sandbox that has not stopped (``SandboxNotRunningError``).
        ``tail_lines`` keeps only the last lines, ``since_time`` only later ones, and
        ``timestamps`` has the server prefix each line with its time. Logs of a stopped
        sandbox stay readable with ``follow=False``.
        """
        if tail_lines is not None and (
            isinstance(tail_lines, bool) or not isinstance(tail_lines, int) or tail_lines < 0
        ):
            raise ValueError(f"tail_lines must be a non-negative integer, got {tail_lines!r}")
        if since_time is not None and not isinstance(since_time, datetime):
            raise TypeError(f"since_time must be a datetime, not {type(since_time).__name__}")
        if follow and self._state.stopping:
            raise SandboxNotRunningError(
                f"sandbox {self._state.sandbox_id} has stopped; its logs cannot be followed "
                "(use follow=False to read them)"
            )
        default = None if follow else self._request_timeout
        request = LogRequest(
            follow=bool(follow),
            tail_lines=tail_lines,
            since_time=since_time,
            timestamps=bool(timestamps),
            timeout=positive_seconds(timeout_seconds, default, "timeout_seconds"),
            connect_timeout=self._request_timeout,
        )
        return _start_logs(self._life, request)


def _start_logs(life: Lifecycle, request: LogRequest) -> StreamReader[str]:
    closing = asyncio.Event()
    box: list[Any] = []

    def close() -> None:
        if request.follow:
            _loop.loop().call_soon_threadsafe(closing.set)  # say ``close``, then finish
        elif box:
            box[0].cancel()

    reader: StreamReader[str] = StreamReader(limit=LINE_LIMIT, on_close=close)
    future = _loop.submit(run_logs(life, request, reader, closing))
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    box.append(future)
    return reader
