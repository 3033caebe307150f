"""reuse results of identical images

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 15:55:21.900144
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reused_from", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_items_sha256", ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_sha256")
        batch_op.drop_column("reused_from")
