"""``cwsandbox runners|runner|profiles|profile``: the discovery API on the command line."""

from __future__ import annotations

import click

from cwsandbox._discovery import get_profile, get_runner, list_profiles, list_runners
from cwsandbox.cli import _render
from cwsandbox.cli._app import CliSettings

__all__ = ["COMMANDS"]

_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON instead of a table."
)


def _settings(ctx: click.Context) -> CliSettings:
    obj = ctx.find_object(CliSettings)
    return obj if obj is not None else CliSettings(base_url=None, timeout=None)


@click.command("runners")
@click.option("--group", "runner_group_id", metavar="G", help="Only runners in this runner group.")
@click.option("--profile", "profile_name", metavar="P", help="Only runners offering this profile.")
@click.option("--gpu-type", metavar="T", help="Only runners supporting this GPU type.")
@click.option("--arch", "architecture", metavar="A", help="Only runners of this CPU architecture.")
@click.option("--resources", is_flag=True, help="Include live free capacity.")
@_json_option
@click.pass_context
def runners_command(
    ctx: click.Context,
    *,
    runner_group_id: str | None,
    profile_name: str | None,
    gpu_type: str | None,
    architecture: str | None,
    resources: bool,
    as_json: bool,
) -> None:
    """List registered runners, their size and (with --resources) free capacity."""
    settings = _settings(ctx)
    runners = list_runners(
        runner_group_id=runner_group_id,
        profile_name=profile_name,
        gpu_type=gpu_type,
        architecture=architecture,
        include_resources=resources,
        timeout=settings.timeout,
        base_url=settings.base_url,
    )
    if as_json:
        _render.echo_json([_render.runner_json(r) for r in runners])
    elif not runners:
        click.echo("No runners found.")
    else:
        _render.console().print(_render.runners_table(runners, resources=resources))


@click.command("runner")
@click.argument("runner_id")
@_json_option
@click.pass_context
def runner_command(ctx: click.Context, runner_id: str, as_json: bool) -> None:
    """Show one runner in full, including its free capacity."""
    settings = _settings(ctx)
    runner = get_runner(runner_id, timeout=settings.timeout, base_url=settings.base_url)
    if as_json:
        _render.echo_json(_render.runner_json(runner))
    else:
        _render.console().print(_render.runner_detail(runner))


@click.command("profiles")
@click.option("--runner", "runner_id", metavar="R", help="Only profiles on this runner.")
@click.option("--gpu-type", metavar="T", help="Only profiles supporting this GPU type.")
@click.option("--arch", "architecture", metavar="A", help="Only profiles for this architecture.")
@click.option(
    "--ingress", "ingress_mode", metavar="M", help="Only profiles with this ingress mode."
)
@click.option("--egress", "egress_mode", metavar="M", help="Only profiles with this egress mode.")
@_json_option
@click.pass_context
def profiles_command(
    ctx: click.Context,
    *,
    runner_id: str | None,
    gpu_type: str | None,
    architecture: str | None,
    ingress_mode: str | None,
    egress_mode: str | None,
    as_json: bool,
) -> None:
    """List profiles (one row per runner offering each) with their networking modes."""
    settings = _settings(ctx)
    profiles = list_profiles(
        runner_id=runner_id,
        gpu_type=gpu_type,
        architecture=architecture,
        ingress_mode=ingress_mode,
        egress_mode=egress_mode,
        timeout=settings.timeout,
        base_url=settings.base_url,
    )
    if as_json:
        _render.echo_json([_render.profile_json(p) for p in profiles])
    elif not profiles:
        click.echo("No profiles found.")
    else:
        _render.console().print(_render.profiles_table(profiles))


@click.command("profile")
@click.argument("profile_name")
@click.option("--runner", "runner_id", metavar="R", help="Look the profile up on this runner.")
@_json_option
@click.pass_context
def profile_command(
    ctx: click.Context, profile_name: str, runner_id: str | None, as_json: bool
) -> None:
    """Show one profile; without --runner the server picks a runner that offers it."""
    settings = _settings(ctx)
    profile = get_profile(
        profile_name, runner_id=runner_id, timeout=settings.timeout, base_url=settings.base_url
    )
    if as_json:
        _render.echo_json(_render.profile_json(profile))
    else:
        _render.console().print(_render.profile_detail(profile))


COMMANDS: tuple[click.Command, ...] = (
    runners_command,
    runner_command,
    profiles_command,
    profile_command,
)
