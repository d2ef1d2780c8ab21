"""compact reports: windows packed per batch, accepted seqs apart, node ids numbered

The `reports` table held every window as its JSON body (48-63 KiB at 298 peers) for an hour.
It becomes the (node_id, seq, received_at) rows that refuse a window twice (keyed by
(node_id, seq): one B-tree, WITHOUT ROWID on SQLite); the numbers go to `report_batches` (one
packed row per committed batch, meshctl/store/reports.py) and node ids to `report_nodes`.

Existing rows: every (node_id, seq) is kept (a window sent again is still refused). Bodies
received within RECENT_S of the newest one are packed into batches (a new leader rebuilds link
state from the last stale_after_s of them); older bodies are dropped: nothing reads them (the
default retention is 120 s, and the first prune would delete them). On SQLite the freed pages stay
in the file until `VACUUM`; on PostgreSQL autovacuum reuses them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 21:00:00
"""

import json
import math
from itertools import islice
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op

from meshctl.store.reports import Window, pack_batch

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

RECENT_S = 600.0  # bodies received this close to the newest one are packed, older ones dropped
CHUNK = 500  # windows per packed batch


def upgrade() -> None:
    op.create_table(
        "report_nodes",
        sa.Column("num", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("num"),
        sa.UniqueConstraint("node_id"),
    )
    op.create_table(
        "report_batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_report_batches_received_at", "report_batches", ["received_at"])
    op.create_table(
        "reports_new",
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node_id", "seq"),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO reports_new (node_id, seq, received_at) SELECT node_id, seq, received_at FROM reports")
    _pack_recent(op.get_bind())
    op.drop_table("reports")  # with its indexes
    op.rename_table("reports_new", "reports")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER INDEX reports_new_pkey RENAME TO reports_pkey")
    op.create_index("ix_reports_received_at", "reports", ["received_at"])


def _pack_recent(conn: sa.Connection) -> None:
    """Pack the bodies received within RECENT_S of the newest one, per replica, CHUNK a batch."""
    newest = conn.execute(sa.text("SELECT MAX(received_at) FROM reports")).scalar()
    if newest is None:
        return
    rows = conn.execute(
        sa.text(
            "SELECT node_id, seq, window_start, received_at, replica_id, body FROM reports"
            " WHERE received_at >= :since ORDER BY id"
        ),
        {"since": float(newest) - RECENT_S},
    )
    by_replica: dict[str, list[Window]] = {}
    for node_id, seq, window_start, received_at, replica_id, body in rows:
        window = _window(node_id, int(seq), float(window_start), float(received_at), body)
        if window is not None:
            by_replica.setdefault(replica_id, []).append(window)
    named = {w.node_id for ws in by_replica.values() for w in ws}
    named |= {p for ws in by_replica.values() for w in ws for p in w.peer_ids}
    if named:
        conn.execute(sa.text("INSERT INTO report_nodes (node_id) VALUES (:n)"), [{"n": n} for n in sorted(named)])
    number = {str(n): int(k) for k, n in conn.execute(sa.text("SELECT num, node_id FROM report_nodes"))}
    batches = sa.table(
        "report_batches",
        sa.column("replica_id", sa.String),
        sa.column("received_at", sa.Float),
        sa.column("reports", sa.Integer),
        sa.column("data", sa.LargeBinary),
    )
    for replica, windows in by_replica.items():
        it = iter(windows)
        while chunk := list(islice(it, CHUNK)):
            data = pack_batch(chunk, number)
            at = max(w.received_at for w in chunk)
            conn.execute(batches.insert().values(replica_id=replica, received_at=at, reports=len(chunk), data=data))


def _window(node_id: str, seq: int, window_start: float, received_at: float, body: str) -> Window | None:
    """A stored body's columns (as accepted: the wire's rules held); None for a body that is not a report."""
    try:
        data = json.loads(body)
        peers: list[dict[str, Any]] = data["peers"]
        rows = [
            [p["sent"], p["received"], *(_number(p.get(k)) for k in ("rtt_p50_ms", "rtt_p90_ms", "jitter_ms"))]
            for p in peers
        ]
        columns = np.array(rows, dtype=np.float64).reshape(len(peers), 5).T
        ids = [str(p["peer_node_id"]) for p in peers]
        return Window(node_id, seq, window_start, received_at, float(data["window_s"]), ids, columns)
    except (ValueError, KeyError, TypeError):
        return None


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def downgrade() -> None:
    """Back to JSON bodies: the packed windows are not turned back into JSON, and the old table
    cannot hold a (node_id, seq) without its body, so it starts empty (a window sent again within
    the hour may be accepted twice)."""
    op.drop_index("ix_reports_received_at", table_name="reports")
    op.drop_table("reports")
    op.drop_index("ix_report_batches_received_at", table_name="report_batches")
    op.drop_table("report_batches")
    op.drop_table("report_nodes")
    op.create_table(
        "reports",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_id", "seq", name="uq_reports_node_seq"),
    )
    op.create_index("ix_reports_node_id", "reports", ["node_id"])
    op.create_index("ix_reports_received_at", "reports", ["received_at"])
