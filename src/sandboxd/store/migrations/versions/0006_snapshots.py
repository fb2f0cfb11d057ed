"""File-system snapshots and per-organization snapshot buckets (issue 10, item 3).

Revision ID: 0006_snapshots
Revises: 0005_v1_protocol
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_snapshots"
down_revision = "0005_v1_protocol"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """The two tables of ``sandboxd.store.snapshot_store``."""
    op.create_table(
        "file_system_snapshots",
        sa.Column("snapshot_id", sa.String(64), primary_key=True),
        sa.Column("owner_org", sa.String(128), nullable=False),
        sa.Column("source_sandbox_id", sa.String(64), nullable=False),
        sa.Column("volume_name", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(1024), nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("completed_at", TZ, nullable=True),
    )
    op.create_index("ix_fss_owner_key", "file_system_snapshots", ["owner_org", "idempotency_key"])
    op.create_index("ix_fss_owner", "file_system_snapshots", ["owner_org", "snapshot_id"])
    op.create_table(
        "file_system_snapshot_buckets",
        sa.Column("owner_org", sa.String(128), primary_key=True),
        sa.Column("bucket_name", sa.String(255), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("file_system_snapshot_buckets")
    op.drop_index("ix_fss_owner", "file_system_snapshots")
    op.drop_index("ix_fss_owner_key", "file_system_snapshots")
    op.drop_table("file_system_snapshots")
