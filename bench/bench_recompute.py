"""The leader's recompute at fleet scale, stage by stage, in one process (no HTTP, no store).

R regions x M nodes, each reporting k nodes of every other region (the agent's fan-out), RTTs
with the agent's noise; one window of every node is recorded, then each stage of a control-loop
tick is timed (median of `--rounds`): the fold into region links, the RTT baselines, the health
observations, the cost matrices, the route search, the link history's buffer, and the route
table's publication (its JSON body, encoded as the store writes it). With `--before DIR` the same
stages run first against another source tree (e.g. `git archive <commit> | tar -x -C DIR`), in a
process of their own, and the ratios are printed side by side.

    .venv/bin/python -m bench.bench_recompute [--regions 150 --nodes-per-region 20 -k 2]
        [--rounds 7] [--before DIR] [-o json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parents[1]
STAGES = ("fold", "baselines", "observe", "cost_matrices", "routes", "history", "publish")


def measure(regions: int, per_region: int, k: int, rounds: int) -> dict[str, Any]:
    """Stage timings of the tree whose `meshctl` this process imports."""
    import meshctl
    from meshctl.core.health import HealthPolicy, observe
    from meshctl.core.links import LinkBook
    from meshctl.core.routing import RoutingWeights, compute_routes, cost_matrices, warm_up
    from meshctl.service.history import MinuteBuffer
    from meshctl.service.snapshot import Snapshot, to_body

    warm_up()
    rng = np.random.default_rng(1)
    names = [f"aws:bench-{i:03d}" for i in range(regions)]
    nodes = [(f"n-{r}-{m}", names[r]) for r in range(regions) for m in range(per_region)]
    region_of = dict(nodes).get
    base = rng.uniform(5, 250, (regions, regions))
    book, now = LinkBook(loss_smoothing=0.5), 1000.0
    for m_round in range(2):  # two windows: the second finds its slots (the steady state)
        for i, (node, region) in enumerate(nodes):
            r = i // per_region
            targets = [f"n-{o}-{(i + j) % per_region}" for o in range(regions) if o != r for j in range(k)]
            rtt = np.repeat(np.delete(base[r], r), k) * rng.uniform(0.98, 1.05, len(targets))
            rtt = np.round(rtt, 4)
            loss = np.zeros(len(targets))
            book.record_report(node, region, targets, region_of, rtt, rtt * 1.03, rtt * 0.01, loss, now + m_round)
    w, policy = RoutingWeights(), HealthPolicy()
    last = dict.fromkeys(names, now)
    timings: dict[str, list[float]] = {s: [] for s in STAGES}

    def timed(stage: str, call: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        out = call(*args)
        timings[stage].append(time.perf_counter() - t0)
        return out

    try:  # this tree: links as columns, baselines as arrays, JSON columns written by msgspec
        from meshctl.core.health import Baselines  # type: ignore[attr-defined,unused-ignore]
        from meshctl.store.db import _json_text as encode  # type: ignore[attr-defined,unused-ignore]

        baselines: Any = Baselines()

        def lowest(links: Any) -> Any:
            return baselines.update(links)
    except ImportError:  # the code before: a dict of links, baselines kept per link, json.dumps
        encode = json.dumps
        kept: dict[tuple[str, str], float] = {}

        def lowest(links: Any) -> Any:
            for key, link in links.items():
                if link.rtt_p50_ms == link.rtt_p50_ms and link.rtt_p50_ms < math.inf:
                    old = kept.get(key)
                    kept[key] = link.rtt_p50_ms if old is None else min(old, link.rtt_p50_ms)
            return kept

    buffer = MinuteBuffer()
    for i in range(rounds):
        at = now + 2 + i * 0.01  # the same samples: a tick between two windows
        links = timed("fold", book.fold, at, 20.0)
        b = timed("baselines", lowest, links)
        timed("observe", observe, names, links, b, last, at, policy)
        cost, rtt = timed("cost_matrices", cost_matrices, names, links, w, at)
        table = timed("routes", compute_routes, names, cost, rtt, frozenset(), w, None)
        timed("history", buffer.observe, links)
        snap = Snapshot(1, at, table, cost, rtt, frozenset(), links)
        timed("publish", lambda s: encode(to_body(s)), snap)
    ms = {s: round(statistics.median(v) * 1000, 2) for s, v in timings.items()}
    return {
        "tree": str(Path(meshctl.__file__).resolve().parents[1]),
        "regions": regions,
        "nodes": len(nodes),
        "links": len(links),
        "samples": regions * per_region * (regions - 1) * k,
        "stage_ms": ms,
        "tick_ms": round(sum(v for s, v in ms.items() if s != "publish"), 2),
    }


def in_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`measure` in a process whose `meshctl` is the one in `tree` (its directory first on the path)."""
    argv = [__file__, "--child", "--regions", str(args.regions), "--nodes-per-region", str(args.nodes_per_region)]
    argv += ["-k", str(args.k), "--rounds", str(args.rounds)]
    code = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path({__file__!r}, run_name='__main__')"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=150)
    ap.add_argument("--nodes-per-region", type=int, default=20)
    ap.add_argument("-k", type=int, default=2, help="nodes probed per other region")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--before", type=Path, default=None, help="another source tree to run first, side by side")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.regions, args.nodes_per_region, args.k, args.rounds)))
        return
    runs = ([in_tree(args.before.resolve(), args)] if args.before else []) + [in_tree(HERE, args)]
    first = runs[0]
    print(
        f"{first['regions']} regions x {args.nodes_per_region} nodes = {first['nodes']} nodes, k={args.k}:"
        f" {first['samples']:,} samples folded into {first['links']:,} region links; median of {args.rounds} ticks, ms"
    )
    print(f"{'stage':<14}" + "".join(f"{('before' if r is not runs[-1] else 'this tree'):>12}" for r in runs))
    for stage in (*STAGES, "tick"):
        values = [r["tick_ms"] if stage == "tick" else r["stage_ms"][stage] for r in runs]
        ratio = f"   {values[0] / values[-1]:.1f}x" if len(runs) == 2 and values[-1] else ""
        print(f"{stage:<14}" + "".join(f"{v:>12}" for v in values) + ratio)
    print("(tick: every stage but publish, which runs only when routes or region states change)")
    if args.output == "json":
        print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
