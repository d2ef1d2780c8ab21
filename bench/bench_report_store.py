"""The report store's footprint: bytes written and bytes kept per window, for a fleet of N nodes.

Drives `meshctl.store.db.Store` as the controller does (group-commit batches of windows, pruned
every 60 s with the default retention), on a simulated clock, as fast as it goes. Windows are as
noisy as the agent's (RTTs with 4 decimals of a ms, p90 above p50, some loss): they pack worse
than the simulator's identical ones. Printed:

- packed bytes per window (the `report_batches` blob);
- bytes written per window, measured over the second half of the run (steady state): on SQLite
  the process's write() bytes (WAL frames and checkpoints, `wchar` in /proc/self/io); on
  PostgreSQL the WAL it generated (`pg_stat_wal.wal_bytes`, server-wide: run it on a quiet server);
- the tables' size at the end and the steady-state bound: the windows kept for the retention
  (measured), plus the accepted (node, seq) rows kept `report_max_age_s + report_max_future_s`
  (bytes per row measured, times the rows that period holds);
- the same per hour and per 1,000 nodes per day.

    .venv/bin/python -m bench.bench_report_store --nodes 3000 --seconds 300 [--batch 20] \
        [--database-url postgresql://...] [-o json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, text

from meshctl.settings import Settings
from meshctl.store.db import Store
from meshctl.store.models import NodeRow, RegionRow
from meshctl.store.reports import Window

TABLES = ("reports", "report_batches", "report_nodes")
PRUNE_EVERY_S = 60.0  # as the control loop


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def wal_bytes(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("select wal_bytes from pg_stat_wal")).scalar_one())


def table_bytes(store: Store) -> dict[str, int]:
    """Each report table with its indexes, after a checkpoint (SQLite) or an ANALYZE (PostgreSQL)."""
    with store.engine.connect() as conn:
        if store.backend == "sqlite":
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            rows = conn.execute(text("select tbl_name, name from sqlite_schema where type in ('table', 'index')"))
            owner = {str(name): str(tbl) for tbl, name in rows}
            sizes: dict[str, int] = {}
            for name, size in conn.execute(text("select name, sum(pgsize) from dbstat group by name")):
                table = owner.get(str(name), str(name))
                sizes[table] = sizes.get(table, 0) + int(size)
            return {t: sizes.get(t, 0) for t in TABLES}
        return {t: int(conn.execute(text(f"select pg_total_relation_size('{t}')")).scalar_one()) for t in TABLES}


def fleet(store: Store, nodes: int, regions: int) -> list[str]:
    """Regions and nodes as rows (the join path is not what is measured here)."""
    ids = [secrets.token_hex(8) for _ in range(nodes)]
    with store.engine.begin() as conn:
        conn.execute(
            insert(RegionRow),
            [{"id": f"r{i}", "cloud": "aws", "name": None, "lat": 0.0, "lon": 0.0, "metro": None, "ordinal": i,
              "created_at": 0.0} for i in range(regions)],
        )  # fmt: skip
        conn.execute(
            insert(NodeRow),
            [{"id": n, "name": f"n{i}", "region": f"r{i % regions}", "public_key": "A" * 43 + "=",
              "endpoint": "192.0.2.1:51820", "overlay_ip": f"100.{96 + i // 65536}.{i // 256 % 256}.{i % 256}",
              "token_hash": secrets.token_hex(32), "joined_at": 0.0, "reports_accepted": 0}
             for i, n in enumerate(ids)],
        )  # fmt: skip
    return ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(admin_token="x")
    retention, seen_s = settings.report_window_retention_s, settings.report_seen_s
    workdir = Path(tempfile.mkdtemp(prefix="bench-reports-"))
    url = args.database_url or f"sqlite:///{workdir / 'reports.db'}"
    store = Store(url)
    store.open()
    rng = np.random.default_rng(18)
    ids = fleet(store, args.nodes, args.regions)
    peers = [rng.choice(args.nodes, args.peers, replace=False) for _ in range(args.nodes)]
    base = rng.uniform(5, 300, (args.nodes, args.peers))
    rate = args.nodes / args.window
    t0 = t = 1.7e9
    last_prune = t0
    windows = 0
    half: dict[str, float] = {}
    started = time.perf_counter()
    steps = int(args.seconds / args.window)
    for seq, step in enumerate(range(steps), start=1):
        if step == steps // 2:
            half = {"wchar": wchar(), "windows": windows, "wall": time.perf_counter()}
            if store.backend == "postgresql":
                half["wal"] = wal_bytes(store)
        batch: list[Window] = []
        for k, node in enumerate(rng.permutation(args.nodes)):
            n = args.peers
            p50 = np.round(base[node] + rng.exponential(0.3, n), 4)
            p90 = np.round(p50 + rng.exponential(1.0, n), 4)
            jitter = np.round(rng.exponential(0.5, n), 4)
            sent = np.full(n, 25.0)
            received = sent - (rng.random(n) < 0.05)
            at = t + args.window * k / args.nodes
            peer_ids = [ids[p if p != node else (node + 1) % args.nodes] for p in peers[node]]
            cols = np.stack([sent, received, p50, p90, jitter])
            batch.append(Window(ids[node], seq, at - args.window, at, args.window, peer_ids, cols))
            if len(batch) == args.batch:
                store.insert_reports(batch, "bench")
                windows += len(batch)
                batch = []
        if batch:
            store.insert_reports(batch, "bench")
            windows += len(batch)
        t += args.window
        if t - last_prune >= PRUNE_EVERY_S:
            last_prune = t
            store.prune_reports(t - retention, t - seen_s)
    wall = time.perf_counter() - started
    measured = windows - int(half["windows"])
    written = (wchar() - half["wchar"]) if store.backend == "sqlite" else (wal_bytes(store) - half["wal"])
    sizes = table_bytes(store)
    with store.engine.connect() as conn:
        seen_rows = int(conn.execute(text("select count(*) from reports")).scalar_one())
        kept, packed = conn.execute(text("select sum(reports), sum(length(data)) from report_batches")).one()
    store.close()
    shutil.rmtree(workdir)  # the SQLite file: ~450 MB at 3,000 nodes
    per_window_written = written / measured
    per_seen_row = sizes["reports"] / seen_rows
    bound = sizes["report_batches"] / kept * rate * (retention + PRUNE_EVERY_S)
    bound += per_seen_row * rate * (seen_s + PRUNE_EVERY_S) + sizes["report_nodes"]
    per_1000_day = per_window_written * (1000 / args.window) * 86400
    return {
        "database": store.backend,
        "nodes": args.nodes,
        "peers": args.peers,
        "window_s": args.window,
        "batch": args.batch,
        "reports_per_s": round(rate, 1),
        "simulated_s": args.seconds,
        "wall_s": round(wall, 1),
        "windows": windows,
        "packed_bytes_per_window": round(packed / kept),
        "written_bytes_per_window": round(per_window_written),
        "written_mb_per_s": round(per_window_written * rate / 1e6, 3),
        "seen_bytes_per_row": round(per_seen_row, 1),
        "batch_bytes_per_kept_window": round(sizes["report_batches"] / max(1, kept)),
        "table_bytes": sizes,
        "steady_state_bound_mb": round(bound / 1e6, 1),
        "written_gb_per_1000_nodes_day": round(per_1000_day / 1e9, 2),
        "bound_mb_per_1000_nodes": round(bound / 1e6 * 1000 / args.nodes, 1),
        "retention_s": retention,
        "seen_s": seen_s,
        "loadavg_1m": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3000)
    ap.add_argument("--regions", type=int, default=150)
    ap.add_argument("--peers", type=int, default=298)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=300.0, help="simulated seconds of reports")
    ap.add_argument("--batch", type=int, default=20, help="windows per group commit")
    ap.add_argument("--database-url", default=None, help="default: SQLite in a new temporary directory")
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    if not 0 < args.peers < args.nodes:
        ap.error(f"--peers {args.peers}: each node reports on other nodes, so 0 < peers < nodes ({args.nodes})")
    r = run(args)
    print(
        f"{r['nodes']} nodes x {r['peers']} peers, {r['window_s']:g} s windows ({r['reports_per_s']} reports/s), "
        f"batches of {r['batch']}, {r['database']}: {r['simulated_s']:g} s simulated in {r['wall_s']} s\n"
        f"packed: {r['packed_bytes_per_window']} B/window; written: {r['written_bytes_per_window']} B/window "
        f"= {r['written_mb_per_s']} MB/s at this fleet's rate, {r['written_gb_per_1000_nodes_day']} GB "
        f"per 1,000 nodes per day\n"
        f"kept: windows {r['batch_bytes_per_kept_window']} B each for {r['retention_s']:g} s, accepted seqs "
        f"{r['seen_bytes_per_row']} B each for {r['seen_s']:g} s; tables now {r['table_bytes']}\n"
        f"steady-state bound: {r['steady_state_bound_mb']} MB ({r['bound_mb_per_1000_nodes']} MB per 1,000 nodes); "
        f"load average {r['loadavg_1m']:.2f}"
    )
    if args.output == "json":
        print(json.dumps(r))


if __name__ == "__main__":
    main()
