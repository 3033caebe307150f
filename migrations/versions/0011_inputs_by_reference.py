"""items may come by reference (a URL or s3:// key the worker fetches) and carry the
caller's own id

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 03:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("source_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("custom_id", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("custom_id")
        batch.drop_column("source_url")
