"""The ``coreweave.sandbox.v1`` front end's table: each v1 sandbox's spec and request id.

Revision ID: 0005_v1_protocol
Revises: 0004_sandbox_events
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_v1_protocol"
down_revision = "0004_sandbox_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``v1_sandboxes`` (see ``sandboxd.store.v1_resources``)."""
    op.create_table(
        "v1_sandboxes",
        sa.Column("sandbox_id", sa.String(64), primary_key=True),
        sa.Column("owner_org", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_v1_sandboxes_request", "v1_sandboxes", ["owner_org", "request_id"], unique=True
    )


def downgrade() -> None:
    """Drop ``v1_sandboxes``."""
    op.drop_index("ix_v1_sandboxes_request", table_name="v1_sandboxes")
    op.drop_table("v1_sandboxes")
