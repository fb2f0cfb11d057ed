"""Runners: cordon and drain, set by an administrator and kept across restarts.

Revision ID: 0002_runner_lifecycle
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_runner_lifecycle"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``cordoned`` (false for existing runners), ``drain_deadline`` and its grace."""
    with op.batch_alter_table("runners") as batch:
        batch.add_column(
            sa.Column("cordoned", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("drain_deadline", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("drain_grace_seconds", sa.Integer, nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Drop the two columns (cordons and drains are forgotten)."""
    with op.batch_alter_table("runners") as batch:
        batch.drop_column("drain_grace_seconds")
        batch.drop_column("drain_deadline")
        batch.drop_column("cordoned")
