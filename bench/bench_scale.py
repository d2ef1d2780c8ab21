"""The scale simulator as a benchmark: R regions x M synthetic agents against a real controller.

Issue 18's target: 150 regions x 20 nodes, k=2, 5 s windows on one controller on this 2-core
machine: nothing lost, report p99 < 100 ms, recompute < 100 ms per tick, controller CPU < 70% of
both cores, route-query p99 < 20 ms, ingestion >= 0.5 of the same server's GET /healthz req/s.
The simulator (one asyncio process) is `meshctl.lab.simulate`; `meshctl lab simulate` shows it live.

    .venv/bin/python -m bench.bench_scale --regions 150 --nodes-per-region 20 --duration 60 \
        [--fault dark:3@20] [--database-url postgresql://...] [--replicas 1,3] [--before DIR] [-o json]

With `-o json` the last line is one JSON object (every figure below, by the keys of `simulate`).
On PostgreSQL each run gets a fresh database on the given server (dropped after it). `--replicas
1,3` runs the same fleet on 1 and then 3 replicas (each node reports to one of them, as behind a
load balancer) and prints how ingestion scaled: accepted reports/s, and the controllers' CPU per
report, of the last run against the first (`scaling` in the JSON line, with every run under `runs`).

`--before DIR` first runs the same fleet against the controller of another checkout (DIR, started
there on its PYTHONPATH; the simulator stays this tree's), then this tree's, and prints the two
side by side with their ratios (`before` in the JSON line): figures from one run of each, back to
back, so a change is not read off two different days.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meshctl.lab.simulate import SimConfig, SimError, simulate, summary


def add_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--regions", type=int, default=10)
    ap.add_argument("--nodes-per-region", type=int, default=3)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of reporting (after the joins)")
    ap.add_argument("--window", type=float, default=5.0, help="seconds per window (the agent's default 5)")
    ap.add_argument("-k", type=int, default=2, help="nodes probed per other region")
    ap.add_argument("--join-rate", type=float, default=0.0, help="joins/s (0: as fast as they are taken)")
    ap.add_argument("--fault", action="append", default=[], help="dark:REGION@T or lossy:A/B@T (id or index)")
    ap.add_argument("--lossy-percent", type=float, default=30.0)
    ap.add_argument("--database-url", default=None, help="default: SQLite in a new temporary directory")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections for the reports")
    ap.add_argument("--route-qps", type=float, default=20.0, help="GET /v1/routes/{src}/{dst} per second")
    ap.add_argument(
        "--replicas", default="1", help="controllers on one PostgreSQL store; a list (1,3) runs each in turn"
    )
    ap.add_argument("--before", type=Path, default=None, help="also run the controller of this checkout, first")
    ap.add_argument(
        "--peers-as",
        choices=["columns", "rows"],
        default="columns",
        help="a report's peers as the agent sends them (columns) or as agents before it did (rows)",
    )


def replica_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SimError(f"--replicas {text!r}: a count or a list of counts (1,3)") from None
    if not counts or min(counts) < 1:
        raise SimError(f"--replicas {text!r}: counts of at least 1")
    return counts


def config(args: argparse.Namespace, replicas: int = 1, tree: Path | None = None) -> SimConfig:
    return SimConfig(
        controller_tree=tree,
        replicas=replicas,
        regions=args.regions,
        nodes_per_region=args.nodes_per_region,
        duration_s=args.duration,
        window_s=args.window,
        k=args.k,
        join_rate=args.join_rate,
        faults=args.fault,
        lossy_percent=args.lossy_percent,
        database_url=args.database_url,
        connections=args.connections,
        route_qps=args.route_qps,
        peer_columns=args.peers_as == "columns",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(ap)
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    if args.before is not None and not (args.before / "meshctl" / "__main__.py").is_file():
        sys.exit(f"bench_scale: --before {args.before}: not a checkout of meshctl (no meshctl/__main__.py)")
    try:
        runs = []
        for replicas in replica_counts(args.replicas):
            before = None
            if args.before is not None:
                print(f"[before: the controller of {args.before}]", flush=True)
                before = simulate(config(args, replicas, args.before), say=lambda line: print(line, flush=True))
                print("\n" + "\n".join(summary(before)) + "\n", flush=True)
                print("[this tree]", flush=True)
            result = simulate(config(args, replicas), say=lambda line: print(line, flush=True))
            print()
            print("\n".join(summary(result)))
            print()
            if before is not None:
                print("\n".join(side_by_side(before, result, str(args.before))) + "\n")
                result = {**result, "before": before}
            runs.append(result)
    except SimError as exc:
        sys.exit(f"bench_scale: {exc}")
    if len(runs) > 1:
        result = {**runs[-1], "runs": runs, "scaling": scaling(runs[0], runs[-1])}
        print(scaling_line(result["scaling"]))
    if args.output == "json":
        print(json.dumps(result))


# (key, what it is, its target) for the side-by-side table of --before
COMPARED = [
    ("reports_per_s", "reports accepted/s", ""),
    ("offered_reports_per_s", "  offered/s", ""),
    ("report_p50_ms", "report p50, ms", ""),
    ("report_p99_ms", "report p99, ms", "< 100"),
    ("route_p99_ms", "route-query p99, ms", "< 20"),
    ("recompute_ms_p50", "recompute per tick p50, ms (wall)", "< 100"),
    ("recompute_ms_mean", "recompute per tick mean, ms (wall)", ""),
    ("controller_cpu_cores", "controller CPU, cores", ""),
    ("report_cpu_ms", "controller CPU per report, ms", ""),
    ("ratio_reports_healthz", "reports/s over GET /healthz/s", ">= 0.5"),
    ("healthz_per_s", "GET /healthz/s", ""),
    ("controller_rss_mib", "controller RSS, MiB", ""),
    ("joins_per_s", "joins/s", ">= 200"),
    ("lost", "lost", "0"),
]


def side_by_side(before: dict[str, Any], after: dict[str, Any], before_name: str) -> list[str]:
    """The two runs' figures in columns, with after/before."""
    lines = [f"{'':38} {'before':>12} {'this tree':>12} {'after/before':>13}  target   (before: {before_name})"]
    for key, label, target in COMPARED:
        a, b = before.get(key), after.get(key)
        ratio = f"{b / a:.2f}" if isinstance(a, int | float) and isinstance(b, int | float) and a else ""
        lines.append(f"{label:38} {a!s:>12} {b!s:>12} {ratio:>13}  {target}")
    for key, label in (("outage_to_drain_s", "outage-to-drain, s"),):
        if before.get(key) or after.get(key):
            lines.append(f"{label:38} {before.get(key)!s:>12} {after.get(key)!s:>12}")
    return lines


def scaling(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """How ingestion scaled from the first run to the last: accepted reports/s, and the
    controllers' CPU per accepted report (all replicas together)."""
    return {
        "replicas": [first["replicas"], last["replicas"]],
        "reports_per_s": [first["reports_per_s"], last["reports_per_s"]],
        "ratio": round(last["reports_per_s"] / first["reports_per_s"], 2) if first["reports_per_s"] else None,
        "report_cpu_ms": [first["report_cpu_ms"], last["report_cpu_ms"]],
        "offered_reports_per_s": [first["offered_reports_per_s"], last["offered_reports_per_s"]],
        "lost": [first["lost"], last["lost"]],
    }


def scaling_line(s: dict[str, Any]) -> str:
    (a, b), (ra, rb) = s["replicas"], s["reports_per_s"]
    ca, cb = s["report_cpu_ms"]
    return (
        f"ingestion with replicas: {a} -> {b}: {ra} -> {rb} reports/s accepted (ratio {s['ratio']}; offered"
        f" {s['offered_reports_per_s'][1]}/s), CPU per report {ca} -> {cb} ms, lost {s['lost']}"
    )


if __name__ == "__main__":
    main()
