"""Initial schema: runners, identity, sandboxes with desired and observed state.

Also upgrades a database written before migrations existed (sandboxd 0.1 before issue 8):
its runner and identity tables are kept as they are, and its ``sandboxes`` table (one JSON
document per sandbox) is converted row by row into the desired/observed columns.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)

# v1beta2 SandboxStatus numbers, as the legacy documents stored them (gateway.proto).
_CREATING, _RUNNING, _COMPLETED, _FAILED, _TERMINATED = 1, 2, 3, 4, 5
_PENDING, _PAUSED, _TERMINATING = 6, 7, 9
# A legacy sandbox that never started has no spec to start it from: it is given up (FAILED)
# this long after its creation, like any start that never came (sandbox_model).
_START_SECONDS = 120


def _tables() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def _create_runner_and_identity_tables(existing: set[str]) -> None:
    if "runners" not in existing:
        op.create_table(
            "runners",
            sa.Column("runner_id", sa.String(255), primary_key=True),
            sa.Column("runner_group_id", sa.String(255), nullable=False),
            sa.Column("tags", sa.JSON, nullable=False),
            sa.Column("capabilities", sa.LargeBinary, nullable=False),
            sa.Column("version", sa.String(64), nullable=False),
            sa.Column("connected_at", TZ, nullable=False),
            sa.Column("last_heartbeat_at", TZ, nullable=False),
        )
    if "api_keys" not in existing:
        op.create_table(
            "api_keys",
            sa.Column("key_id", sa.String(16), primary_key=True),
            sa.Column("organization", sa.String(63), nullable=False, index=True),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("name", sa.String(100), nullable=False),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("revoked_at", TZ, nullable=True),
        )
    if "join_tokens" not in existing:
        op.create_table(
            "join_tokens",
            sa.Column("token_id", sa.String(16), primary_key=True),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("runner_group_id", sa.String(255), nullable=False),
            sa.Column("runner_id", sa.String(255), nullable=False),
            sa.Column("max_uses", sa.Integer, nullable=False),
            sa.Column("uses", sa.Integer, nullable=False),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("expires_at", TZ, nullable=False),
            sa.Column("revoked_at", TZ, nullable=True),
        )
    if "runner_credentials" not in existing:
        op.create_table(
            "runner_credentials",
            sa.Column("runner_id", sa.String(255), primary_key=True),
            sa.Column("credential_id", sa.String(16), nullable=False, unique=True),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("runner_group_id", sa.String(255), nullable=False),
            sa.Column("token_id", sa.String(16), nullable=False),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("revoked_at", TZ, nullable=True),
        )


def _create_sandbox_tables() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("sandbox_id", sa.String(64), primary_key=True),
        sa.Column("owner_org", sa.String(128), nullable=False),
        sa.Column("runner_id", sa.String(255), nullable=False),
        sa.Column("runner_group_id", sa.String(255), nullable=False),
        sa.Column("profile_name", sa.String(255), nullable=False),
        sa.Column("image", sa.String(512), nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("exposed_ports", sa.JSON, nullable=False),
        sa.Column("applied_egress_mode", sa.String(128), nullable=False),
        sa.Column("applied_ingress_mode", sa.String(128), nullable=False),
        sa.Column("reserved_cpu_millicores", sa.BigInteger, nullable=False),
        sa.Column("reserved_memory_bytes", sa.BigInteger, nullable=False),
        sa.Column("reserved_gpu_count", sa.BigInteger, nullable=False),
        sa.Column("cpu_limit_millicores", sa.BigInteger, nullable=False),
        sa.Column("memory_limit_bytes", sa.BigInteger, nullable=False),
        sa.Column("desired", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("stop_grace_seconds", sa.Integer, nullable=False),
        sa.Column("observed", sa.String(16), nullable=False),
        sa.Column("observed_generation", sa.Integer, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("service_address", sa.String(512), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("start_deadline", TZ, nullable=True),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("ended_at", TZ, nullable=True),
        sa.Column("terminal_at", TZ, nullable=True),
        sa.Column("live", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_sandboxes_owner_id", "sandboxes", ["owner_org", "sandbox_id"])
    op.create_index("ix_sandboxes_runner", "sandboxes", ["runner_id"])
    op.create_index("ix_sandboxes_live", "sandboxes", ["live"])
    op.create_index("ix_sandboxes_terminal_at", "sandboxes", ["terminal_at"])
    op.create_table(
        "sandbox_tags",
        sa.Column("tag", sa.String(255), primary_key=True),
        sa.Column(
            "sandbox_id",
            sa.String(64),
            sa.ForeignKey("sandboxes.sandbox_id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_table(
        "tombstones",
        sa.Column("sandbox_id", sa.String(64), primary_key=True),
        sa.Column("runner_id", sa.String(255), nullable=False),
        sa.Column("deleted_at", TZ, nullable=False, index=True),
    )
    op.create_table(
        "orphans",
        sa.Column("sandbox_id", sa.String(64), primary_key=True),
        sa.Column("runner_id", sa.String(255), nullable=False, index=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("runner_cluster_id", sa.String(64), nullable=False),
        sa.Column("first_seen", TZ, nullable=False),
        sa.Column("last_seen", TZ, nullable=False),
    )
    op.create_table(
        "cluster",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _legacy_row(document: dict[str, Any]) -> dict[str, Any]:
    """One pre-migration JSON document as a row of the new ``sandboxes`` table."""
    status = int(document.get("status", _CREATING))
    terminal = status in (_COMPLETED, _FAILED, _TERMINATED)
    stop = bool(document.get("stop_requested")) or status in (_TERMINATING, _TERMINATED)
    observed = {
        _RUNNING: "running", _PAUSED: "running", _COMPLETED: "completed", _FAILED: "failed",
        _TERMINATED: "gone", _TERMINATING: "running",
    }.get(status, "none")  # CREATING, PENDING  # fmt: skip
    created = _time(document.get("created_at")) or datetime.now(UTC)
    ended = _time(document.get("ended_at"))
    return {
        "sandbox_id": str(document["sandbox_id"]),
        "owner_org": str(document.get("owner_org") or "admin"),
        "runner_id": str(document.get("runner_id", "")),
        "runner_group_id": str(document.get("runner_group_id", "")),
        "profile_name": str(document.get("profile_name", "")),
        "image": str(document.get("image", "")),
        "spec": None,
        "tags": list(document.get("tags") or []),
        "exposed_ports": list(document.get("exposed_ports") or []),
        "applied_egress_mode": str(document.get("applied_egress_mode", "")),
        "applied_ingress_mode": str(document.get("applied_ingress_mode", "")),
        "reserved_cpu_millicores": int(document.get("reserved_cpu_millicores", 0)),
        "reserved_memory_bytes": int(document.get("reserved_memory_bytes", 0)),
        "reserved_gpu_count": int(document.get("reserved_gpu_count", 0)),
        "cpu_limit_millicores": int(document.get("cpu_limit_millicores", 0)),
        "memory_limit_bytes": int(document.get("memory_limit_bytes", 0)),
        "desired": "stopped" if stop else "running",
        "generation": 2 if stop else 1,
        "stop_grace_seconds": 10,
        "observed": observed,
        "observed_generation": 1 if observed != "none" else 0,
        "status": status,
        "exit_code": document.get("exit_code"),
        "reason": str(document.get("status_reason", "")),
        "verdict": "",
        "service_address": str(document.get("service_address", "")),
        "created_at": created,
        "start_deadline": (
            created + timedelta(seconds=_START_SECONDS) if observed == "none" else None
        ),
        "started_at": _time(document.get("started_at")),
        "ended_at": ended,
        "terminal_at": (ended or created) if terminal else None,
        "live": 0 if terminal else 1,
        "version": 1,
    }


def _convert_legacy_sandboxes() -> None:
    bind = op.get_bind()
    documents = [
        json.loads(doc) if isinstance(doc, str) else doc
        for (doc,) in bind.execute(sa.text("SELECT document FROM sandboxes")).fetchall()
    ]
    op.rename_table("sandboxes", "sandboxes_legacy")
    _create_sandbox_tables()
    metadata = sa.MetaData()
    table = sa.Table("sandboxes", metadata, autoload_with=bind)
    tags = sa.Table("sandbox_tags", metadata, autoload_with=bind)
    for document in documents:
        row = _legacy_row(document)
        bind.execute(sa.insert(table).values(**row))
        for tag in dict.fromkeys(row["tags"]):
            bind.execute(sa.insert(tags).values(tag=tag, sandbox_id=row["sandbox_id"]))
    op.drop_table("sandboxes_legacy")


def upgrade() -> None:
    """Create what is missing; convert a pre-migration ``sandboxes`` table."""
    existing = _tables()
    _create_runner_and_identity_tables(existing)
    if "sandboxes" in existing:
        columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("sandboxes")}
        if "document" in columns:
            _convert_legacy_sandboxes()
    else:
        _create_sandbox_tables()


def downgrade() -> None:
    """Not supported: restore a backup taken before upgrading instead."""
    raise NotImplementedError("sandboxd does not downgrade its database; restore a backup")
