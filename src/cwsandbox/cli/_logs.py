"""``cwsandbox logs``: print (or follow) a sandbox's main-process output."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta

import click

from cwsandbox.cli._common import INTERRUPTED, attach, exit_with

__all__ = ["COMMANDS", "parse_since"]

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """A relative age (``90s``, ``10m``, ``2h``, ``1d``) or an ISO 8601 time, as aware UTC.

    A time without a zone is local time, as a person typing it means it.
    """
    match = _RELATIVE.match(value)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration like 10m nor an ISO 8601 time",
            param_hint="--since",
        ) from None
    return when.astimezone(UTC)


@click.command("logs")
@click.argument("sandbox_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until it ends.")
@click.option("--tail", "tail", type=click.IntRange(min=1), metavar="N", help="Last N lines only.")
@click.option("--since", metavar="TIME", help="Only output after TIME (10m, 2h, or ISO 8601).")
@click.option("--timestamps", "-t", is_flag=True, help="Prefix each line with its time.")
@click.pass_context
def logs_command(
    ctx: click.Context,
    sandbox_id: str,
    *,
    follow: bool,
    tail: int | None,
    since: str | None,
    timestamps: bool,
) -> None:
    """Print the output of a sandbox's main process (exec output is not included)."""
    since_time = parse_since(since) if since is not None else None
    handle = attach(ctx, sandbox_id)
    reader = handle.stream_logs(
        follow=follow, tail_lines=tail, since_time=since_time, timestamps=timestamps
    )
    try:
        for line in reader:
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        reader.close()
        exit_with(INTERRUPTED)


COMMANDS: tuple[click.Command, ...] = (logs_command,)
