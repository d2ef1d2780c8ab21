"""A report body decoded and checked, as `POST /v1/reports` does it, in one process (no HTTP).

The same window of P peers (the simulator's figures: RTTs with the agent's 4 decimals, a few
peers lost) in the two shapes `ReportIn` takes: peers as a list of objects (agents before the
columns) and as columns (the agent now, `probes.reporter.with_peer_columns`); each decoded by
the controller's hot path (`parse_report`: msgspec, then numpy columns) and by what a FastAPI
route would otherwise do (`ReportIn.model_validate_json`, pydantic). Median of `--rounds` runs
of `--repeat` decodes each, printed side by side with the ratios.

    .venv/bin/python -m bench.bench_report_decode [--peers 298] [--rounds 7] [--repeat 300] [-o json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from meshctl.lab.simulate import peer_entry, peers_json
from meshctl.service.report_codec import parse_report
from meshctl.wire.schemas import ReportIn


def body(peers: int, columns: bool) -> bytes:
    rng = random.Random(18)
    entries = [
        peer_entry(f"n-{i:016x}", rng.uniform(2, 250), 25, 100.0 if i % 50 == 7 else 0.0, rng.uniform(0.2, 0.5))
        for i in range(peers)
    ]
    head = json.dumps({"node_id": "n-self", "seq": 7, "window_start": "2026-11-30T18:00:00+00:00", "window_s": 5.0})
    return head[:-1].encode() + b', "peers": ' + peers_json(entries, columns) + b"}"


def per_call_us(fn: Callable[[bytes], Any], raw: bytes, rounds: int, repeat: int) -> float:
    fn(raw)
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn(raw)
        runs.append((time.perf_counter() - t0) / repeat * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=298, help="peers per report (150 regions, k=2: 298)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    rows, columns = body(args.peers, False), body(args.peers, True)
    same = parse_report(rows), parse_report(columns)
    assert same[0].peers.ids == same[1].peers.ids, "the two shapes must be the same report"

    def pydantic(raw: bytes) -> ReportIn:
        return ReportIn.model_validate_json(raw)

    result: dict[str, Any] = {"peers": args.peers, "rows_kib": round(len(rows) / 1024, 1)}
    result["columns_kib"] = round(len(columns) / 1024, 1)
    for name, raw in (("rows", rows), ("columns", columns)):
        result[f"{name}_hot_path_us"] = round(per_call_us(parse_report, raw, args.rounds, args.repeat), 1)
        result[f"{name}_pydantic_us"] = round(per_call_us(pydantic, raw, args.rounds, max(1, args.repeat // 5)), 1)
    if args.output == "json":
        print(json.dumps(result))
        return
    print(f"one report of {args.peers} peers: as rows {result['rows_kib']} KiB, as columns {result['columns_kib']} KiB")
    print(f"{'':34} {'rows':>10} {'columns':>10} {'columns/rows':>13}")
    for key, label in (("hot_path_us", "parse_report (msgspec), us"), ("pydantic_us", "ReportIn (pydantic), us")):
        r, c = result[f"rows_{key}"], result[f"columns_{key}"]
        print(f"{label:34} {r:>10} {c:>10} {c / r:>13.2f}")
    print(
        f"hot path over pydantic: rows {result['rows_hot_path_us'] / result['rows_pydantic_us']:.2f},"
        f" columns {result['columns_hot_path_us'] / result['columns_pydantic_us']:.2f}"
    )


if __name__ == "__main__":
    main()
