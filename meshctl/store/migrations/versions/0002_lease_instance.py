"""lease and route tables name the process instance that held the lease (fencing whatever the ids)

Two processes started with the same replica id must never both lead: the lease is renewed, and a
leader's writes are fenced, by the holder's instance (a random id made when its process starts)
as well as its replica id and epoch. Route tables record the instance that published them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("instance", sa.String(length=32), nullable=True))
    with op.batch_alter_table("route_tables") as batch:
        batch.add_column(sa.Column("instance", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("route_tables") as batch:
        batch.drop_column("instance")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("instance")
