"""Link history rows: the leader's batched writes, reads for one pair, the rollup's reads, pruning.

A part of the Store (`store.history`), apart from db.py because nothing here spans other tables
but the lease, which a write checks in its own transaction (fencing, as route tables do).
Statements are SQLAlchemy Core with ON CONFLICT DO NOTHING, which SQLite and PostgreSQL share;
a minute's rows go in as one executemany (22,350 rows at 150 regions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, delete, func, select

from meshctl.store.models import LinkHistoryRow
from meshctl.store.values import Fence, LinkRollup

if TYPE_CHECKING:
    from meshctl.store.db import Store

COLUMNS = (
    "src",
    "dst",
    "step",
    "bucket_start",
    "rtt_min_ms",
    "rtt_p50_ms",
    "rtt_p90_ms",
    "rtt_max_ms",
    "loss_percent",
    "jitter_ms",
    "samples",
)
# one value tuple per row, in COLUMNS order
Row = tuple[str, str, int, int, float | None, float | None, float | None, float | None, float, float | None, int]


class LinkHistory:
    """The `link_history` table, through the store's engine."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._table = cast(Table, LinkHistoryRow.__table__)
        self._insert: Any = None

    def write(self, rows: Sequence[Row], fence: Fence | None, now: float) -> bool:
        """Insert rollup rows in one transaction and one executemany; rows already there (the same
        pair, step and bucket, written by a previous leader) are kept. With a fence, nothing is
        written (False) unless the lease is still ours, checked in the same transaction."""
        from meshctl.store.db import Store, _dialect_insert

        if self._insert is None:
            ins = _dialect_insert(self._store.backend)(self._table)
            self._insert = ins.on_conflict_do_nothing(index_elements=["src", "dst", "step", "bucket_start"])
        with self._store._tx() as s:
            if fence is not None and not Store._holds(s, fence, now):
                return False
            if rows:
                s.connection().execute(self._insert, [dict(zip(COLUMNS, r, strict=True)) for r in rows])
        return True

    def series(self, src: str, dst: str, step: int, since: float, until: float | None = None) -> list[LinkRollup]:
        """One pair's buckets of `step` seconds that start at or after `since` (and before `until`)."""
        t = self._table
        q = (
            select(*(t.c[c] for c in COLUMNS))
            .where(t.c.src == src, t.c.dst == dst, t.c.step == step, t.c.bucket_start >= int(since))
            .order_by(t.c.bucket_start)
        )
        if until is not None:
            q = q.where(t.c.bucket_start < int(until))
        with self._store.engine.connect() as conn:
            return [LinkRollup(*r) for r in conn.execute(q)]

    def buckets(self, step: int, start: int, end: int) -> list[Row]:
        """Every pair's rows of `step` with start <= bucket_start < end (the hourly rollup's input)."""
        t = self._table
        q = select(*(t.c[c] for c in COLUMNS)).where(
            t.c.step == step, t.c.bucket_start >= start, t.c.bucket_start < end
        )
        with self._store.engine.connect() as conn:
            return [cast(Row, tuple(r)) for r in conn.execute(q)]

    def newest_bucket(self, step: int) -> int | None:
        """The start of the newest bucket of `step` (None: none yet)."""
        t = self._table
        with self._store.engine.connect() as conn:
            found = conn.execute(select(func.max(t.c.bucket_start)).where(t.c.step == step)).scalar_one()
        return None if found is None else int(found)

    def prune(self, keep: dict[int, float], now: float) -> int:
        """Delete the buckets of each step older than its age limit (`keep`: step -> seconds)."""
        t = self._table
        gone = 0
        with self._store._tx() as s:
            for step, age in keep.items():
                result = s.execute(delete(t).where(t.c.step == step, t.c.bucket_start < int(now - age)))
                gone += int(getattr(result, "rowcount", 0) or 0)
        return gone
