"""each item records the model version that produced it

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("model_version", sa.String(length=64), nullable=True))
    # Results made before this column existed were made by their job's model.
    op.execute(
        "UPDATE items SET model_version = "
        "(SELECT jobs.model_version FROM jobs WHERE jobs.id = items.job_id) "
        "WHERE status = 'succeeded'"
    )


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("model_version")
