"""workers say which model they serve; jobs are pinned to one model version

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker_heartbeats") as batch:
        batch.add_column(sa.Column("model_version", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("model_precision", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("model_accuracy", sa.Float(), nullable=True))
    op.create_index(op.f("ix_jobs_model_version"), "jobs", ["model_version"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_model_version"), table_name="jobs")
    with op.batch_alter_table("worker_heartbeats") as batch:
        batch.drop_column("model_accuracy")
        batch.drop_column("model_precision")
        batch.drop_column("model_version")
