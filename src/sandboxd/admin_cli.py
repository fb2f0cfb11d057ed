"""``sandboxd keys|tokens|runners``: administration of a running control plane.

Why through the API and not the database: the control plane caches credentials and must drop a
revoked one at once, and it may run on another machine or on PostgreSQL; going through
``AdminService`` keeps one path for every change. The commands authenticate like any client:
``$CWSANDBOX_API_KEY`` (an ``admin`` key; never a command-line argument, which ``ps`` shows),
``$CWSANDBOX_BASE_URL`` or ``--base-url``, ``$CWSANDBOX_CA_FILE`` or ``--ca-file`` for TLS.

Commands that create a secret print it alone on stdout (``export K=$(sandboxd keys create
...)``), and what it is on stderr. Errors are one ``error: ...`` line and exit status 1; bad
flags exit 2 naming the flag.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cwsandbox.connection import (
    API_KEY_ENV,
    BASE_URL_ENV,
    CA_FILE_ENV,
    open_channel,
    resolve_endpoint,
    unary_call,
)
from sandboxd.controlplane.runner_lifecycle import MAX_DRAIN_SECONDS, MAX_GRACE_SECONDS
from sandboxd.identity.keyformat import PUBLIC_ID_PATTERN
from sandboxd.identity.model import (
    MAX_TOKEN_TTL_SECONDS,
    MAX_TOKEN_USES,
    RUNNER_ID_PATTERN,
    RUNNER_ID_RULE,
    key_name_problem,
    organization_problem,
)
from sandboxd_protocol.sandboxd_v1 import admin_pb2

SERVICE = "/sandboxd.admin.v1.AdminService/"
_META = "sandboxd.admin.connection"
TIMEOUT_SECONDS = 30.0
ResponseT = TypeVar("ResponseT", bound=Message)
ROLE_NAMES = {admin_pb2.ROLE_ADMIN: "admin", admin_pb2.ROLE_MEMBER: "member"}
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DRAIN_POLL_SECONDS = 1.0
_TTL_PATTERN = re.compile(r"^(\d+)([smhd]?)\Z")


class AdminError(click.ClickException):
    """A failed admin call: one ``error: ...`` line, exit status 1."""

    def show(self, file: Any = None) -> None:
        """Print the message on stderr."""
        click.echo(f"error: {self.format_message()}", err=True)


def _call(
    ctx: click.Context,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    service: str = SERVICE,
) -> ResponseT:
    """Call ``<service><method>`` (AdminService by default) with the key in the environment.

    gRPC errors become one line.
    """
    options: dict[str, Any] = ctx.meta.get(_META, {})
    if not os.environ.get(API_KEY_ENV, "").strip():
        raise AdminError(
            f"set {API_KEY_ENV} to an admin API key (sandboxd up prints one; "
            "sandboxd controlplane keeps one in DATA_DIR/admin-key)"
        )
    if options.get("ca_file"):
        os.environ[CA_FILE_ENV] = options["ca_file"]
    try:
        endpoint = resolve_endpoint(options.get("base_url"))
        with open_channel(endpoint) as channel:
            return unary_call(
                channel, service + method, request, response_type, timeout=TIMEOUT_SECONDS
            )
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        details: str = exc.details() or code.name
        if code is grpc.StatusCode.UNAVAILABLE:
            details = f"cannot reach the control plane at {endpoint.base_url}: {details}"
        raise AdminError(details) from None


def _connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--base-url`` and ``--ca-file`` on a command; kept in ``ctx.meta`` for :func:`_call`."""

    @functools.wraps(command)
    def run(*args: Any, base_url: str | None, ca_file: str | None, **kwargs: Any) -> Any:
        click.get_current_context().meta[_META] = {"base_url": base_url, "ca_file": ca_file}
        return command(*args, **kwargs)

    run = click.option(
        "--ca-file",
        envvar=CA_FILE_ENV,
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help=f"CA certificates for an https:// control plane [env: {CA_FILE_ENV}].",
    )(run)
    return click.option(
        "--base-url",
        envvar=BASE_URL_ENV,
        default=None,
        metavar="URL",
        help=f"Control plane [env: {BASE_URL_ENV}; default: http://127.0.0.1:50051].",
    )(run)


def _when(stamp: Timestamp, set_: bool) -> str:
    if not set_:
        return ""
    return stamp.ToDatetime().replace(microsecond=0).isoformat() + "Z"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _public_id(what: str) -> Callable[[click.Context, click.Parameter, str], str]:
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        if not PUBLIC_ID_PATTERN.match(value):
            raise click.BadParameter(f"must be 16 hex digits as shown by {what} (got {value!r})")
        return value

    return check


def _org(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    problem = organization_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


def _optional_org(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return _org(ctx, param, value) if value else value


def _name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    problem = key_name_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


def _runner_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not RUNNER_ID_PATTERN.match(value):
        raise click.BadParameter(RUNNER_ID_RULE)
    return value


def parse_duration(text: str, least: int, most: int) -> int:
    """Seconds in ``3600``, ``90m``, ``24h`` or ``7d``, within ``[least, most]``.

    ValueError saying what is allowed otherwise.
    """
    match = _TTL_PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use seconds or a number with s, m, h or d")
    seconds = int(match.group(1)) * _TTL_UNITS[match.group(2) or "s"]
    if not least <= seconds <= most:
        raise ValueError(f"must be between {_span(least)} and {_span(most)}")
    return seconds


def _span(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}" if seconds != size else f"1 {unit[:-1]}"
    return f"{seconds} seconds" if seconds != 1 else "1 second"


def parse_ttl(text: str) -> int:
    """A join token's lifetime: a duration of 1 second to the longest allowed."""
    return parse_duration(text, 1, MAX_TOKEN_TTL_SECONDS)


def _ttl(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return parse_ttl(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _key_row(key: admin_pb2.ApiKey) -> dict[str, str]:
    return {
        "key_id": key.key_id,
        "organization": key.organization,
        "role": ROLE_NAMES.get(key.role, "unknown"),
        "name": key.name,
        "created_at": _when(key.created_at, key.HasField("created_at")),
        "revoked_at": _when(key.revoked_at, key.HasField("revoked_at")),
    }


def _token_row(token: admin_pb2.JoinToken) -> dict[str, Any]:
    return {
        "token_id": token.token_id,
        "runner_group_id": token.runner_group_id,
        "runner_id": token.runner_id,
        "uses": token.uses,
        "max_uses": token.max_uses,
        "created_at": _when(token.created_at, token.HasField("created_at")),
        "expires_at": _when(token.expires_at, token.HasField("expires_at")),
        "revoked_at": _when(token.revoked_at, token.HasField("revoked_at")),
    }


def _credential_row(credential: admin_pb2.RunnerCredential) -> dict[str, str]:
    return {
        "runner_id": credential.runner_id,
        "credential_id": credential.credential_id,
        "runner_group_id": credential.runner_group_id,
        "token_id": credential.token_id,
        "created_at": _when(credential.created_at, credential.HasField("created_at")),
        "revoked_at": _when(credential.revoked_at, credential.HasField("revoked_at")),
    }


def _print(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table([[str(r[c]) for c in columns] for r in rows], [c.upper() for c in columns])


# -- keys -----------------------------------------------------------------------------------


@click.group("keys")
def keys_group() -> None:
    """API keys: each belongs to one organization and is an admin or a member key."""


@keys_group.command("create")
@_connection_options
@click.option("--org", "organization", required=True, callback=_org, help="Organization.")
@click.option(
    "--role",
    type=click.Choice(["admin", "member"]),
    default="member",
    show_default=True,
    help="admin: every organization's sandboxes and these commands; member: its own only.",
)
@click.option("--name", default="", callback=_name, help="Label shown by keys ls.")
@click.pass_context
def keys_create(ctx: click.Context, organization: str, role: str, name: str) -> None:
    """Create a key and print it alone on stdout (it is shown only once)."""
    request = admin_pb2.CreateApiKeyRequest(
        organization=organization,
        role=admin_pb2.ROLE_ADMIN if role == "admin" else admin_pb2.ROLE_MEMBER,
        name=name,
    )
    response = _call(ctx, "CreateApiKey", request, admin_pb2.CreateApiKeyResponse)
    click.echo(
        f"created {role} key {response.key.key_id} for organization {organization!r}", err=True
    )
    click.echo(response.secret)


@keys_group.command("ls")
@_connection_options
@click.option(
    "--org", "organization", default="", callback=_optional_org, help="Only this organization."
)
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def keys_ls(ctx: click.Context, organization: str, include_revoked: bool, as_json: bool) -> None:
    """List keys (never their secrets)."""
    request = admin_pb2.ListApiKeysRequest(
        organization=organization, include_revoked=include_revoked
    )
    response = _call(ctx, "ListApiKeys", request, admin_pb2.ListApiKeysResponse)
    columns = ["key_id", "organization", "role", "name", "created_at"]
    _print([_key_row(k) for k in response.keys], as_json, [*columns, "revoked_at"])


@keys_group.command("revoke")
@_connection_options
@click.argument("key_id", callback=_public_id("sandboxd keys ls"))
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key: the next call made with it is refused."""
    request = admin_pb2.RevokeApiKeyRequest(key_id=key_id)
    response = _call(ctx, "RevokeApiKey", request, admin_pb2.RevokeApiKeyResponse)
    click.echo(f"revoked key {response.key.key_id} of {response.key.organization!r}")


# -- join tokens ----------------------------------------------------------------------------


@click.group("tokens")
def tokens_group() -> None:
    """Join tokens: a new runner trades one for its own credential."""


@tokens_group.command("create")
@_connection_options
@click.option("--group", "runner_group_id", default="", help="Runner group joiners are put in.")
@click.option(
    "--uses",
    type=click.IntRange(1, MAX_TOKEN_USES),
    default=1,
    show_default=True,
    help="How many runners may join with it.",
)
@click.option(
    "--ttl",
    default="1h",
    show_default=True,
    callback=_ttl,
    help="How long it stays valid: seconds, or a number with s, m, h or d.",
)
@click.option(
    "--runner-id",
    default=None,
    callback=_runner_id,
    help="Only this runner id may use it; it may also replace that id's lost or revoked "
    "credential.",
)
@click.pass_context
def tokens_create(
    ctx: click.Context, runner_group_id: str, uses: int, ttl: int, runner_id: str | None
) -> None:
    """Create a join token and print it alone on stdout (it is shown only once)."""
    if runner_group_id and not RUNNER_ID_PATTERN.match(runner_group_id):
        raise click.BadParameter(RUNNER_ID_RULE, param_hint="--group")
    request = admin_pb2.CreateJoinTokenRequest(
        runner_group_id=runner_group_id,
        runner_id=runner_id or "",
        max_uses=uses,
        ttl_seconds=ttl,
    )
    response = _call(ctx, "CreateJoinToken", request, admin_pb2.CreateJoinTokenResponse)
    token = response.token
    expires = _when(token.expires_at, True)
    click.echo(f"created join token {token.token_id} ({uses} use(s), expires {expires})", err=True)
    click.echo(response.secret)


@tokens_group.command("ls")
@_connection_options
@click.option("--all", "include_spent", is_flag=True, help="Include used, expired, revoked.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def tokens_ls(ctx: click.Context, include_spent: bool, as_json: bool) -> None:
    """List join tokens (never their secrets)."""
    request = admin_pb2.ListJoinTokensRequest(include_spent=include_spent)
    response = _call(ctx, "ListJoinTokens", request, admin_pb2.ListJoinTokensResponse)
    columns = ["token_id", "runner_group_id", "runner_id", "uses", "max_uses", "expires_at"]
    _print([_token_row(t) for t in response.tokens], as_json, [*columns, "revoked_at"])


@tokens_group.command("revoke")
@_connection_options
@click.argument("token_id", callback=_public_id("sandboxd tokens ls"))
@click.pass_context
def tokens_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a join token (runners that already joined keep their credentials)."""
    request = admin_pb2.RevokeJoinTokenRequest(token_id=token_id)
    _call(ctx, "RevokeJoinToken", request, admin_pb2.RevokeJoinTokenResponse)
    click.echo(f"revoked join token {token_id}")


# -- runner credentials ---------------------------------------------------------------------


@click.group("runners")
def runners_group() -> None:
    """Runners: credentials, revocation, cordon, drain, uncordon, remove."""


@runners_group.command("ls")
@_connection_options
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked runners.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def runners_ls(ctx: click.Context, include_revoked: bool, as_json: bool) -> None:
    """List the runners that hold a credential."""
    request = admin_pb2.ListRunnerCredentialsRequest(include_revoked=include_revoked)
    response = _call(ctx, "ListRunnerCredentials", request, admin_pb2.ListRunnerCredentialsResponse)
    columns = ["runner_id", "credential_id", "runner_group_id", "token_id", "created_at"]
    rows = [_credential_row(c) for c in response.credentials]
    _print(rows, as_json, [*columns, "revoked_at"])


@runners_group.command("revoke")
@_connection_options
@click.argument("runner_id", callback=_runner_id)
@click.pass_context
def runners_revoke(ctx: click.Context, runner_id: str) -> None:
    """Revoke a runner: it is disconnected, cannot register again, its sandboxes fail."""
    request = admin_pb2.RevokeRunnerRequest(runner_id=runner_id)
    response = _call(ctx, "RevokeRunner", request, admin_pb2.RevokeRunnerResponse)
    click.echo(
        f"revoked runner {runner_id} ({response.failed_sandboxes} live sandbox(es) marked failed)"
    )


def _lifecycle_line(state: admin_pb2.RunnerLifecycle) -> str:
    if state.draining:
        deadline = state.drain_deadline.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
        where = f"draining (sandboxes still running at {deadline} are stopped)"
    else:
        where = "cordoned" if state.cordoned else "schedulable"
    health = "healthy" if state.healthy else "not connected"
    line = f"runner {state.runner_id}: {where}, {health}, {state.live_sandboxes} sandbox(es)"
    return line + _start_failures(state)


def _start_failures(state: admin_pb2.RunnerLifecycle) -> str:
    """``; backed off until ... after N failed starts (last: ...)``, or nothing."""
    if not state.failed_starts:
        return ""
    said = f"{state.failed_starts} failed start(s) in a row (last: {state.last_start_failure})"
    if not state.HasField("backed_off_until"):
        return f"; {said}"
    until = state.backed_off_until.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
    return f"; placement skips it until {until} after {said}"


def _lifecycle_call(ctx: click.Context, method: str, request: Message) -> admin_pb2.RunnerLifecycle:
    return _call(ctx, method, request, admin_pb2.RunnerLifecycle)


@runners_group.command("cordon")
@_connection_options
@click.argument("runner_id", callback=_runner_id)
@click.pass_context
def runners_cordon(ctx: click.Context, runner_id: str) -> None:
    """Place no new sandboxes on a runner; those it has keep running."""
    state = _lifecycle_call(ctx, "CordonRunner", admin_pb2.CordonRunnerRequest(runner_id=runner_id))
    click.echo(_lifecycle_line(state))


@runners_group.command("uncordon")
@_connection_options
@click.argument("runner_id", callback=_runner_id)
@click.pass_context
def runners_uncordon(ctx: click.Context, runner_id: str) -> None:
    """Let placement pick a runner again (ends a drain; nothing more is stopped)."""
    request = admin_pb2.UncordonRunnerRequest(runner_id=runner_id)
    click.echo(_lifecycle_line(_lifecycle_call(ctx, "UncordonRunner", request)))


@runners_group.command("status")
@_connection_options
@click.argument("runner_id", callback=_runner_id)
@click.pass_context
def runners_status(ctx: click.Context, runner_id: str) -> None:
    """Whether a runner is cordoned or draining, and how many sandboxes it holds."""
    request = admin_pb2.GetRunnerLifecycleRequest(runner_id=runner_id)
    click.echo(_lifecycle_line(_lifecycle_call(ctx, "GetRunnerLifecycle", request)))


def _duration(least: int, most: int) -> Callable[[click.Context, click.Parameter, str], int]:
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
        try:
            return parse_duration(value, least, most)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return check


@runners_group.command("drain")
@_connection_options
@click.argument("runner_id", callback=_runner_id)
@click.option(
    "--deadline",
    default="0",
    callback=_duration(0, MAX_DRAIN_SECONDS),
    help="How long its sandboxes may run on before they are stopped: 0 (now), 90s, 30m, 2h.",
)
@click.option(
    "--grace",
    default="10",
    callback=_duration(0, MAX_GRACE_SECONDS),
    help="Seconds each stop waits between SIGTERM and SIGKILL (default 10).",
)
@click.option("--no-wait", is_flag=True, help="Start the drain and return at once.")
@click.pass_context
def runners_drain(
    ctx: click.Context, runner_id: str, deadline: int, grace: int, no_wait: bool
) -> None:
    """Cordon a runner and stop its sandboxes that still run at the deadline.

    Waits, printing progress, until the runner holds no sandbox (Ctrl-C stops waiting, not
    the drain: the control plane carries it on, across its own restarts too).
    """
    request = admin_pb2.DrainRunnerRequest(
        runner_id=runner_id, deadline_seconds=deadline, grace_seconds=grace
    )
    state = _lifecycle_call(ctx, "DrainRunner", request)
    click.echo(_lifecycle_line(state))
    shown = state.live_sandboxes
    get = admin_pb2.GetRunnerLifecycleRequest(runner_id=runner_id)
    while not no_wait and state.live_sandboxes > 0:
        time.sleep(DRAIN_POLL_SECONDS)
        state = _lifecycle_call(ctx, "GetRunnerLifecycle", get)
        if state.live_sandboxes != shown:
            shown = state.live_sandboxes
            click.echo(f"runner {runner_id}: {shown} sandbox(es) left")
    if not no_wait:
        click.echo(f"runner {runner_id} drained (it stays cordoned until uncordoned)")


@runners_group.command("remove")
@_connection_options
@click.argument("runner_id", callback=_runner_id)
@click.option(
    "--fail-sandboxes",
    is_flag=True,
    help="Mark its sandboxes that did not end FAILED (otherwise such a runner is not removed).",
)
@click.pass_context
def runners_remove(ctx: click.Context, runner_id: str, fail_sandboxes: bool) -> None:
    """Forget a runner that is gone: it leaves discovery and placement."""
    request = admin_pb2.RemoveRunnerRequest(runner_id=runner_id, fail_sandboxes=fail_sandboxes)
    response = _call(ctx, "RemoveRunner", request, admin_pb2.RemoveRunnerResponse)
    click.echo(
        f"removed runner {runner_id} ({response.failed_sandboxes} sandbox(es) marked failed)"
    )


@click.command("apply")
@_connection_options
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def config_apply(ctx: click.Context, path: Path) -> None:
    """Apply a configuration file to the running control plane, without a restart.

    Validated exactly as at start-up; all of it takes effect for the next Start, or (with
    every problem and its line printed) none of it. Running sandboxes keep their limits.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError(f"cannot read {path}: {exc}") from None
    request = admin_pb2.ApplyConfigRequest(text=text, source=str(path))
    response = _call(ctx, "ApplyConfig", request, admin_pb2.ApplyConfigResponse)
    click.echo(
        f"{path}: applied as revision {response.revision.revision} ({response.profiles} "
        f"profiles, {response.runner_entries} runners, {response.default_bindings} default "
        f"bindings; {response.runners_told} connected runner(s) told)"
    )


@click.command("show")
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="Revision, source and time as JSON too.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the configuration the control plane uses now (its YAML)."""
    revision = _call(ctx, "GetConfig", admin_pb2.GetConfigRequest(), admin_pb2.ConfigRevision)
    applied = _when(revision.applied_at, revision.HasField("applied_at"))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "revision": revision.revision,
                    "source": revision.source,
                    "applied_at": applied,
                    "text": revision.text,
                },
                indent=2,
            )
        )
        return
    when = f", applied {applied}" if applied else ""
    click.echo(f"# revision {revision.revision} from {revision.source}{when}")
    click.echo(revision.text, nl=not revision.text.endswith("\n"))


ADMIN_GROUPS = (keys_group, tokens_group, runners_group)
CONFIG_COMMANDS = (config_apply, config_show)
