"""jobs: scheduler, clip_skip (A1111's schedule type and clip skip); guilds: default_model

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scheduler", sa.String(length=40), server_default="Automatic", nullable=False)
        )
        batch_op.add_column(sa.Column("clip_skip", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("guilds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("default_model", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guilds", schema=None) as batch_op:
        batch_op.drop_column("default_model")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("clip_skip")
        batch_op.drop_column("scheduler")
