"""``sandboxd sandboxes orphans|adopt|delete``: deciding about sandboxes nobody owns.

Why a command and not an automatic policy: an orphan is a workload a runner holds that this
control plane has no record of (it was started against another or an older database). Only
an operator knows whether it matters, so it is left running until one of these commands
adopts it into an organization or destroys it. Like ``sandboxd keys``, they go through the
admin API with an ``admin`` key (see :mod:`sandboxd.admin_cli`).
"""

from __future__ import annotations

from typing import Any

import click

from sandboxd.admin_cli import _call, _connection_options, _org, _print, _runner_id, _when
from sandboxd_protocol.sandboxd_v1 import admin_pb2

MAX_SANDBOX_ID = 64


def _sandbox_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip() or len(value) > MAX_SANDBOX_ID:
        raise click.BadParameter(
            f"must be a sandbox id of 1 to {MAX_SANDBOX_ID} characters as shown by "
            "sandboxd sandboxes orphans"
        )
    return value


def _orphan_row(orphan: admin_pb2.Orphan) -> dict[str, Any]:
    return {
        "sandbox_id": orphan.sandbox_id,
        "runner_id": orphan.runner_id,
        "phase": orphan.phase,
        "exit_code": orphan.exit_code if orphan.HasField("exit_code") else None,
        "reason": orphan.reason,
        "runner_cluster_id": orphan.runner_cluster_id,
        "first_seen": _when(orphan.first_seen, orphan.HasField("first_seen")),
        "last_seen": _when(orphan.last_seen, orphan.HasField("last_seen")),
    }


@click.group("sandboxes")
def sandboxes_group() -> None:
    """Orphaned sandboxes: list them, adopt one into an organization, or delete one."""


@sandboxes_group.command("orphans")
@_connection_options
@click.option("--runner", "runner_id", default=None, callback=_runner_id, help="Only this runner.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def orphans_ls(ctx: click.Context, runner_id: str | None, as_json: bool) -> None:
    """List sandboxes runners hold that this control plane has no record of.

    They are left running until adopted or deleted.
    """
    request = admin_pb2.ListOrphansRequest(runner_id=runner_id or "")
    response = _call(ctx, "ListOrphans", request, admin_pb2.ListOrphansResponse)
    columns = ["sandbox_id", "runner_id", "phase", "runner_cluster_id", "first_seen", "last_seen"]
    _print([_orphan_row(o) for o in response.orphans], as_json, columns)


@sandboxes_group.command("adopt")
@_connection_options
@click.argument("sandbox_id", callback=_sandbox_id)
@click.option("--org", "organization", required=True, callback=_org, help="Its new owner.")
@click.pass_context
def orphans_adopt(ctx: click.Context, sandbox_id: str, organization: str) -> None:
    """Make an orphan an ordinary sandbox owned by an organization."""
    request = admin_pb2.AdoptOrphanRequest(sandbox_id=sandbox_id, organization=organization)
    response = _call(ctx, "AdoptOrphan", request, admin_pb2.AdoptOrphanResponse)
    click.echo(
        f"adopted {response.sandbox_id} on runner {response.runner_id} "
        f"into organization {response.organization!r}"
    )


@sandboxes_group.command("delete")
@_connection_options
@click.argument("sandbox_id", callback=_sandbox_id)
@click.pass_context
def orphans_delete(ctx: click.Context, sandbox_id: str) -> None:
    """Destroy an orphan on its runner (now, or when the runner next registers)."""
    request = admin_pb2.DeleteOrphanRequest(sandbox_id=sandbox_id)
    response = _call(ctx, "DeleteOrphan", request, admin_pb2.DeleteOrphanResponse)
    if response.confirmed:
        click.echo(f"deleted orphan {sandbox_id} on runner {response.runner_id}")
    else:
        click.echo(
            f"orphan {sandbox_id} will be deleted when runner {response.runner_id} "
            "next registers (it did not confirm now)"
        )
