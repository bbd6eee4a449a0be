"""Resumable uploads (upload_sessions) and 64-bit byte counts (a slide over 2 GiB overflowed
PostgreSQL's INTEGER).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("uploads", "results"):
        with op.batch_alter_table(table) as b:
            b.alter_column("bytes", type_=sa.BigInteger(), existing_type=sa.Integer(),
                           existing_nullable=False)  # fmt: skip
    op.create_table(
        "upload_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("filename", sa.String(200), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_upload_sessions_user_id", "upload_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_table("upload_sessions")
    for table in ("uploads", "results"):
        with op.batch_alter_table(table) as b:
            b.alter_column("bytes", type_=sa.Integer(), existing_type=sa.BigInteger(),
                           existing_nullable=False)  # fmt: skip
