"""``cwsandbox events``: a sandbox's activity trail (lifecycle, execs, files, connections)."""

from __future__ import annotations

import json
import sys

import click

from cwsandbox._events import SandboxEvent, iter_events
from cwsandbox.cli._common import INTERRUPTED, exit_with, json_option, not_found, settings
from cwsandbox.exceptions import SandboxNotFoundError

__all__ = ["COMMANDS", "describe"]


def describe(event: SandboxEvent) -> str:
    """One line: time, kind, who, then the details as key=value."""
    when = event.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    details = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(event.data.items()))
    return f"{when}  {event.kind:<16} {event.actor:<24} {details}".rstrip()


@click.command("events")
@click.argument("sandbox_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they happen.")
@json_option
@click.pass_context
def events_command(ctx: click.Context, sandbox_id: str, *, follow: bool, as_json: bool) -> None:
    """Print what happened to a sandbox: lifecycle, execs, files, outbound connections.

    Written by the control plane and the sandbox's runner, never by the sandbox, and kept
    after it is deleted for the platform's retention period. ``--json`` prints one JSON
    object per line.
    """
    opts = settings(ctx)
    events = iter_events(
        sandbox_id, follow=follow, base_url=opts.base_url, timeout=None if follow else opts.timeout
    )
    try:
        for event in events:
            line = json.dumps(event.as_json(), sort_keys=True) if as_json else describe(event)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except SandboxNotFoundError:
        raise not_found(sandbox_id) from None
    except KeyboardInterrupt:
        exit_with(INTERRUPTED)


COMMANDS: tuple[click.Command, ...] = (events_command,)
