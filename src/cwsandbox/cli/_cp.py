"""``cwsandbox cp``: copy one file into or out of a sandbox, streaming (any size).

One side is ``ID:/absolute/path``, the other a local path (or ``-`` for stdin/stdout).
Copies stream in constant memory. A download goes to a temporary file next to the target
and is renamed into place only when complete, so a failed copy never leaves a partial
file behind. As with ``cp``, a target that is a directory receives the file under its
source name.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cwsandbox._sandbox import Sandbox
from cwsandbox.cli._app import CliError
from cwsandbox.cli._common import attach
from cwsandbox.exceptions import SandboxFileError

__all__ = ["COMMANDS", "Location", "parse_location"]

# An id is letters, digits, '.', '_' and '-'; anything with a '/' before the ':' is local.
_REMOTE = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<path>.*)$")


@dataclass(frozen=True)
class Location:
    """One side of a copy: a sandbox path (``sandbox_id`` set) or a local path."""

    path: str
    sandbox_id: str | None = None


def parse_location(text: str) -> Location:
    """``ID:/path`` is in a sandbox; anything else (including ``-``) is local."""
    match = _REMOTE.match(text)
    if match is None:
        return Location(text)
    path = match.group("path")
    if not path.startswith("/"):
        raise click.BadParameter(f"sandbox paths must be absolute, got {text!r}")
    return Location(path, match.group("id"))


class _Meter:
    """Counts bytes as they pass and shows a progress bar (with a total when known)."""

    def __init__(self, enabled: bool, what: str, total: int | None) -> None:
        self._progress: Progress | None = None
        self.done = 0
        self.enabled = enabled
        if enabled:
            console = Console(stderr=True, force_terminal=True)
            self._progress = Progress(
                TextColumn(what),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(what, total=total)
            self._progress.start()

    def add(self, count: int) -> None:
        """Count ``count`` more bytes."""
        self.done += count
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)

    def close(self) -> None:
        """Stop the bar, showing the final size (also when the total was not known)."""
        if self._progress is not None:
            if self._progress.tasks[0].total is None:
                self._progress.update(self._task, total=self.done)
            self._progress.stop()
            self._progress = None


class _CountingReader:
    """A binary file whose reads feed a :class:`_Meter`."""

    def __init__(self, source: BinaryIO, meter: _Meter) -> None:
        self._source = source
        self._meter = meter

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._meter.add(len(data))
        return data


def _upload(sandbox: Sandbox, local: str, remote: str, show: bool = False) -> None:
    if local == "-":
        sandbox.write_file_streaming(remote, sys.stdin.buffer).result()
        return
    if os.path.isdir(local):
        raise CliError(f"{local!r} is a directory; cp copies single files")
    if remote.endswith("/"):
        remote += os.path.basename(local)
    total = os.path.getsize(local)
    meter = _Meter(show, f"{os.path.basename(local)} →", total)
    try:
        try:
            _send(sandbox, local, remote, meter)
        except SandboxFileError as err:
            if err.reason != "CWSANDBOX_FILE_IS_DIRECTORY":
                raise
            meter.done = 0  # the target is a directory: copy into it
            _send(sandbox, local, posixpath.join(remote, os.path.basename(local)), meter)
    finally:
        meter.close()


def _send(sandbox: Sandbox, local: str, remote: str, meter: _Meter) -> None:
    with open(local, "rb") as raw:
        source: Any = _CountingReader(raw, meter) if meter.enabled else raw
        sandbox.write_file_streaming(remote, source).result()


def _download(sandbox: Sandbox, remote: str, local: str, show: bool = False) -> None:
    reader = sandbox.read_file_streaming(remote)
    if show and local != "-":
        reader = _metered(reader, _Meter(True, f"→ {posixpath.basename(remote)}", None))
    if local == "-":
        with contextlib.closing(reader):
            for chunk in reader:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        return
    if os.path.isdir(local):
        local = os.path.join(local, posixpath.basename(remote.rstrip("/")) or "file")
    folder = os.path.dirname(os.path.abspath(local))
    fd, partial = tempfile.mkstemp(prefix=".cwsandbox-cp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, contextlib.closing(reader):
            for chunk in reader:
                out.write(chunk)
        os.replace(partial, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _metered(chunks: Iterator[bytes], meter: _Meter) -> Any:
    """``chunks``, counted into ``meter``, which closes when they run out (or are closed)."""

    def counted() -> Iterator[bytes]:
        try:
            for chunk in chunks:
                meter.add(len(chunk))
                yield chunk
        finally:
            meter.close()
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    return counted()


@click.command("cp")
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: when stderr is a terminal).",
)
@click.pass_context
def cp_command(ctx: click.Context, source: str, target: str, progress: bool | None) -> None:
    """Copy a file between here and a sandbox: `cp ID:/path local` or `cp local ID:/path`."""
    src, dst = parse_location(source), parse_location(target)
    if (src.sandbox_id is None) == (dst.sandbox_id is None):
        raise click.UsageError("exactly one of SRC and DST must be a sandbox path (ID:/path)")
    show = sys.stderr.isatty() if progress is None else progress
    try:
        if dst.sandbox_id is not None:
            _upload(attach(ctx, dst.sandbox_id), src.path, dst.path, show)
        else:
            assert src.sandbox_id is not None
            _download(attach(ctx, src.sandbox_id), src.path, dst.path, show)
    except OSError as err:  # the local side: name the file and the reason, nothing more
        raise CliError(f"{err.filename or 'local file'}: {err.strerror or err}") from None


COMMANDS: tuple[click.Command, ...] = (cp_command,)
