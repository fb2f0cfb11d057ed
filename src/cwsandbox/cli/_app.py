"""Root click group, shared options and the error contract of the CLI.

Commands: discovery (``runners``, ``runner``, ``profiles``, ``profile``), sandboxes (``ls``,
``run``, ``stop``, ``rm``), commands in them (``exec``, ``sh``), ``logs`` and ``cp``.

Errors are part of the interface: a failure prints one line, ``error: <what went wrong>``,
on stderr and exits 1; usage mistakes exit 2 with click's usage message. No traceback ever
reaches the terminal, because the people reading it want the cause, not our call stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO, Any

import click

from cwsandbox import __version__
from cwsandbox._config import BASE_URL_ENV, CA_FILE_ENV, Endpoint
from cwsandbox.exceptions import CWSandboxError

__all__ = ["CliError", "CliSettings", "cli", "main"]


class CliError(click.ClickException):
    """A runtime failure shown as a single ``error: ...`` line with exit status 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one-line message on stderr (or ``file``)."""
        click.echo(f"error: {self.format_message()}", err=file is None, file=file)


@dataclass(frozen=True)
class CliSettings:
    """Options of the root group that every command needs (stored in ``ctx.obj``)."""

    base_url: str | None
    timeout: float | None


class _Group(click.Group):
    """A group that turns every non-click exception from a command into a ``CliError``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (CWSandboxError, ValueError, TypeError) as err:
            raise CliError(str(err)) from None
        except BrokenPipeError:
            raise click.exceptions.Exit(0) from None
        except Exception as err:
            raise CliError(f"unexpected {type(err).__name__}: {err}") from None


def _validate_base_url(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        Endpoint.parse(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--base-url",
    envvar=BASE_URL_ENV,
    callback=_validate_base_url,
    metavar="URL",
    help=f"Control plane address [env: {BASE_URL_ENV}; default: http://127.0.0.1:50051].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Deadline for each command's requests [default: 30].",
)
@click.option(
    "--ca-file",
    envvar=CA_FILE_ENV,
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    metavar="PEM",
    help=f"CA certificates to trust for an https:// base URL [env: {CA_FILE_ENV}; "
    "default: the system's roots].",
)
@click.version_option(__version__, prog_name="cwsandbox")
@click.pass_context
def cli(
    ctx: click.Context, base_url: str | None, timeout: float | None, ca_file: str | None
) -> None:
    """Discover runners and profiles, and run and manage sandboxes, on a sandboxd control plane.

    Works with any coreweave.sandbox.v1beta2 server. Calls carry $CWSANDBOX_API_KEY.
    """
    if ca_file:
        # The library reads its CA file from the environment at each call; so does the CLI.
        os.environ[CA_FILE_ENV] = ca_file
    ctx.obj = CliSettings(base_url=base_url, timeout=timeout)


def _register_commands() -> None:
    # One module per command family; each exposes ``COMMANDS``.
    from cwsandbox.cli import _cp, _discovery, _events, _exec, _logs, _sandboxes

    for module in (_discovery, _sandboxes, _exec, _logs, _events, _cp):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


def main() -> None:
    """Entry point of the ``cwsandbox`` console script."""
    cli(prog_name="cwsandbox")
