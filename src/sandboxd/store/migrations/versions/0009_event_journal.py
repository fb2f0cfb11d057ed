"""Where the control plane's local event journal is stored up to (issue 11, the trail).

Revision ID: 0009_event_journal
Revises: 0008_volumes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_event_journal"
down_revision = "0008_volumes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """The one-row table of ``sandboxd.store.event_store.EventJournalRow``."""
    op.create_table(
        "event_journal",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("stored_through", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("event_journal")
