"""``sandboxd runner``: run this host as a runner of a control plane.

Exported as :data:`runner_command` for the top-level ``sandboxd`` click group. The command
exits 0 on SIGTERM/SIGINT (a deliberate stop, e.g. by systemd or Ctrl-C, is not a failure)
and non-zero when the control plane rejects the runner, so supervisors do not restart a runner
whose join token is wrong in a tight loop.

Secrets never come from argv, which every local user can read in ``ps``: the join token is read
from ``--join-token-file`` or ``$SANDBOXD_JOIN_TOKEN``, and only until the runner holds its own
credential (stored in ``--state-dir``).

``--backend local`` (the default when running as root) runs sandboxes on this host; without
root (or with ``--backend none``, or when the local backend's fingerprint finds it cannot
work) the runner still joins and reports its capacity, and its registration says that no
backend works and why, so the control plane places nothing there and says so in its
rejections; a command that reaches it anyway is answered with
``CWSANDBOX_BACKEND_UNAVAILABLE``. A misconfigured host is visible instead of silent.
Sandboxes keep running when the runner stops, and the next start re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from prometheus_client import CollectorRegistry

from sandboxd.allocator import return_large_buffers_to_the_system
from sandboxd.child_processes import children_watched_with_pidfds
from sandboxd.log_format import setup_logging
from sandboxd.metrics_http import MetricsServer, serve_metrics
from sandboxd.runner.agent import NoCredentialError, RunnerAgent, RunnerRejectedError
from sandboxd.runner.capacity import HostReserve
from sandboxd.runner.fingerprint import (
    DISABLED,
    NEEDS_ROOT,
    backend_status,
    unavailable_backend,
)
from sandboxd.runner.limit_options import limit_options
from sandboxd.runner.metrics import RunnerCollector
from sandboxd.runner.settings import (
    DEFAULT_KEEPALIVE_SECONDS,
    RunnerSettings,
    default_state_dir,
)
from sandboxd.startup_heap import freeze_startup_objects
from sandboxd_protocol.sandboxd_v1 import runner_pb2

if TYPE_CHECKING:
    from sandboxd.backends.base import Backend

EXIT_REJECTED = 3
EXIT_USAGE = 2
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
NO_BACKEND = "none"
_log = logging.getLogger(__name__)


def _default_backend() -> str:
    return "local" if os.geteuid() == 0 else NO_BACKEND


def choose_backend(name: str | None) -> tuple[str, list[runner_pb2.BackendStatus]]:
    """The backend to run (``local`` or ``none``) and the ones not run, with why not.

    The reasons reach users in placement rejections ("runner X: no working backend
    (local: needs root)"), so they say what to change.
    """
    if name is None:
        name = _default_backend()
        if name == NO_BACKEND:
            _log.warning("not running as root: no sandbox backend (sandbox commands are refused)")
            return name, [unavailable_backend("local", NEEDS_ROOT)]
    if name == NO_BACKEND:
        return name, [unavailable_backend("local", DISABLED)]
    return name, []


async def _unusable(backend: Backend) -> runner_pb2.BackendStatus | None:
    """Why the backend does not work on this host (e.g. no cgroups), or None when it does."""
    found = await backend.fingerprint()
    if found.available:
        return None
    _log.warning(
        "backend %s is unavailable (%s); no sandbox will be placed on this runner",
        backend.name,
        found.reason,
    )
    return backend_status(found)


async def _run_with_backend(
    settings: RunnerSettings,
    backend: Backend | None,
    unavailable: list[runner_pb2.BackendStatus],
    metrics_listen: str | None = None,
) -> None:
    """Build the agent inside the loop (its backend needs one) and close the backend after.

    A backend that turns out not to work is closed, and reported with its reason instead.
    """
    metrics: MetricsServer | None = None
    try:
        if backend is not None and (status := await _unusable(backend)) is not None:
            await backend.close()
            backend = None
            unavailable = [status, *unavailable]
        agent = RunnerAgent(settings, backend=backend, unavailable_backends=unavailable)
        if metrics_listen:
            registry = CollectorRegistry()
            registry.register(RunnerCollector(agent, asyncio.get_running_loop()))
            metrics = serve_metrics(metrics_listen, {"/metrics": registry})
            _log.info("runner metrics on http://%s/metrics", metrics_listen)
        freeze_startup_objects()
        await _run_until_signalled(agent)
    finally:
        if metrics is not None:
            metrics.close()
        if backend is not None:
            await backend.close()


async def _run_until_signalled(agent: RunnerAgent) -> None:
    """Run the agent; SIGTERM/SIGINT cancel it, which closes the stream and channel cleanly."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(agent.run(), name="runner-agent")
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, task.cancel)
            installed.append(signum)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _check_backend_name(value: str | None) -> str | None:
    from sandboxd.backends import available_backend_names

    known = [*available_backend_names(), NO_BACKEND]
    if value is not None and value not in known:
        raise click.BadParameter(f"{value!r} is not a backend; known: {', '.join(known)}")
    return value


def _refuse_argv_token(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.BadParameter(
            "secrets on the command line are visible to every local user in ps; put the join "
            "token in a file for --join-token-file, or in $SANDBOXD_JOIN_TOKEN",
            param_hint="--join-token",
        )


def read_join_token(path: Path | None) -> str:
    """The join token from ``path`` (surrounding blanks ignored), else from the environment.

    The variable is removed once read, so no child process (a tool, a backend helper)
    inherits it.
    """
    from_env = os.environ.pop("SANDBOXD_JOIN_TOKEN", "").strip()
    if path is None:
        return from_env
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror or exc}", param_hint="--join-token-file"
        ) from exc


@click.command("runner")
@click.option(
    "--control-plane",
    "control_plane",
    envvar="SANDBOXD_CONTROL_PLANE",
    required=True,
    metavar="URL",
    help="Control plane to join: http://host:port, or https://host[:port] for TLS.",
)
@click.option("--runner-id", default=None, help="Runner id (default: persisted in --state-dir).")
@click.option("--group", "group", default="default", show_default=True, help="Runner group id.")
@click.option("--tag", "tags", multiple=True, help="Runner tag; repeat for several.")
@click.option(
    "--join-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding a join token (sandboxd tokens create); needed only until the runner "
    "holds its own credential. Default: $SANDBOXD_JOIN_TOKEN.",
)
@click.option(
    "--join-token",
    "argv_token",
    hidden=True,
    expose_value=False,
    callback=_refuse_argv_token,
    help="Refused: use --join-token-file or SANDBOXD_JOIN_TOKEN.",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="SANDBOXD_CA_FILE",
    default=None,
    help="PEM CA certificates to trust for an https:// control plane (env SANDBOXD_CA_FILE; "
    "default: the system's roots).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where runner state (its id and credential) lives [default: {default_state_dir()}].",
)
@click.option(
    "--backend",
    "backend_name",
    metavar="NAME",
    default=None,
    callback=lambda _ctx, _param, value: _check_backend_name(value),
    help="Sandbox backend: a name from the catalog (`sandboxd backends ls`) or none "
    "[default: local when running as root, else none].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the backend keeps sandboxes and images [default: the state dir].",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.0, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds between heartbeats unless the control plane asks for another interval.",
)
@click.option(
    "--keepalive-interval",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_KEEPALIVE_SECONDS,
    show_default=True,
    help="Seconds between HTTP/2 pings to the control plane, so a silently cut connection "
    "is noticed and redialed; 0 disables them.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, each with this runner's id.",
)
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics (each sandbox's CPU, memory, PIDs, disk) on "
    "http://HOST:PORT/metrics; off unless given.",
)
@limit_options
def runner_command(
    *,
    control_plane: str,
    runner_id: str | None,
    group: str,
    tags: tuple[str, ...],
    join_token_file: Path | None,
    ca_file: Path | None,
    state_dir: Path | None,
    backend_name: str | None,
    data_dir: Path | None,
    heartbeat_interval: float,
    keepalive_interval: float,
    log_level: str,
    reserve_cpu: int | None,
    reserve_memory: int | None,
    max_execs_per_sandbox: int,
    max_concurrent_creates: int,
    egress_blocked: tuple[str, ...],
    metrics_listen: str | None,
    log_format: str,
) -> None:
    """Run this host as a sandboxd runner until SIGTERM or SIGINT."""
    setup_logging(log_level, log_format, runner_id or "")
    try:
        settings = RunnerSettings(
            control_plane=control_plane,
            join_token=read_join_token(join_token_file),
            ca_file=ca_file,
            runner_id=runner_id,
            runner_group_id=group,
            tags=tags,
            state_dir=state_dir if state_dir is not None else default_state_dir(),
            heartbeat_interval=heartbeat_interval,
            keepalive_interval=keepalive_interval or None,
            reserve=HostReserve(cpu_millicores=reserve_cpu, memory_bytes=reserve_memory),
            max_execs_per_sandbox=max_execs_per_sandbox,
            max_concurrent_creates=max_concurrent_creates,
            egress_blocked=egress_blocked,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc

    backend: Backend | None = None
    backend_name, unavailable = choose_backend(backend_name)
    if backend_name != NO_BACKEND:
        from sandboxd.runner.sandboxes import build_runner_backend

        backend = build_runner_backend(
            backend_name, data_dir or settings.state_dir, settings.reserve
        )

    # The agent logs "runner <id> registered with <url> (profiles: ...)" on each registration.
    return_large_buffers_to_the_system()  # file bytes in 1 MiB buffers (allocator.py)
    try:
        with children_watched_with_pidfds():  # host commands per sandbox, no thread each
            asyncio.run(_run_with_backend(settings, backend, unavailable, metrics_listen))
    except RunnerRejectedError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_REJECTED)
    except NoCredentialError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:  # a SIGINT that arrived before the handler was installed
        pass


if __name__ == "__main__":  # `python -m sandboxd.runner.cli`, until `sandboxd runner` is wired
    runner_command()
