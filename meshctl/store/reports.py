"""Stored reports: what refuses a window twice, and the windows' numbers in a compact form.

A part of the Store (`store.reports`), apart from db.py as history.py is. Three tables:

- `reports`: one (node_id, seq, received_at) row per accepted window, kept as long as the window
  could still be accepted (`report_max_age_s` + `report_max_future_s`), so a window sent again is
  answered 409 by any replica, after any restart: 72 bytes a window on SQLite, ~150 on PostgreSQL.
- `report_batches`: the windows one replica committed in one transaction, packed into one blob
  (`pack_batch`): node ids as numbers, the columns the ingest folds (sent, received, p50, p90,
  jitter) as little-endian arrays, byte-shuffled and zlib-compressed, ~2.5 KB a window at 298
  peers against 48-63 KiB of JSON. What other replicas' leaders fold (`after`) and a new leader warms
  its link book from (`recent`); kept `report_window_retention_s`. One row per batch, not per
  window: a 2.5 KiB row would take a 4 KiB SQLite page of its own.
- `report_nodes`: the numbers of node ids (never deleted or renumbered, so cached for good).

Lossless: RTT and jitter figures are stored as integers of 0.1 us when every value of the column
in the batch comes back bit for bit (the agent rounds to 4 decimals), else as float64; counts
as uint32 when they are integers. NaN (a figure the report left out) survives either way.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import (
    BigInteger,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from meshctl.store.models import NodeRow, ReportBatchRow, ReportNodeRow, ReportRow
from meshctl.store.values import ReportCursor, StoredReport

if TYPE_CHECKING:
    from meshctl.store.db import Store

FORMAT = 1  # the first byte of a packed batch
LEVEL = 6  # zlib's
COLUMNS = ("sent", "received", "p50", "p90", "jitter")  # the rows of StoredReport.columns
SCALE = 1e4  # RTT and jitter as integers of 0.1 us (the agent's 4 decimals of a ms)
_NAN = np.iinfo(np.int32).min  # a quantised NaN
_LIMIT = 2**30  # quantised magnitudes stay below: a p90 - p50 difference never reaches _NAN
# how a column is stored: float64 as is; uint32 counts; int32 of 0.1 us; int32 of 0.1 us less p50's
F64, U32, Q32, Q32_DELTA = 0, 1, 2, 3
_META = (  # per window: name, dtype
    ("node", np.uint32),
    ("seq", np.int64),
    ("window_start", np.float64),
    ("received_at", np.float64),
    ("window_s", np.float64),
    ("peers", np.uint32),
)
_DTYPES: dict[int, Any] = {F64: np.float64, U32: np.uint32, Q32: np.int32, Q32_DELTA: np.int32}
GAP_WAIT_S = 10.0  # a batch id below the cursor still missing this long was rolled back
PRUNE_BATCHES = 64  # batch rows deleted per transaction (each up to BatchWriter's 1,000 windows)
PRUNE_SEEN = 5000  # `reports` rows deleted per transaction


@dataclass(slots=True)
class Window:
    """One window as the service hands it to the store (and as `pack_batch` takes it): `columns`
    is 5 x len(peer_ids) float64 (COLUMNS), NaN where the report left a figure out."""

    node_id: str
    seq: int
    window_start: float
    received_at: float
    window_s: float
    peer_ids: Sequence[str]
    columns: np.ndarray


# --- the packed form (pure) ----------------------------------------------------------------------


def _shuffled(a: np.ndarray) -> bytes:
    """Byte planes: all first bytes, then all second bytes...: zlib finds the runs in the high ones."""
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.itemsize).T.tobytes()


def _unshuffled(buf: memoryview, at: int, dtype: Any, count: int) -> tuple[np.ndarray, int]:
    size = np.dtype(dtype).itemsize * count
    planes = np.frombuffer(buf[at : at + size], dtype=np.uint8).reshape(np.dtype(dtype).itemsize, count)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(count), at + size


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a.view(np.int64), b.view(np.int64)))


def _quantised(v: np.ndarray) -> np.ndarray | None:
    """int64 of 0.1 us (NaN as _NAN) when every value comes back bit for bit; else None."""
    nan = np.isnan(v)
    finite = v[~nan]
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.rint(finite * SCALE)
        if q.size and not np.abs(q).max() < _LIMIT:  # (NaN from inf * SCALE fails too)
            return None
    qi = q.astype(np.int64)
    if not _same_bits(qi / SCALE, finite):  # also -0.0, which an integer cannot hold
        return None
    out = np.full(v.size, _NAN, dtype=np.int64)
    out[~nan] = qi
    return out


def _dequantised(q: np.ndarray) -> np.ndarray:
    out = q.astype(np.float64) / SCALE
    out[q == _NAN] = np.nan
    return out


def _encode_column(k: int, v: np.ndarray, p50: np.ndarray | None) -> tuple[int, np.ndarray]:
    """(mode, array to store) of column k; `p50`: the quantised p50 column, if it was."""
    if k < 2:  # counts
        if not np.isnan(v).any() and (v >= 0).all() and (v < 2**32).all():
            as_int = v.astype(np.uint32)
            if _same_bits(as_int.astype(np.float64), v):
                return U32, as_int
        return F64, v
    q = _quantised(v)
    if q is None:
        return F64, v
    if k == 3 and p50 is not None:  # p90 as its distance from p50: a few ms, not hundreds
        delta = np.where(q == _NAN, _NAN, q - np.where(p50 == _NAN, 0, p50))
        return Q32_DELTA, delta.astype(np.int32)
    return Q32, q.astype(np.int32)


def pack_batch(windows: Sequence[Window], number: dict[str, int]) -> bytes:
    """Windows as one blob; `number`: every node id named (reporters and peers) -> its number.

    Byte FORMAT, then zlib of: "<I5B" (windows, the five columns' modes); per window (each an
    array over the windows) node number u32, seq i64, window_start f64, received_at f64,
    window_s f64, peer count u32; every window's peer numbers u32, one after the other; then the
    five columns over all peers, each in its mode (F64, U32, Q32, Q32_DELTA). Every array is
    little-endian and byte-shuffled (`_shuffled`).
    """
    meta: list[np.ndarray] = [
        np.fromiter((number[w.node_id] for w in windows), dtype=np.uint32, count=len(windows)),
        np.fromiter((w.seq for w in windows), dtype=np.int64, count=len(windows)),
        np.fromiter((w.window_start for w in windows), dtype=np.float64, count=len(windows)),
        np.fromiter((w.received_at for w in windows), dtype=np.float64, count=len(windows)),
        np.fromiter((w.window_s for w in windows), dtype=np.float64, count=len(windows)),
        np.fromiter((len(w.peer_ids) for w in windows), dtype=np.uint32, count=len(windows)),
    ]
    total = int(meta[-1].sum())
    named = map(number.__getitem__, chain.from_iterable(w.peer_ids for w in windows))
    ids = np.fromiter(named, dtype=np.uint32, count=total)
    if total:
        cols = np.concatenate([np.asarray(w.columns, dtype=np.float64).reshape(5, -1) for w in windows], axis=1)
    else:
        cols = np.empty((5, 0))
    modes, stored, p50q = [], [], None
    for k in range(5):
        mode, arr = _encode_column(k, cols[k], p50q)
        if k == 2 and mode == Q32:
            p50q = arr.astype(np.int64)
        modes.append(mode)
        stored.append(arr)
    parts = [struct.pack("<I5B", len(windows), *modes), *map(_shuffled, meta), _shuffled(ids), *map(_shuffled, stored)]
    return bytes([FORMAT]) + zlib.compress(b"".join(parts), LEVEL)


def unpack_batch(data: bytes) -> list[tuple[int, int, float, float, float, np.ndarray, np.ndarray]]:
    """Per window: (node number, seq, window_start, received_at, window_s, peer numbers, columns
    (5 x peers, float64, read-only))."""
    if not data or data[0] != FORMAT:
        raise ValueError(f"not a packed report batch (format {data[:1]!r})")
    buf = memoryview(zlib.decompress(data[1:]))
    count, *modes = struct.unpack_from("<I5B", buf)
    at = struct.calcsize("<I5B")
    meta = []
    for _, dtype in _META:
        arr, at = _unshuffled(buf, at, dtype, count)
        meta.append(arr)
    total = int(meta[-1].sum())
    ids, at = _unshuffled(buf, at, np.uint32, total)
    cols = np.empty((5, total))
    for k, mode in enumerate(modes):
        arr, at = _unshuffled(buf, at, _DTYPES[mode], total)
        if mode in (F64, U32):
            cols[k] = arr
        elif mode == Q32:
            cols[k] = _dequantised(arr)
        else:  # p90 less p50, both quantised
            p50q = np.rint(cols[2] * SCALE)
            p50q[np.isnan(cols[2])] = 0
            q = np.where(arr == _NAN, _NAN, arr.astype(np.int64) + p50q.astype(np.int64))
            cols[k] = _dequantised(q)
    if at != len(buf):
        raise ValueError(f"packed report batch of {len(buf)} bytes, {at} read")
    cols.flags.writeable = False
    ends = np.cumsum(meta[-1], dtype=np.int64)
    out = []
    for i in range(count):
        lo, hi = int(ends[i]) - int(meta[-1][i]), int(ends[i])
        out.append(
            (
                int(meta[0][i]),
                int(meta[1][i]),
                float(meta[2][i]),
                float(meta[3][i]),
                float(meta[4][i]),
                ids[lo:hi],
                cols[:, lo:hi],
            )
        )
    return out


# --- the tables ------------------------------------------------------------------------------------


class ReportStore:
    """The report tables, through the store's engine."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._seen = cast(Table, ReportRow.__table__)
        self._batches = cast(Table, ReportBatchRow.__table__)
        self._nodes = cast(Table, ReportNodeRow.__table__)
        self._sql: tuple[Any, Any] | None = None
        self._number: dict[str, int] = {}  # node id -> number, and back: never change once made
        self._name: dict[int, str] = {}
        self._lock = threading.Lock()

    # --- node numbers ---------------------------------------------------------------------

    def _learn(self, rows: Iterable[Any]) -> None:
        with self._lock:
            for num, node_id in rows:
                self._number[str(node_id)] = int(num)
                self._name[int(num)] = str(node_id)

    def numbers(self, node_ids: Iterable[str]) -> dict[str, int]:
        """The number of every node id, made (in a transaction of its own) for ids new to the store."""
        from meshctl.store.db import _dialect_insert

        known = self._number
        missing = sorted({n for n in node_ids if n not in known})
        if missing:
            ins = _dialect_insert(self._store.backend)(self._nodes).on_conflict_do_nothing(index_elements=["node_id"])
            with self._store.engine.begin() as conn:
                conn.execute(ins, [{"node_id": n} for n in missing])
            self._load(self._nodes.c.node_id, missing)
        return known

    def _names(self, nums: Iterable[int]) -> dict[int, str]:
        missing = sorted({int(n) for n in nums if n not in self._name})
        if missing:
            self._load(self._nodes.c.num, missing)
            if lost := [n for n in missing if n not in self._name]:
                raise ValueError(f"packed reports name node numbers the store does not know: {lost[:5]}")
        return self._name

    def _load(self, column: Any, keys: Sequence[Any]) -> None:
        nodes = self._nodes
        with self._store.engine.connect() as conn:
            for i in range(0, len(keys), 500):
                found = conn.execute(select(nodes.c.num, nodes.c.node_id).where(column.in_(keys[i : i + 500])))
                self._learn(found.all())

    # --- writes ---------------------------------------------------------------------------------

    def insert(self, windows: Sequence[Window], replica_id: str) -> list[bool]:
        """Write a batch of windows in one transaction; False marks a duplicate (node_id, seq).

        Core statements, one connection: one multi-row INSERT of the (node, seq) rows, one batch
        row holding every window written, one executemany UPDATE of the nodes' counters.
        """
        if not windows:
            return []
        number = self.numbers([w.node_id for w in windows] + [p for w in windows for p in w.peer_ids])
        seen_stmt, nodes_stmt = self._statements()
        values = [{"node_id": w.node_id, "seq": w.seq, "received_at": w.received_at} for w in windows]
        with self._store.engine.begin() as conn:
            inserted = {(n, int(q)) for n, q in conn.execute(seen_stmt, values).all()}
            written = []  # a window sent twice in one batch is written once, the first time
            kept: list[Window] = []
            per_node: dict[str, tuple[int, float, int]] = {}
            for w in windows:
                key = (w.node_id, w.seq)
                written.append(key in inserted)
                if written[-1]:
                    inserted.discard(key)
                    kept.append(w)
                    seq, at, count = per_node.get(w.node_id, (-1, 0.0, 0))
                    per_node[w.node_id] = (max(seq, w.seq), max(at, w.received_at), count + 1)
            if kept:
                conn.execute(
                    insert(self._batches).values(
                        replica_id=replica_id,
                        received_at=max(w.received_at for w in kept),
                        reports=len(kept),
                        data=pack_batch(kept, number),
                    )
                )
                params = [{"b_id": n, "b_seq": q, "b_at": at, "b_count": k} for n, (q, at, k) in per_node.items()]
                conn.execute(nodes_stmt, params)
        return written

    def _statements(self) -> tuple[Any, Any]:
        if self._sql is None:
            from meshctl.store.db import _dialect_insert

            seen, nodes = self._seen, cast(Table, NodeRow.__table__)
            ins = _dialect_insert(self._store.backend)(seen)
            seen_stmt = ins.on_conflict_do_nothing(index_elements=["node_id", "seq"]).returning(
                seen.c.node_id, seen.c.seq
            )
            seq = bindparam("b_seq", type_=BigInteger)
            nodes_stmt = (
                update(nodes)
                .where(nodes.c.id == bindparam("b_id"))
                .values(
                    last_seq=case(
                        (nodes.c.last_seq.is_(None), seq), (nodes.c.last_seq < seq, seq), else_=nodes.c.last_seq
                    ),
                    last_report_at=bindparam("b_at"),
                    reports_accepted=nodes.c.reports_accepted + bindparam("b_count", type_=BigInteger),
                )
            )
            self._sql = (seen_stmt, nodes_stmt)
        return self._sql

    # --- reads ----------------------------------------------------------------------------------

    def _reports(self, rows: Iterable[Any], since: float | None = None) -> list[StoredReport]:
        rows = list(rows)
        unpacked = [(replica, unpack_batch(data)) for replica, data in rows]
        nums = {w[0] for _, ws in unpacked for w in ws}
        for _, ws in unpacked:
            for w in ws:
                nums.update(np.unique(w[5]).tolist())
        name = self._names(nums)
        out = []
        for replica, ws in unpacked:
            for node, seq, start, received, window_s, peers, cols in ws:
                if since is not None and received < since:
                    continue
                ids = tuple(map(name.__getitem__, peers.tolist()))
                out.append(StoredReport(name[node], seq, start, window_s, received, replica, ids, cols))
        return out

    def after(
        self, cursor: int | ReportCursor, exclude_replica: str | None, limit: int = 2048
    ) -> tuple[list[StoredReport], ReportCursor]:
        """Windows in batches past a cursor (from other replicas), and the new cursor; at most
        `limit` batch ids further a call. The cursor moves past our own batches too, so each
        call reads only what is new; ids it skipped (transactions that commit later) are asked
        for again for GAP_WAIT_S (then given up: a transaction that rolled back)."""
        cur = cursor if isinstance(cursor, ReportCursor) else ReportCursor(int(cursor))
        now = time.monotonic()
        gaps = {i: t for i, t in cur.gaps if now - t < GAP_WAIT_S}
        b = self._batches
        data = b.c.data if exclude_replica is None else case((b.c.replica_id != exclude_replica, b.c.data))
        with self._store.engine.connect() as conn:
            newest = int(conn.execute(select(func.coalesce(func.max(b.c.id), 0))).scalar_one())
            upto = max(cur.after, min(newest, cur.after + limit))
            wanted = and_(b.c.id > cur.after, b.c.id <= upto)
            if gaps:
                wanted = or_(wanted, b.c.id.in_(sorted(gaps)))
            rows = conn.execute(select(b.c.id, b.c.replica_id, data).where(wanted).order_by(b.c.id)).all()
        found = {int(r[0]) for r in rows}
        gaps.update((i, now) for i in range(cur.after + 1, upto + 1) if i not in found)
        for i in found:
            gaps.pop(i, None)
        theirs = [(replica, blob) for _, replica, blob in rows if blob is not None]
        return self._reports(theirs), ReportCursor(upto, tuple(sorted(gaps.items())))

    def cursor(self) -> int:
        """The newest batch's id: `after` from here reads only what comes next."""
        with self._store.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(self._batches.c.id), 0))).scalar_one())

    def recent(self, since: float) -> list[StoredReport]:
        """Every stored window received at `since` or later (a new leader's link book)."""
        b = self._batches
        with self._store.engine.connect() as conn:
            q = select(b.c.replica_id, b.c.data).where(b.c.received_at >= since).order_by(b.c.id)
            rows = conn.execute(q).all()
        return self._reports(rows, since)

    # --- pruning --------------------------------------------------------------------------------

    def prune(self, windows_before: float, seen_before: float) -> tuple[int, int]:
        """Drop batches whose newest window was received before `windows_before`, and (node, seq)
        rows received before `seen_before`: (batches, rows) deleted. A few thousand rows per
        transaction, so report writes (SQLite's one writer) wait milliseconds, not seconds."""
        b, seen = self._batches, self._seen
        batches = rows = 0
        while True:
            with self._store.engine.begin() as conn:
                ids = select(b.c.id).where(b.c.received_at < windows_before).order_by(b.c.id).limit(PRUNE_BATCHES)
                done = _rowcount(conn.execute(delete(b).where(b.c.id.in_(ids.scalar_subquery()))))
            batches += done
            if done < PRUNE_BATCHES:
                break
        while True:
            with self._store.engine.begin() as conn:
                keys = select(seen.c.node_id, seen.c.seq).where(seen.c.received_at < seen_before).limit(PRUNE_SEEN)
                done = _rowcount(conn.execute(delete(seen).where(tuple_(seen.c.node_id, seen.c.seq).in_(keys))))
            rows += done
            if done < PRUNE_SEEN:
                break
        return batches, rows


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)
