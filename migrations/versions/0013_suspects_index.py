"""a partial index of suspect items: every claim looks for one, and there are few

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 20:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_items_suspects",
        "items",
        ["status", "created_at", "position"],
        postgresql_where=sa.text("solo IS true"),
        sqlite_where=sa.text("solo IS 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_items_suspects", table_name="items")
