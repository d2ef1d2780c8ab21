"""Links as columns (`LinkTable`): the control loop's passes over them agree with the per-link rules.

The references below are the per-link loops the loop ran before links became arrays: observers
counted per target, `link_cost` per link into the matrices, the lowest p50 per pair.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from meshctl.core.health import Baselines, HealthPolicy, observe
from meshctl.core.links import LinkBook, LinkTable, PairIndex, RegionLink
from meshctl.core.routing import RoutingWeights, cost_matrices, link_cost
from meshctl.service.snapshot import Snapshot, from_body, to_body
from meshctl.store.db import _json_text, _json_value

W = RoutingWeights()
POLICY = HealthPolicy()


def random_links(rng: random.Random, regions: list[str], now: float) -> dict[tuple[str, str], RegionLink]:
    links = {}
    for a in regions:
        for b in regions:
            if rng.random() < 0.6:
                p50 = rng.choice([math.inf, math.nan, rng.uniform(1, 300), 5.0])
                loss = rng.choice([0.0, 0.0, rng.uniform(0, 100), 100.0, 20.0])
                jitter = rng.choice([0.0, math.nan, rng.uniform(0, 30)])
                at = now - rng.choice([0.0, 1.0, W.stale_after_s, W.stale_after_s + 0.5, 500.0])
                links[(a, b)] = RegionLink(a, b, p50, p50 * 1.2, jitter, loss, at, rng.randint(1, 40))
    return links


def same(a: RegionLink, b: RegionLink) -> bool:
    """Equal, NaN equal to NaN."""
    return a[:2] == b[:2] and np.array_equal(np.array(a[2:]), np.array(b[2:]), equal_nan=True)


def reference_costs(regions: list[str], links: dict[tuple[str, str], RegionLink], now: float) -> np.ndarray:
    index = {x: i for i, x in enumerate(regions)}
    cost = np.full((len(regions), len(regions)), np.inf)
    for (src, dst), link in links.items():
        i, j = index.get(src), index.get(dst)
        if i is None or j is None or i == j or now - link.updated_at > W.stale_after_s:
            continue
        c = link_cost(link, W)
        if math.isfinite(c):
            cost[i, j] = c
    np.fill_diagonal(cost, 0.0)
    return cost


def reference_counts(
    regions: list[str], links: dict[tuple[str, str], RegionLink], baselines: dict[tuple[str, str], float]
) -> dict[str, tuple[int, int, str]]:
    """(observers, observers seeing it bad, which way most see it) per region, every region reporting."""
    total, loss, rtt = dict.fromkeys(regions, 0), dict.fromkeys(regions, 0), dict.fromkeys(regions, 0)
    for (src, target), link in links.items():
        if src == target or src not in total or target not in total:
            continue
        total[target] += 1
        base = baselines.get((src, target))
        if link.loss_percent >= POLICY.bad_loss_percent or not math.isfinite(link.rtt_p50_ms):
            loss[target] += 1
        elif base is not None and link.rtt_p50_ms > base * POLICY.bad_rtt_ratio + POLICY.bad_rtt_extra_ms:
            rtt[target] += 1
    return {r: (total[r], loss[r] + rtt[r], "high loss" if loss[r] >= rtt[r] else "high RTT") for r in regions}


@pytest.mark.parametrize("seed", range(12))
def test_costs_and_observations_match_the_per_link_rules(seed: int) -> None:
    rng = random.Random(seed)
    known = [f"aws:r{i}" for i in range(6)]
    elsewhere = ["gcp:gone", "azure:new"]  # in the links, not among the regions judged
    now = 1000.0
    links = random_links(rng, known + elsewhere, now)
    baselines = {k: rng.uniform(1, 200) for k in links if rng.random() < 0.7}
    table = LinkTable.of(links)
    for given in (links, table):
        np.testing.assert_array_equal(cost_matrices(known, given, W, now)[0], reference_costs(known, links, now))
        got = observe(known, given, baselines, dict.fromkeys(known, now), now, POLICY)
        for region, (seen, bad, kind) in reference_counts(known, links, baselines).items():
            o = got[region]
            assert (o.observers_total, o.observers_bad) == (seen, bad)
            assert (kind in o.reason) == (2 * bad > seen), o.reason
    as_array = np.array([baselines.get(k, math.nan) for k in table], dtype=np.float64)
    assert observe(known, table, as_array, dict.fromkeys(known, now), now, POLICY) == observe(
        known, links, baselines, dict.fromkeys(known, now), now, POLICY
    )


def test_a_table_reads_as_the_mapping_it_was_made_from() -> None:
    links = random_links(random.Random(3), ["aws:a", "gcp:b", "azure:c"], 50.0)
    table = LinkTable.of(links)
    assert len(table) == len(links) and list(table) == list(links)
    assert all(same(table[k], v) and same(got, v) for (k, v), got in zip(links.items(), table.values(), strict=True))
    assert dict(table.items()).keys() == links.keys() and set(table.keys()) == set(links)
    assert next(iter(links)) in table and ("aws:a", "nowhere") not in table
    src, dst = table.region_index(["gcp:b", "aws:a"])
    for (a, b), i, j in zip(table, src.tolist(), dst.tolist(), strict=True):
        assert i == {"gcp:b": 0, "aws:a": 1}.get(a, -1) and j == {"gcp:b": 0, "aws:a": 1}.get(b, -1)


def test_a_fold_gives_a_table_of_its_medians() -> None:
    book = LinkBook()
    nan = np.full(2, np.nan)
    for i, p50 in enumerate((10.0, 30.0, 20.0)):
        book.record_report(
            f"o{i}",
            "aws:a",
            ["t1", "t2"],
            {"t1": "gcp:b", "t2": "aws:a"}.get,
            np.full(2, p50),
            nan,
            nan,
            np.zeros(2),
            5.0,
        )
    table = book.fold(6.0, 10.0)
    assert isinstance(table, LinkTable) and list(table) == [("aws:a", "gcp:b")]  # the self pair left out
    assert table[("aws:a", "gcp:b")] == RegionLink("aws:a", "gcp:b", 20.0, 20.0, 0.0, 0.0, 5.0, 3)


def test_baselines_keep_the_lowest_rtt_per_pair_whatever_the_row_order() -> None:
    first = {
        ("a:x", "b:y"): RegionLink("a:x", "b:y", 40.0, 40.0, 0.0, 0.0, 1.0, 1),
        ("b:y", "a:x"): RegionLink("b:y", "a:x", math.inf, math.inf, 0.0, 100.0, 1.0, 1),
    }
    second = {  # other order, other names order, a new pair
        ("c:z", "a:x"): RegionLink("c:z", "a:x", 7.0, 7.0, 0.0, 0.0, 2.0, 1),
        ("b:y", "a:x"): RegionLink("b:y", "a:x", 90.0, 90.0, 0.0, 0.0, 2.0, 1),
        ("a:x", "b:y"): RegionLink("a:x", "b:y", 55.0, 55.0, 0.0, 0.0, 2.0, 1),
    }
    b = Baselines()
    assert b.update(LinkTable.of(first)).tolist()[0] == 40.0 and math.isnan(b.update(LinkTable.of(first))[1])
    assert b.update(LinkTable.of(second)).tolist() == [7.0, 90.0, 40.0]
    index = PairIndex()
    assert index.ids(LinkTable.of(second)).tolist() == [0, 1, 2]
    assert index.ids(LinkTable.of(first)).tolist() == [2, 1] and len(index.pairs) == 3


def test_a_published_table_comes_back_with_its_links() -> None:
    regions = ["aws:a", "gcp:b", "azure:c"]
    now = 100.0
    links = random_links(random.Random(5), regions, now)
    table = LinkTable.of(links)
    cost, rtt = cost_matrices(regions, table, W, now)
    from meshctl.core.routing import compute_routes

    snap = Snapshot(1, now, compute_routes(regions, cost, rtt, frozenset(), W, None), cost, rtt, links=table)
    text = _json_text(to_body(snap))  # as the store writes it: valid JSON, no NaN or Infinity
    back = from_body(1, now, json.loads(text))
    assert list(back.links) == list(links)
    for key, link in links.items():
        got = back.links[key]
        for field in ("rtt_p50_ms", "rtt_p90_ms", "jitter_ms"):
            want = getattr(link, field)
            assert getattr(got, field) == (round(want, 3) if math.isfinite(want) else math.inf)
        assert (got.loss_percent, got.updated_at, got.samples) == (link.loss_percent, link.updated_at, link.samples)


def test_json_columns_written_before_still_read() -> None:
    """Rows json.dumps wrote (NaN and Infinity were allowed) are read as before."""
    assert _json_value(json.dumps({"x": math.nan, "y": [math.inf]}))["y"] == [math.inf]
    assert _json_value(_json_text({"x": math.nan})) == {"x": None}
