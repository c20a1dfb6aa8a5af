"""jobs: delivery_attempts, next_delivery_at, undeliverable (the redelivery sweep backs off and gives up)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 08:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("next_delivery_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("undeliverable", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("undeliverable")
        batch_op.drop_column("next_delivery_at")
        batch_op.drop_column("delivery_attempts")
