"""Sandboxes as a table for people or JSON for programs (``ls``, ``run``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from cwsandbox._sandbox import Sandbox
from cwsandbox._status import SandboxStatus

__all__ = ["age", "sandbox_json", "sandboxes_table"]

_STYLES = {
    SandboxStatus.RUNNING: "green",
    SandboxStatus.COMPLETED: "dim",
    SandboxStatus.FAILED: "red",
    SandboxStatus.TERMINATED: "yellow",
    SandboxStatus.TERMINATING: "yellow",
}


def age(started: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``started`` was, in the largest whole unit (``45s``, ``3m``, ``2h``, ``4d``)."""
    if started is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - started).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def sandbox_json(sandbox: Sandbox) -> dict[str, Any]:
    """Every field a listing knows, with times in ISO 8601."""
    return {
        "sandbox_id": sandbox.sandbox_id,
        "status": sandbox.status.value if sandbox.status is not None else None,
        "started_at": sandbox.started_at.isoformat() if sandbox.started_at else None,
        "runner_id": sandbox.runner_id,
        "runner_group_id": sandbox.runner_group_id,
        "profile_id": sandbox.profile_id,
        "returncode": sandbox.returncode,
        "service_address": sandbox.service_address,
        "exposed_ports": [list(p) for p in sandbox.exposed_ports or ()],
        "applied_ingress_mode": sandbox.applied_ingress_mode,
        "applied_egress_mode": sandbox.applied_egress_mode,
    }


def _text(value: str | None) -> str:
    return escape(value) if value else "-"


def sandboxes_table(sandboxes: Sequence[Sandbox]) -> Table:
    """One row per sandbox: id, status (coloured), age, placement, address."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("SANDBOX", "STATUS", "AGE", "RUNNER", "PROFILE", "ADDRESS"):
        table.add_column(name, justify="right" if name == "AGE" else "left")
    for sb in sandboxes:
        status = sb.status
        label = status.value if status is not None else "-"
        style = _STYLES.get(status) if status is not None else None
        table.add_row(
            _text(sb.sandbox_id),
            f"[{style}]{label}[/{style}]" if style else label,
            age(sb.started_at),
            _text(sb.runner_id),
            _text(sb.profile_id),
            _text(sb.service_address),
        )
    return table
