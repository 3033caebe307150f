"""fair share by tenant, and leases on claimed items

Items get a lease (who holds them, until when; a live worker extends it), a mark
that they were in a decode or forward pass when charged an attempt, and a mark
that they run alone next. Keys get a weight; each tenant's weighted service and
the scheduler's virtual clock live in tables every worker reads.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("leased_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("in_pass", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("solo", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.create_index("ix_items_job_id_status_position", ["job_id", "status", "position"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("weight", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "tenant_shares",
        sa.Column("tenant", sa.String(length=36), nullable=False),
        sa.Column("served", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_tenant_shares")),
    )
    op.create_table(
        "scheduler_clock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("virtual_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_clock")),
    )
    op.execute("INSERT INTO scheduler_clock (id, virtual_time) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("scheduler_clock")
    op.drop_table("tenant_shares")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("weight")
    with op.batch_alter_table("items") as batch:
        batch.drop_index("ix_items_job_id_status_position")
        batch.drop_column("solo")
        batch.drop_column("in_pass")
        batch.drop_column("lease_until")
        batch.drop_column("leased_by")
