"""attested join: join policies, spent join nonces, the cloud identity each node joined with, shared secrets

`node_identities` holds one row per (cloud, account, instance id): a second join of the same
instance is refused while the node it points at is live (replay, cloning). `used_join_nonces`
keeps spent Azure nonces until they expire (single use). `service_secrets` holds the join nonce
key every replica shares. Plain column types: the same DDL on SQLite and PostgreSQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "join_policies",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("cloud", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "used_join_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index("ix_used_join_nonces_expires_at", "used_join_nonces", ["expires_at"])
    op.create_table(
        "node_identities",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("cloud", sa.String(length=32), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("instance_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("policy_id", sa.String(length=64), nullable=False),
        sa.Column("joined_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cloud", "account", "instance_id", name="uq_node_identities_instance"),
    )
    op.create_index("ix_node_identities_node_id", "node_identities", ["node_id"])
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("service_secrets")
    op.drop_index("ix_node_identities_node_id", table_name="node_identities")
    op.drop_table("node_identities")
    op.drop_index("ix_used_join_nonces_expires_at", table_name="used_join_nonces")
    op.drop_table("used_join_nonces")
    op.drop_table("join_policies")
