"""Named persistent volumes of the v1 API (issue 10, item 4).

Revision ID: 0008_volumes
Revises: 0007_secrets
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_volumes"
down_revision = "0007_secrets"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """The table of ``sandboxd.store.volume_store``."""
    op.create_table(
        "volumes",
        sa.Column("owner_org", sa.String(128), primary_key=True),
        sa.Column("volume_id", sa.String(63), primary_key=True),
        sa.Column("runner_id", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("claim_name", sa.String(63), nullable=False),
        sa.Column("sub_path", sa.String(1024), nullable=False),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("description", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.String(1024), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("validated_at", TZ, nullable=True),
    )
    op.create_index("ix_volumes_request", "volumes", ["owner_org", "request_id"])


def downgrade() -> None:
    """Drop it again (the volumes' directories stay on their runners)."""
    op.drop_index("ix_volumes_request", "volumes")
    op.drop_table("volumes")
