"""node peer generations: each node row says at which peer generation it last changed

A replica that sees the peer generation move reads only the nodes changed since the one it has
(`Store.nodes_since`), not every node: a join costs the other replicas a few rows, not the
fleet. Existing rows start at 0 (a start-up reads every node anyway). Also indexes the region
of nodes and of overlay addresses, which every join into a region reads.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 21:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("peer_gen", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_nodes_peer_gen", "nodes", ["peer_gen"])
    op.create_index("ix_nodes_region", "nodes", ["region"])
    op.create_index("ix_overlay_addresses_region", "overlay_addresses", ["region"])


def downgrade() -> None:
    op.drop_index("ix_overlay_addresses_region", table_name="overlay_addresses")
    op.drop_index("ix_nodes_region", table_name="nodes")
    op.drop_index("ix_nodes_peer_gen", table_name="nodes")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("peer_gen")
