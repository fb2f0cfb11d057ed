"""The ``sandboxd`` command: run the control plane, runners, or everything at once.

Why click groups from each part: each part owns its own command (``sandboxd.runner.cli``,
``sandboxd.images.cli``) and this module only mounts them, so the top-level CLI never grows
into one long file.
"""

from __future__ import annotations

import os

# gRPC's C core reads this when it is first imported; keep its INFO chatter off our stderr.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# The client's choice of gRPC's transport (measured there), before anything imports grpc.
from cwsandbox import _grpc_transport  # noqa: F401  # isort: skip

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from sandboxd import __version__
from sandboxd.admin_cli import ADMIN_GROUPS, CONFIG_COMMANDS, parse_duration
from sandboxd.allocator import return_large_buffers_to_the_system
from sandboxd.backends_cli import backends_group
from sandboxd.child_processes import children_watched_with_pidfds
from sandboxd.config import ConfigError, PlatformConfig, load_config
from sandboxd.images.cli import images_group
from sandboxd.log_format import setup_logging
from sandboxd.orphans_cli import sandboxes_group
from sandboxd.paths import default_data_dir
from sandboxd.runner.agent import RunnerRejectedError
from sandboxd.runner.cli import EXIT_REJECTED, runner_command
from sandboxd.secrets_cli import secrets_group

DEFAULT_LISTEN = "127.0.0.1:50051"


def load_config_or_exit(path: Path | None) -> PlatformConfig:
    """Load the configuration, or print why it is refused and exit with status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"sandboxd: configuration refused:\n{exc}", err=True)
        raise SystemExit(2) from exc


listen_option = click.option(
    "--listen", default=DEFAULT_LISTEN, show_default=True, help="host:port to serve gRPC on."
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SANDBOXD_DATA_DIR",
    default=default_data_dir,
    show_default="user data directory",
    help="Where state (database, admin key, images) lives; kept 0700.",
)
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Profiles and bindings YAML (default: the embedded configuration).",
)
insecure_option = click.option(
    "--insecure-no-auth",
    is_flag=True,
    default=False,
    help="Accept calls without an API key, every one acting as an administrator. Only for a "
    "machine where every local user may run anything as root.",
)
tls_cert_option = click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM certificate chain: serve TLS only (clients use https://).",
)
tls_key_option = click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM private key of --tls-cert.",
)


EXIT_DATABASE = 4


@contextlib.contextmanager
def refuse_damaged_database() -> Iterator[None]:
    """A damaged, foreign or unreachable database: one line and exit status 4, no traceback.

    Why not start anyway: a control plane on the wrong or a blank database would look
    healthy while it has forgotten every sandbox its runners hold.
    """
    from sandboxd.store.schema import DatabaseProblem

    try:
        yield
    except DatabaseProblem as exc:
        click.echo(f"sandboxd: database refused: {exc}", err=True)
        raise SystemExit(EXIT_DATABASE) from None


def warn_if_insecure(insecure: bool, listen: str) -> None:
    """Say loudly that the API is open, every time such a control plane starts."""
    if insecure:
        click.echo(
            f"sandboxd: WARNING: --insecure-no-auth: anyone who can reach {listen} acts as an "
            "administrator (every sandbox, every API key, exec as root in any sandbox)",
            err=True,
        )


def tls_pair(options: dict[str, object]) -> tuple[Path | None, Path | None]:
    """``--tls-cert`` and ``--tls-key``, which go together."""
    cert: Path | None = options["tls_cert"]  # type: ignore[assignment]
    key: Path | None = options["tls_key"]  # type: ignore[assignment]
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together: give both or neither")
    return cert, key


health_timeout_option = click.option(
    "--health-timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds without a heartbeat before a runner is reported unhealthy.",
)
MAX_RETENTION_SECONDS = 3650 * 86400


def _retention(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return parse_duration(value, 60, MAX_RETENTION_SECONDS)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


retention_option = click.option(
    "--sandbox-retention",
    default="7d",
    show_default=True,
    callback=_retention,
    help="How long records of ended sandboxes stay readable before they are collected: "
    "seconds, or a number with s, m, h or d.",
)


def metrics_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--metrics-listen``: where Prometheus scrapes ``/metrics`` ("off" or "": nowhere)."""
    return click.option(
        "--metrics-listen",
        default=default,
        show_default=True,
        metavar="HOST:PORT",
        help="Serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free port, "
        "printed as SANDBOXD_METRICS_URL); 'off' to serve none.",
    )


tls_ca_option = click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM CA that signed --tls-cert, trusted by the web console (and, for up, the local "
    "runner and the printed CWSANDBOX_CA_FILE); default: --tls-cert itself (self-signed).",
)


def _public_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from sandboxd.console.security import public_url_problem

    if not value:
        return None
    problem = public_url_problem(value)
    if problem is not None:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


def console_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The console's two options: where it is served, and where browsers reach it.

    ``--console-listen`` ("off": nowhere) and ``--console-public-url`` (the address browsers
    use through a TLS-terminating proxy).
    """
    listen = click.option(
        "--console-listen",
        default=default,
        show_default=True,
        metavar="HOST:PORT",
        help="Serve the web console on http://HOST:PORT/ (port 0: any free port, printed as "
        "SANDBOXD_CONSOLE_URL); 'off' to serve none.",
    )
    public = click.option(
        "--console-public-url",
        default=None,
        metavar="URL",
        callback=_public_url,
        help="The console's address as browsers reach it through a TLS-terminating proxy "
        "(e.g. https://sandboxes.example.com): that origin and host are accepted too, and the "
        "session cookie is Secure when it is https.",
    )

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        return listen(public(command))

    return apply


def console_listen(options: dict[str, object]) -> str | None:
    """The ``--console-listen`` value, None when the console is off."""
    value = str(options.get("console_listen") or "").strip()
    return None if value in ("", "off") else value


def metrics_listen(options: dict[str, object]) -> str | None:
    """The ``--metrics-listen`` value, None when metrics are off."""
    value = str(options.get("metrics_listen") or "").strip()
    return None if value in ("", "off") else value


log_level_option = click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
)
log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with the organization, runner and sandbox.",
)


@click.group()
@click.version_option(__version__, prog_name="sandboxd")
def main() -> None:
    """sandboxd: a self-hostable sandbox platform (control plane, runners, sandboxes)."""


@main.command("controlplane")
@listen_option
@data_dir_option
@config_option
@insecure_option
@tls_cert_option
@tls_key_option
@tls_ca_option
@health_timeout_option
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="How often runners are told to send heartbeats, in seconds.",
)
@click.option(
    "--database-url",
    envvar="SANDBOXD_DATABASE_URL",
    default="",
    help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (needs the postgres extra) "
    "[env: SANDBOXD_DATABASE_URL; default: SQLite in DATA_DIR].",
)
@retention_option
@metrics_option("off")
@console_option("off")
@log_level_option
@log_format_option
def controlplane_command(**options: object) -> None:
    """Run the control plane that runners register with and clients talk to."""
    from sandboxd.controlplane.server import ControlPlaneSettings
    from sandboxd.up import serve_control_plane

    setup_logging(str(options["log_level"]), str(options["log_format"]))
    config = load_config_or_exit(options["config_path"])  # type: ignore[arg-type]
    cert, key = tls_pair(options)
    settings = ControlPlaneSettings(
        data_dir=options["data_dir"],  # type: ignore[arg-type]
        config=config,
        listen=str(options["listen"]),
        health_timeout=float(options["health_timeout"]),  # type: ignore[arg-type]
        heartbeat_interval=float(options["heartbeat_interval"]),  # type: ignore[arg-type]
        database_url=str(options["database_url"]),
        insecure_no_auth=bool(options["insecure_no_auth"]),
        tls_cert=cert,
        tls_key=key,
        sandbox_retention_seconds=float(options["sandbox_retention"]),  # type: ignore[arg-type]
        config_path=options["config_path"],  # type: ignore[arg-type]
        metrics_listen=metrics_listen(options),
        console_listen=console_listen(options),
        console_public_url=options["console_public_url"],  # type: ignore[arg-type]
        tls_ca=options["tls_ca"],  # type: ignore[arg-type]
    )
    warn_if_insecure(settings.insecure_no_auth, settings.listen)
    with refuse_damaged_database():
        asyncio.run(serve_control_plane(settings))


@main.command("up")
@listen_option
@data_dir_option
@config_option
@insecure_option
@tls_cert_option
@tls_key_option
@tls_ca_option
@health_timeout_option
@click.option("--runner-id", default=None, help="Id of the local runner (default: persisted).")
@click.option(
    "--runner-link",
    type=click.Choice(["in-process", "grpc"]),
    default="in-process",
    show_default=True,
    help="How the local runner reaches the control plane: handed over in memory, or over "
    "the listening port as a remote runner would (slower; for comparing and testing).",
)
@retention_option
@metrics_option("127.0.0.1:0")
@console_option("127.0.0.1:0")
@log_level_option
@log_format_option
def up_command(**options: object) -> None:
    """Start a control plane and one local runner, ready for clients."""
    from sandboxd.controlplane.server import ControlPlaneSettings
    from sandboxd.up import run_all_in_one

    setup_logging(str(options["log_level"]), str(options["log_format"]))
    config = load_config_or_exit(options["config_path"])  # type: ignore[arg-type]
    data_dir: Path = options["data_dir"]  # type: ignore[assignment]
    cert, key = tls_pair(options)
    if options["tls_ca"] is not None and cert is None:
        raise click.UsageError("--tls-ca needs --tls-cert and --tls-key")
    settings = ControlPlaneSettings(
        data_dir=data_dir,
        config=config,
        listen=str(options["listen"]),
        health_timeout=float(options["health_timeout"]),  # type: ignore[arg-type]
        insecure_no_auth=bool(options["insecure_no_auth"]),
        tls_cert=cert,
        tls_key=key,
        sandbox_retention_seconds=float(options["sandbox_retention"]),  # type: ignore[arg-type]
        config_path=options["config_path"],  # type: ignore[arg-type]
        metrics_listen=metrics_listen(options),
        console_listen=console_listen(options),
        console_public_url=options["console_public_url"],  # type: ignore[arg-type]
        tls_ca=options["tls_ca"],  # type: ignore[arg-type]
    )
    warn_if_insecure(settings.insecure_no_auth, settings.listen)
    runner_id = options["runner_id"]
    ca_file: Path | None = options["tls_ca"] or cert  # type: ignore[assignment]
    return_large_buffers_to_the_system()  # file bytes in 1 MiB buffers (allocator.py)
    try:
        # The local runner runs host commands per sandbox: their exits through pidfds.
        with refuse_damaged_database(), children_watched_with_pidfds():
            asyncio.run(
                run_all_in_one(
                    settings,
                    runner_id=str(runner_id) if runner_id else None,
                    ca_file=ca_file,
                    runner_link=str(options["runner_link"]),
                )
            )
    except RunnerRejectedError as exc:
        click.echo(f"sandboxd: the local runner was refused: {exc}", err=True)
        raise SystemExit(EXIT_REJECTED) from exc


@main.group("config")
def config_group() -> None:
    """Administrator configuration: validate a file, apply it live, show the one in use."""


@config_group.command("validate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def config_validate(path: Path) -> None:
    """Validate a profiles-and-bindings YAML file; exit 2 with the problems if invalid."""
    config = load_config_or_exit(path)
    click.echo(
        f"{path}: ok ({len(config.profiles)} profiles, {len(config.runners)} runners, "
        f"{len(config.default_bindings)} default bindings)"
    )


for _command in CONFIG_COMMANDS:
    config_group.add_command(_command)
main.add_command(runner_command, "runner")
main.add_command(images_group, "images")
main.add_command(backends_group, "backends")
main.add_command(secrets_group, "secrets")
for _group in (*ADMIN_GROUPS, sandboxes_group):
    main.add_command(_group)

if __name__ == "__main__":  # pragma: no cover
    main()
