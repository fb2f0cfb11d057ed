"""A starting sandbox's request beside its record, so a start can move after a restart.

Revision ID: 0010_start_requests
Revises: 0009_event_journal
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_start_requests"
down_revision = "0009_event_journal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``sandboxes.start_request`` (``controlplane/held_requests.py``); none for old rows."""
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("start_request", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    """Drop it (starts under way then fail on a failing runner instead of moving)."""
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("start_request")
