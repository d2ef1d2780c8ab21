"""Routing, link folding, placement, IPAM and WireGuard rendering: the pure core."""

from __future__ import annotations

import ipaddress
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.core.catalog import CATALOG
from meshctl.core.ipam import SubnetExhausted, next_address, region_subnet
from meshctl.core.links import LinkBook, RegionLink
from meshctl.core.placement import NoHealthyRegion, place
from meshctl.core.regions import InvalidRegionId, parse_region_id
from meshctl.core.routing import RoutingWeights, compute_routes, cost_matrices, diff_routes, explain_route
from meshctl.core.wgconf import PeerConf, render_setconf, render_wg_quick

W = RoutingWeights()
INF = math.inf


def mat(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=float)


def test_relay_when_much_cheaper_direct_otherwise() -> None:
    regs = ["A", "B", "C"]
    slow = mat([[0, 20, 100], [20, 0, 20], [100, 20, 0]])
    t = compute_routes(regs, slow, slow, set(), W)
    assert t.path("A", "C") == ["A", "B", "C"]
    assert t.route("A", "C").rtt_ms == 40 and t.route("A", "C").cost == 40 + W.relay_penalty_ms
    fast = slow.copy()
    fast[0, 2] = fast[2, 0] = 30
    assert compute_routes(regs, fast, fast, set(), W).path("A", "C") == ["A", "C"]
    assert compute_routes(regs, slow, slow, {"B"}, W).path("A", "C") == ["A", "C"]


def test_missing_link_is_unusable_not_free() -> None:
    regs = ["A", "B", "C"]
    m = mat([[0, INF, INF], [INF, 0, 5], [INF, 5, 0]])
    t = compute_routes(regs, m, m, set(), W)
    assert t.path("A", "C") is None and not t.route("A", "C").reachable


def test_stale_link_dropped_from_cost_matrix() -> None:
    links = {("a:x", "b:y"): RegionLink("a:x", "b:y", 10, 12, 1, 0, updated_at=0.0, samples=1)}
    cost, _ = cost_matrices(["a:x", "b:y"], links, W, now=W.stale_after_s + 1)
    assert math.isinf(cost[0, 1])
    cost, _ = cost_matrices(["a:x", "b:y"], links, W, now=1.0)
    assert cost[0, 1] == 10 + W.jitter_weight * 1


def test_two_relays_when_only_path() -> None:
    regs = ["A", "B", "C", "D"]
    m = np.full((4, 4), INF)
    np.fill_diagonal(m, 0)
    for a, b in [(0, 1), (1, 2), (2, 3)]:
        m[a, b] = m[b, a] = 10
    t = compute_routes(regs, m, m, set(), W)
    assert t.path("A", "D") == ["A", "B", "C", "D"]
    assert t.route("A", "D").cost == 30 + 2 * W.relay_penalty_ms
    assert compute_routes(regs, m, m, {"C"}, W).path("A", "D") is None
    assert compute_routes(regs, m, m, set(), RoutingWeights(max_relays=1)).path("A", "D") is None


def test_hysteresis_keeps_previous_within_margin_and_switches_beyond() -> None:
    regs = ["A", "B", "C"]
    m = mat([[0, 20, 100], [20, 0, 20], [100, 20, 0]])
    prev = compute_routes(regs, m, m, set(), W)
    near = m.copy()
    near[0, 2] = 42.5  # direct now cheaper than 41 + margin? 41 <= 42.5*1.05: keep relay
    kept = compute_routes(regs, near, near, set(), W, prev)
    assert kept.path("A", "C") == ["A", "B", "C"]
    assert diff_routes(prev, kept) == [] or ("A", "C") not in [(a, b) for a, b, *_ in diff_routes(prev, kept)]
    far = m.copy()
    far[0, 2] = 30.0
    moved = compute_routes(regs, far, far, set(), W, prev)
    assert moved.path("A", "C") == ["A", "C"]
    assert ("A", "C", ["A", "B", "C"], ["A", "C"]) in diff_routes(prev, moved)


def test_healed_direct_link_wins_back_a_dearer_relay_within_the_margin() -> None:
    """A route that moved to a relay while its direct link was down comes back once the link is no
    dearer than the relay, though the relay is within the margin (it would otherwise stay for good:
    the relay lab's healed pairs have relays 3-6% dearer than their direct links)."""
    regs = ["A", "B", "C"]
    down = mat([[0, 20, math.inf], [20, 0, 20], [math.inf, 20, 0]])
    on_relay = compute_routes(regs, down, down, set(), W)
    assert on_relay.path("A", "C") == ["A", "B", "C"]
    relay_cost = float(on_relay.cost[0, 2])
    healed = down.copy()
    healed[0, 2] = healed[2, 0] = relay_cost * 0.99  # direct cheaper by 1%: inside the 5% margin
    back = compute_routes(regs, healed, healed, set(), W, on_relay)
    assert back.path("A", "C") == ["A", "C"] and back.path("C", "A") == ["C", "A"]
    # no flapping: the relay wins again only when it is cheaper than direct by the margin
    noisy = healed.copy()
    noisy[0, 2] = relay_cost * 1.04
    assert compute_routes(regs, noisy, noisy, set(), W, back).path("A", "C") == ["A", "C"]
    # a relay cheaper than direct, if by less than the margin, is still kept
    assert compute_routes(regs, noisy, noisy, set(), W, on_relay).path("A", "C") == ["A", "B", "C"]


def test_relay_needs_margin_over_direct() -> None:
    regs = ["A", "B", "C"]
    m = mat([[0, 20, 42], [20, 0, 20], [42, 20, 0]])  # relay 41 vs direct 42: under 5% better
    assert compute_routes(regs, m, m, set(), W).path("A", "C") == ["A", "C"]


def test_explain_lists_candidates_and_notes() -> None:
    regs = ["A", "B", "C", "D"]
    m = mat([[0, 20, 100, 60], [20, 0, 20, 50], [100, 20, 0, 50], [60, 50, 50, 0]])
    t = compute_routes(regs, m, m, {"D"}, W)
    cands = explain_route(regs, m, m, {"D"}, W, "A", "C", table=t)
    assert cands[0].chosen and cands[0].path == ["A", "B", "C"]
    by_path = {tuple(c.path): c for c in cands}
    assert by_path[("A", "C")].cost == 100 and not by_path[("A", "C")].chosen
    assert "drained" in (by_path[("A", "D", "C")].note or "") and not by_path[("A", "D", "C")].usable


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 7),
    seed=st.integers(0, 2**31),
    density=st.floats(0.3, 1.0),
    penalty=st.sampled_from([0.0, 1.0, 7.5]),
)
def test_costs_match_brute_force_over_two_relay_paths(n: int, seed: int, density: float, penalty: float) -> None:
    rng = np.random.default_rng(seed)
    m = rng.uniform(1, 200, (n, n))
    m[rng.random((n, n)) > density] = INF
    np.fill_diagonal(m, 0)
    drained = {i for i in range(n) if rng.random() < 0.25}
    regs = [f"r{i}" for i in range(n)]
    w = RoutingWeights(hysteresis_ratio=0.0, relay_penalty_ms=penalty)
    t = compute_routes(regs, m, m, {regs[i] for i in drained}, w)
    for i, j in itertools.permutations(range(n), 2):
        best = m[i, j]
        relays = [k for k in range(n) if k not in (i, j) and k not in drained]
        for k in relays:
            best = min(best, m[i, k] + m[k, j] + penalty)
            for k2 in relays:
                if k2 != k:
                    best = min(best, m[i, k] + m[k, k2] + m[k2, j] + 2 * penalty)
        got = t.cost[i, j]
        assert (math.isinf(best) and math.isinf(got)) or abs(best - got) < 0.05, (i, j, best, got)
        path = t.path(regs[i], regs[j])
        if path:
            assert len(path) <= 4 and not {int(p[1:]) for p in path[1:-1]} & drained


def test_linkbook_median_resists_one_liar() -> None:
    book = LinkBook()
    for n, rtt in enumerate([80.0, 81.0, 82.0, 1.0, 79.0]):  # one node lies low
        book.record(f"o{n}", "aws:a", f"t{n}", "gcp:b", rtt, rtt + 2, 0.5, 0.0, at=100.0)
    book.record("o9", "aws:a", "t9", "gcp:b", None, None, None, 100.0, at=100.0)  # one broken node
    link = book.fold(now=101.0, stale_after_s=10)[("aws:a", "gcp:b")]
    assert 79.0 <= link.rtt_p50_ms <= 82.0 and link.samples == 6 and link.loss_percent == 0.0
    assert book.fold(now=200.0, stale_after_s=10) == {}
    for n in range(5):
        book.forget_node(f"o{n}")
    assert len(book) == 1


def test_placement_prefers_same_metro_other_cloud() -> None:
    regions = {r: CATALOG[r] for r in ["aws:us-east-1", "azure:eastus", "gcp:us-central1", "gcp:europe-west3"]}
    states = dict.fromkeys(regions, "active")
    assert place(regions, states, None, near="aws:us-east-1").region == "aws:us-east-1"
    states["aws:us-east-1"] = "drained"
    p = place(regions, states, None, near="aws:us-east-1")
    assert p.region == "azure:eastus" and "same metro" in p.reason
    assert place(regions, states, None, lat=50.0, lon=8.0).region == "gcp:europe-west3"
    with pytest.raises(NoHealthyRegion):
        place(regions, dict.fromkeys(regions, "drained"), None, near="aws:us-east-1")


def test_region_ids() -> None:
    assert parse_region_id("aws:us-east-1") == ("aws", "us-east-1")
    assert parse_region_id("oci:us-ashburn-1") == ("oci", "us-ashburn-1")
    for bad in ["aws", "AWS:us-east-1", "aws:", ":x", "aws:us east", "a" * 70 + ":x"]:
        with pytest.raises(InvalidRegionId):
            parse_region_id(bad)


def test_ipam_never_reuses_and_stays_in_region_subnet() -> None:
    net = region_subnet("100.96.0.0/12", 3, 22)
    assert net == ipaddress.IPv4Network("100.96.12.0/22")
    used: set[str] = set()
    for _ in range(50):
        used.add(next_address(net, used))
    assert len(used) == 50 and all(ipaddress.IPv4Address(a) in net for a in used)
    assert "100.96.12.0" not in used and "100.96.12.1" not in used
    with pytest.raises(SubnetExhausted):
        region_subnet("100.96.0.0/12", 1024, 22)
    tiny = ipaddress.IPv4Network("10.0.0.0/30")
    with pytest.raises(SubnetExhausted):
        next_address(tiny, {"10.0.0.2"})


def test_wg_quick_rendering_and_injection() -> None:
    key = "A" * 43 + "="
    text = render_wg_quick("100.96.0.2/12", 51820, [PeerConf(key, "192.0.2.1:51820", ["100.96.0.3/32"])])
    assert "PrivateKey = <PRIVATE_KEY" in text and "Endpoint = 192.0.2.1:51820" in text
    assert "PrivateKey" not in render_setconf(None, 51820, [])
    with pytest.raises(ValueError):
        render_wg_quick("100.96.0.2/12", 51820, [PeerConf(key + "\nPostUp = rm -rf /", None, ["100.96.0.3/32"])])
    with pytest.raises(ValueError):
        render_wg_quick("100.96.0.2/12", 51820, [PeerConf(key, "1.2.3.4:1\nPostUp=x", ["100.96.0.3/32"])])
    with pytest.raises(ValueError):
        render_wg_quick("100.96.0.2/12", 51820, [PeerConf(key, None, ["0.0.0.0/0\nDNS=1.1.1.1"])])


def test_explain_always_shows_the_direct_link_even_when_many_relays_beat_it() -> None:
    regs = [f"R{i}" for i in range(8)]
    rows = [[0.0 if i == j else 10.0 for j in range(8)] for i in range(8)]
    rows[0][1] = rows[1][0] = 500.0  # every relay path (20-30) beats the direct link
    m = mat(rows)
    cands = explain_route(regs, m, m, set(), W, "R0", "R1", table=compute_routes(regs, m, m, set(), W), limit=4)
    direct = [c for c in cands if c.path == ["R0", "R1"]]
    assert len(direct) == 1 and direct[0].cost == 500 and direct[0].usable and not direct[0].chosen
    assert len(cands) == 5 and cands[0].chosen


def test_compiled_kernel_matches_the_numpy_reference() -> None:
    """The numba min-plus kernel gives exactly what the numpy one does (costs and relay indexes)."""
    from meshctl.core import routing

    assert routing._kernel is not None, "numba is a dependency: the compiled kernel should be in use"
    rng = np.random.default_rng(11)
    for r in (1, 2, 3, 17, 150, 300):
        units = rng.integers(0, routing._UNUSABLE + 1, size=(r, r)).astype(np.int32)
        units[rng.random((r, r)) < 0.1] = routing._UNUSABLE  # missing links
        relays = np.flatnonzero(rng.random(r) > 0.2)  # some regions drained
        compiled = routing._min_plus(units, units, relays)
        reference = routing._min_plus(units, units, relays, use_kernel=False)
        assert np.array_equal(compiled, reference), r
