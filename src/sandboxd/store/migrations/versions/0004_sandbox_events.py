"""Each sandbox's activity trail (lifecycle, execs, files), kept for the retention period.

Revision ID: 0004_sandbox_events
Revises: 0003_platform_config
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_sandbox_events"
down_revision = "0003_platform_config"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``sandbox_events`` (empty: sandboxes from before keep no trail)."""
    op.create_table(
        "sandbox_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sandbox_id", sa.String(64), nullable=False, index=True),
        sa.Column("owner_org", sa.String(63), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    """Drop the trail."""
    op.drop_table("sandbox_events")
