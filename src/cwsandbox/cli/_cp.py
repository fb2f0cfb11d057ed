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
from dataclasses import dataclass

import click

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


def _upload(sandbox: Sandbox, local: str, remote: str) -> None:
    if local == "-":
        sandbox.write_file_streaming(remote, sys.stdin.buffer).result()
        return
    if os.path.isdir(local):
        raise CliError(f"{local!r} is a directory; cp copies single files")
    if remote.endswith("/"):
        remote += os.path.basename(local)
    try:
        with open(local, "rb") as source:
            sandbox.write_file_streaming(remote, source).result()
    except SandboxFileError as err:
        if err.reason != "CWSANDBOX_FILE_IS_DIRECTORY":
            raise
        with open(local, "rb") as source:  # the target is a directory: copy into it
            target = posixpath.join(remote, os.path.basename(local))
            sandbox.write_file_streaming(target, source).result()


def _download(sandbox: Sandbox, remote: str, local: str) -> None:
    reader = sandbox.read_file_streaming(remote)
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


@click.command("cp")
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@click.pass_context
def cp_command(ctx: click.Context, source: str, target: str) -> None:
    """Copy a file between here and a sandbox: `cp ID:/path local` or `cp local ID:/path`."""
    src, dst = parse_location(source), parse_location(target)
    if (src.sandbox_id is None) == (dst.sandbox_id is None):
        raise click.UsageError("exactly one of SRC and DST must be a sandbox path (ID:/path)")
    try:
        if dst.sandbox_id is not None:
            _upload(attach(ctx, dst.sandbox_id), src.path, dst.path)
        else:
            assert src.sandbox_id is not None
            _download(attach(ctx, src.sandbox_id), src.path, dst.path)
    except OSError as err:  # the local side: name the file and the reason, nothing more
        raise CliError(f"{err.filename or 'local file'}: {err.strerror or err}") from None


COMMANDS: tuple[click.Command, ...] = (cp_command,)
