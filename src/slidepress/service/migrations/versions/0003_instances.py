"""Several instances on one database: the `instances` table (each running `slidepress serve`
and its heartbeat), so any instance can requeue the jobs of one that died.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("machine", sa.String(32), nullable=False),
        sa.Column("workers", sa.Integer(), nullable=False),
        sa.Column("http", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("instances")
