"""The administrator's configuration as applied with ``sandboxd config apply``, by revision.

Revision ID: 0003_platform_config
Revises: 0002_runner_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_platform_config"
down_revision = "0002_runner_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``platform_config`` (empty: the configuration given at start-up stays in use)."""
    op.create_table(
        "platform_config",
        sa.Column("revision", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop it (applied configurations are forgotten)."""
    op.drop_table("platform_config")
