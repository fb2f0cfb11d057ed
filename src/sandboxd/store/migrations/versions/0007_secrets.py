"""Secret stores and their encrypted values.

Values are stored encrypted (AES-GCM, with a key kept in the control plane's data directory,
never in the database); see ``sandboxd.store.secret_store``.

Revision ID: 0007_secrets
Revises: 0006_snapshots
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_secrets"
down_revision = "0006_snapshots"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``secret_stores`` and ``secret_values``."""
    op.create_table(
        "secret_stores",
        sa.Column("store_id", sa.String(32), primary_key=True),
        sa.Column("organization", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("provider_type", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.UniqueConstraint("organization", "name", name="uq_secret_stores_org_name"),
    )
    op.create_table(
        "secret_values",
        sa.Column("store_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("field", sa.String(63), primary_key=True),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    """Drop both tables (and with them every stored secret)."""
    op.drop_table("secret_values")
    op.drop_table("secret_stores")
