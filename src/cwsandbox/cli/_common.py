"""What the sandbox commands share: settings, looking a sandbox up, and exit conventions.

A sandbox that does not exist is the most common mistake on the command line, so it gets
its own plain message (``error: sandbox 'x' not found``) instead of the RPC's wording.
Commands that relay a remote program (``exec``, ``sh``) exit with its exit code; an
interrupt (Ctrl-C) exits 130 like a shell does.
"""

from __future__ import annotations

from typing import NoReturn

import click

from cwsandbox._sandbox import Sandbox
from cwsandbox.cli._app import CliError, CliSettings
from cwsandbox.exceptions import SandboxNotFoundError

__all__ = ["INTERRUPTED", "attach", "exit_with", "json_option", "not_found", "settings"]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def settings(ctx: click.Context) -> CliSettings:
    """The root group's options (defaults when a command is invoked on its own)."""
    obj = ctx.find_object(CliSettings)
    return obj if obj is not None else CliSettings(base_url=None, timeout=None)


def not_found(sandbox_id: str) -> CliError:
    """The one-line error for an unknown sandbox id."""
    return CliError(f"sandbox {sandbox_id!r} not found")


def attach(ctx: click.Context, sandbox_id: str) -> Sandbox:
    """A handle for an existing sandbox (one Get), or the not-found error."""
    opts = settings(ctx)
    try:
        return Sandbox.from_id(
            sandbox_id, base_url=opts.base_url, timeout_seconds=opts.timeout
        ).result()
    except SandboxNotFoundError:
        raise not_found(sandbox_id) from None


def exit_with(code: int) -> NoReturn:
    """End the command with ``code`` (a remote program's exit code, or 130)."""
    raise click.exceptions.Exit(code)
