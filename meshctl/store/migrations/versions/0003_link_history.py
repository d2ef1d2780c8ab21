"""link history: per region pair rollups (1-minute buckets kept a day, 1-hour buckets kept 30 days)

Written by the leader once a minute (one executemany of every pair's minute row), the hourly
rows rolled up from the minute rows; pruned by age. Plain column types and a composite primary
key: the same DDL on SQLite and PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "link_history",
        sa.Column("src", sa.String(length=64), nullable=False),
        sa.Column("dst", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), nullable=False),
        sa.Column("rtt_min_ms", sa.Float(), nullable=True),
        sa.Column("rtt_p50_ms", sa.Float(), nullable=True),
        sa.Column("rtt_p90_ms", sa.Float(), nullable=True),
        sa.Column("rtt_max_ms", sa.Float(), nullable=True),
        sa.Column("loss_percent", sa.Float(), nullable=False),
        sa.Column("jitter_ms", sa.Float(), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("src", "dst", "step", "bucket_start"),
    )
    op.create_index("ix_link_history_step_bucket", "link_history", ["step", "bucket_start"])


def downgrade() -> None:
    op.drop_index("ix_link_history_step_bucket", table_name="link_history")
    op.drop_table("link_history")
