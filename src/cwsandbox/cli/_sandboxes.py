"""``cwsandbox ls|run|stop|rm``: sandboxes as things to list, create and remove."""

from __future__ import annotations

import click

from cwsandbox import _loop
from cwsandbox._network import NetworkOptions
from cwsandbox._operation import OperationRef
from cwsandbox._sandbox import Sandbox
from cwsandbox.cli import _render
from cwsandbox.cli._app import CliError
from cwsandbox.cli._common import json_option, not_found, settings
from cwsandbox.cli._render_sandboxes import sandbox_json, sandboxes_table
from cwsandbox.exceptions import CWSandboxError, SandboxNotFoundError

__all__ = ["COMMANDS"]

_STATUSES = ("running", "pending", "creating", "paused", "terminating", "completed", "failed",
             "terminated")  # fmt: skip


@click.command("ls")
@click.option("--tag", "tags", multiple=True, metavar="T", help="Only sandboxes with this tag.")
@click.option("--status", type=click.Choice(_STATUSES), help="Only sandboxes in this status.")
@click.option("--all", "-a", "show_all", is_flag=True, help="Include stopped sandboxes.")
@json_option
@click.pass_context
def ls_command(
    ctx: click.Context, tags: tuple[str, ...], status: str | None, show_all: bool, as_json: bool
) -> None:
    """List sandboxes (running ones unless --all or a stopped --status)."""
    opts = settings(ctx)
    sandboxes = Sandbox.list(
        tags=list(tags) or None,
        status=status,
        include_stopped=show_all,
        base_url=opts.base_url,
        timeout_seconds=opts.timeout,
    ).result()
    if as_json:
        _render.echo_json([sandbox_json(sb) for sb in sandboxes])
    elif not sandboxes:
        click.echo("No sandboxes found.")
    else:
        _render.console().print(sandboxes_table(sandboxes))


def _env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--env")
        env[key] = value
    return env


@click.command("run")
@click.option("--profile", "profiles", multiple=True, metavar="P", help="Run on this profile.")
@click.option("--image", metavar="I", help="Container image [default: python:3.11].")
@click.option("--tag", "tags", multiple=True, metavar="T", help="Tag the sandbox (repeatable).")
@click.option("--env", "env", multiple=True, metavar="K=V", help="Environment variable.")
@click.option("--egress", metavar="M", help="Egress mode, e.g. none or internet.")
@click.option("--port", "ports", multiple=True, type=click.IntRange(1, 65535), metavar="N",
              help="Expose this container port (repeatable).")  # fmt: skip
@click.option("--lifetime", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop the sandbox after this long.")  # fmt: skip
@click.option("--no-wait", is_flag=True, help="Print the id without waiting for RUNNING.")
@json_option
@click.argument("command", nargs=-1, metavar="[-- CMD...]")
@click.pass_context
def run_command(
    ctx: click.Context,
    *,
    profiles: tuple[str, ...],
    image: str | None,
    tags: tuple[str, ...],
    env: tuple[str, ...],
    egress: str | None,
    ports: tuple[int, ...],
    lifetime: float | None,
    no_wait: bool,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Start a sandbox (running CMD, or staying alive until stopped) and print its id."""
    opts = settings(ctx)
    network = None
    if egress or ports:
        network = NetworkOptions(egress_mode=egress, exposed_ports=tuple(ports) or None)
    sandbox = Sandbox(
        command=command[0] if command else None,
        args=list(command[1:]) if command else None,
        container_image=image,
        tags=list(tags) or None,
        profile_names=list(profiles) or None,
        environment_variables=_env(env) or None,
        network=network,
        max_lifetime_seconds=lifetime,
        base_url=opts.base_url,
        request_timeout_seconds=opts.timeout,
    )
    sandbox.start().result()
    if not no_wait:
        sandbox.wait()
    if as_json:
        _render.echo_json(sandbox_json(sandbox))
    else:
        click.echo(sandbox.sandbox_id)


def _each(ids: tuple[str, ...], refs: list[OperationRef[None]], verb: str) -> None:
    """Report every id (its own line) and fail once at the end if any failed."""
    failed = 0
    for sid, ref in zip(ids, refs, strict=True):
        try:
            ref.result()
        except SandboxNotFoundError:
            click.echo(f"error: {not_found(sid).message}", err=True)
            failed += 1
        except CliError as err:
            click.echo(f"error: {err.message}", err=True)
            failed += 1
        except CWSandboxError as err:
            click.echo(f"error: could not {verb} {sid}: {err}", err=True)
            failed += 1
        else:
            click.echo(sid)
    if failed:
        raise click.exceptions.Exit(1)


@click.command("stop")
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              metavar="S", help="Seconds the main process gets to exit cleanly.")  # fmt: skip
@click.pass_context
def stop_command(ctx: click.Context, sandbox_ids: tuple[str, ...], grace: float) -> None:
    """Stop sandboxes and wait until they have ended (each id printed when done)."""

    async def stop_one(sid: str) -> None:
        handle = await _attach_async(ctx, sid)
        await handle.stop(graceful_shutdown_seconds=grace)

    _each(sandbox_ids, [OperationRef(_loop.submit(stop_one(s))) for s in sandbox_ids], "stop")


async def _attach_async(ctx: click.Context, sandbox_id: str) -> Sandbox:
    opts = settings(ctx)
    return await Sandbox.from_id(sandbox_id, base_url=opts.base_url, timeout_seconds=opts.timeout)


@click.command("rm")
@click.argument("sandbox_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--force", "-f", is_flag=True, help="Also remove running sandboxes (killing them).")
@click.pass_context
def rm_command(ctx: click.Context, sandbox_ids: tuple[str, ...], force: bool) -> None:
    """Delete sandboxes; a running one needs --force (or a `stop` first)."""
    opts = settings(ctx)

    async def remove(sid: str) -> None:
        if not force:
            handle = await _attach_async(ctx, sid)
            status = handle.status
            if status is None or not status.is_terminal:
                raise CliError(f"sandbox {sid} is {status}; stop it first or use --force")
        await Sandbox.delete(
            sid, base_url=opts.base_url, timeout_seconds=opts.timeout, missing_ok=force
        )

    _each(sandbox_ids, [OperationRef(_loop.submit(remove(s))) for s in sandbox_ids], "remove")


COMMANDS: tuple[click.Command, ...] = (ls_command, run_command, stop_command, rm_command)
