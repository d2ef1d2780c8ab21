"""Route recomputation: meshctl's vectorised search vs networkx all-pairs Dijkstra.

Graphs: the 69 measured regions of ../shared/data (Skyplane RTTs), grown to 150, 500 and
1000 regions by placing synthetic regions on the globe with RTT = 1.3 x great-circle
distance at 2/3 c plus 2 ms, and +-15% noise (so relays matter as in the real data).
networkx runs on the same weighted digraph (edge weight = link cost, + relay penalty on
edges out of a relay is not expressible there, so networkx solves the easier unlimited-hop
problem without penalties: a generous reference). Timings are medians in one run.
Run: .venv/bin/python -m bench.bench_routes
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import networkx as nx
import numpy as np

from meshctl.core.catalog import CATALOG
from meshctl.core.regions import haversine_km
from meshctl.core.routing import RoutingWeights, compute_routes
from meshctl.core.rttdata import parse_skyplane_csv

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cloud-rtt-skyplane.csv"
TARGETS_MS = {150: 5.0, 1000: 1000.0}


def graph(r: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    measured = parse_skyplane_csv(DATA.read_text()) if DATA.exists() else {}
    base = sorted({a for a, _ in measured})
    names = base[:r]
    coords = [(CATALOG[n].lat, CATALOG[n].lon) for n in names]
    while len(names) < r:
        names.append(f"syn:r{len(names)}")
        coords.append((math.degrees(math.asin(rng.uniform(-0.9, 0.9))), rng.uniform(-180, 180)))
    m = np.zeros((r, r))
    for i in range(r):
        for j in range(r):
            if i != j:
                rtt = measured.get((names[i], names[j]))
                if rtt is None:
                    km = haversine_km(*coords[i], *coords[j])
                    rtt = (2 * km * 1.3 / 200.0 + 2.0) * rng.uniform(0.85, 1.15)
                m[i, j] = rtt
    return names, m


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs) * 1000


def main() -> None:
    rng = np.random.default_rng(7)
    w = RoutingWeights()
    print(f"{'regions':>7} {'meshctl ms':>11} {'relayed %':>9} {'networkx ms':>12} {'speed-up':>9}  target")
    for r in (50, 150, 500, 1000):
        names, m = graph(r, rng)
        table = compute_routes(names, m, m, set(), w)
        ours = timed(lambda names=names, m=m: compute_routes(names, m, m, set(), w), 15 if r <= 150 else 3)
        relayed = 100.0 * float(np.mean(table.relays[..., 0] >= 0))
        g = nx.DiGraph()
        g.add_weighted_edges_from((i, j, m[i, j]) for i in range(r) for j in range(r) if i != j)
        sources = list(range(r)) if r <= 150 else list(range(0, r, r // 20))
        t0 = time.perf_counter()
        for s in sources:
            nx.single_source_dijkstra_path_length(g, s)
        nx_ms = (time.perf_counter() - t0) * 1000 * r / len(sources)
        note = "" if len(sources) == r else f" (networkx timed on {len(sources)} sources, scaled)"
        target = TARGETS_MS.get(r)
        verdict = "" if target is None else f"< {target:g} ms: {'PASS' if ours < target else 'FAIL'}"
        if r == 150:
            verdict += f"; >= 50x: {'PASS' if nx_ms / ours >= 50 else 'FAIL'}"
        print(f"{r:>7} {ours:>11.2f} {relayed:>9.1f} {nx_ms:>12.0f} {nx_ms / ours:>8.0f}x  {verdict}{note}")


if __name__ == "__main__":
    main()
