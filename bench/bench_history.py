"""The link history's work at a minute and an hour boundary, at fleet scale: what a control-loop
tick waited for before that work ran beside the ticks, and how long it holds the store's writer.

R regions (R x (R-1) directed pairs), every link a new sample each 1 s tick (the worst case): one
minute of samples is made into rows (`minute_rows`), written in one transaction as before and in
transactions of `WRITE_ROWS` as now (the longest one is what a report's commit can wait behind on
SQLite's one writer), then an hour of minute rows is stored and rolled up as the leader does at
the hour (`buckets`, `hour_rows`, the write), and as the leader that wrote the hour whole now does
it (`HourBuffer`: each minute kept as written, the hour made from memory). Median of `--rounds`
where a stage repeats.

    .venv/bin/python -m bench.bench_history [--regions 150] [--rounds 3] [--database-url URL] [-o json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from meshctl.service.history import HOUR, MINUTE, WRITE_ROWS, HourBuffer, hour_rows, minute_rows
from meshctl.store.db import Store
from meshctl.store.history import Row

HOUR_START = 1_700_002_800  # an hour boundary


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [f"aws:bench-{i:03d}" for i in range(args.regions)]
    pairs = [(a, b) for a in names for b in names if a != b]
    rng = np.random.default_rng(18)
    ticks = MINUTE  # one sample per pair per 1 s tick
    pid = np.tile(np.arange(len(pairs), dtype=np.float64), ticks)
    rtt = rng.uniform(5, 300, len(pairs))[pid.astype(np.int64)] + rng.normal(0, 0.5, pid.size)
    jitter, loss = rng.uniform(0, 2, pid.size), np.where(rng.random(pid.size) < 0.01, 4.0, 0.0)
    workdir = None if args.database_url else Path(tempfile.mkdtemp(prefix="bench-history-"))
    url = args.database_url if workdir is None else f"sqlite:///{workdir / 'h.db'}"
    store = Store(url)
    store.open()
    hist = store.history
    made, one_go, chunks = [], [], []
    rows: list[Row] = []
    for r in range(args.rounds):
        bucket = HOUR_START + r * MINUTE
        t, rows = _timed(minute_rows, pairs, pid, rtt, jitter, loss, bucket)
        made.append(t)
        one_go.append(_timed(hist.write, rows, None, 0.0)[0])
        moved = [(*row[:3], row[3] + HOUR, *row[4:]) for row in rows]  # another minute, written in chunks
        per = [_timed(hist.write, moved[at : at + WRITE_ROWS], None, 0.0)[0] for at in range(0, len(moved), WRITE_ROWS)]
        chunks.append((sum(per), max(per)))
    # an hour of minutes (the rounds' own minutes included), then the rollup the leader makes at the hour
    hour = HOUR_START + 2 * HOUR
    for m in range(60):
        hist.write([(*row[:3], hour + m * MINUTE, *row[4:]) for row in rows], None, 0.0)
    read_s, minutes = _timed(hist.buckets, MINUTE, hour, hour + HOUR)
    roll_s, hours = _timed(hour_rows, minutes, hour)
    write_s = _timed(hist.write, hours, None, 0.0)[0]
    # now: the leader keeps the hour it wrote whole (`HourBuffer`), a minute at a time
    held = HourBuffer(hour, complete=True)
    keep_s = [
        _timed(held.add, hour + m * MINUTE, [(*row[:3], hour + m * MINUTE, *row[4:]) for row in rows])[0]
        for m in range(60)
    ]
    held_s, held_rows = _timed(held.rows)
    assert len(held_rows) == len(hours)
    store.close()
    if workdir is not None:
        shutil.rmtree(workdir)  # ~250 MB at 150 regions
    med = statistics.median
    minute_before = med(made) + med(one_go)
    return {
        "regions": args.regions,
        "pairs": len(pairs),
        "database": store.backend,
        "minute_rows_s": round(med(made), 3),
        "minute_write_one_transaction_s": round(med(one_go), 3),
        "minute_write_chunked_s": round(med(c[0] for c in chunks), 3),
        "longest_transaction_chunked_s": round(med(c[1] for c in chunks), 3),
        "hour_read_rows": len(minutes),
        "hour_read_s": round(read_s, 3),
        "hour_rows_s": round(roll_s, 3),
        "hour_write_s": round(write_s, 3),
        "hour_kept_per_minute_s": round(statistics.median(keep_s), 4),
        "hour_from_memory_s": round(held_s, 3),
        "tick_waited_at_minute_s": round(minute_before, 3),
        "tick_waited_at_hour_s": round(minute_before + read_s + roll_s + write_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regions", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--database-url", default=None, help="default: SQLite in a new temporary directory")
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args()
    r = run(args)
    if args.output == "json":
        print(json.dumps(r))
        return
    print(f"link history at {r['regions']} regions ({r['pairs']:,} directed pairs), {r['database']}:")
    print(f"  a minute's rows made: {r['minute_rows_s']:.3f} s (a worker thread)")
    print(
        f"  the minute written: {r['minute_write_one_transaction_s']:.3f} s in one transaction (before); "
        f"{r['minute_write_chunked_s']:.3f} s in transactions of {WRITE_ROWS:,} rows, the longest "
        f"{r['longest_transaction_chunked_s']:.3f} s (now: what a report's commit can wait behind)"
    )
    print(
        f"  the hour's rollup: {r['hour_read_rows']:,} minute rows read in {r['hour_read_s']:.3f} s, rolled up in "
        f"{r['hour_rows_s']:.3f} s, written in {r['hour_write_s']:.3f} s"
    )
    print(
        f"  the hour kept in memory by the leader that wrote it whole (now): {r['hour_kept_per_minute_s']:.4f} s "
        f"a minute to keep, {r['hour_from_memory_s']:.3f} s to roll up (nothing read back)"
    )
    print(
        f"  a tick waited for it (before): {r['tick_waited_at_minute_s']:.3f} s at each minute, "
        f"{r['tick_waited_at_hour_s']:.3f} s at each hour; now it runs beside the ticks"
    )


if __name__ == "__main__":
    main()
