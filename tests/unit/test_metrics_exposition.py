"""The per-link series of `/metrics` written directly (`link_exposition`, the fast path) against
prometheus_client's own rendering of `MeshCollector(links=True)` (the reference), on generated
links with missing RTTs, odd region names, zero, large and tiny values: every sample the same,
parsed by prometheus_client's parser; and the scrape as served has each family once."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshctl.core.links import RegionLink
from meshctl.service.metrics import LINK_FAMILIES, MeshCollector, Metrics, link_exposition
from meshctl.service.snapshot import Snapshot

NOW = 1_800_000_000.0


@dataclass
class View:
    snapshot: Snapshot
    regions: Mapping[str, object] = field(default_factory=dict)
    clock: Callable[[], float] = lambda: NOW

    def region_state(self, region_id: str) -> str:
        return "active"


def generated_links(seed: int, n: int) -> dict[tuple[str, str], RegionLink]:
    rng = random.Random(seed)
    regions = [f"{c}:r-{i}" for i, c in zip(range(n), ["aws", "gcp", "azure"] * n, strict=False)]
    regions += ['odd:quote"back\\slash', "odd:new\nline"]
    links = {}
    for a in regions:
        for b in regions:
            if a == b:
                continue
            rtt = rng.choice([math.inf, 0.0, 1e-9, 123456789.0, rng.uniform(0.1, 400.0)])
            links[(a, b)] = RegionLink(
                a, b, rtt, rtt * 1.1 if math.isfinite(rtt) else math.inf,
                rng.choice([math.inf, 0.0, rng.uniform(0, 30)]), rng.choice([0.0, 100.0, rng.uniform(0, 100)]),
                NOW - rng.choice([0.0, 1e7, rng.uniform(0, 60)]) + rng.choice([0.0, 5.0]), rng.randint(0, 500),
            )  # fmt: skip
    return links


def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    out = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.add((s.name, tuple(sorted(s.labels.items())), s.value))
    return out


def test_fast_link_series_equal_the_reference() -> None:
    for seed in range(5):
        snap = Snapshot(links=generated_links(seed, 7))
        registry = CollectorRegistry()
        registry.register(MeshCollector(View(snap), links=True))
        reference = generate_latest(registry).decode()
        reference_links = "".join(  # the reference also has region states and relayed routes
            "# HELP " + block
            for block in reference.split("# HELP ")
            if block.startswith(tuple(n for n, _ in LINK_FAMILIES))
        )
        fast = link_exposition(snap, NOW)
        assert samples(fast) == samples(reference_links)
        assert len(samples(fast)) > 5 * 40, "the generated links are not trivial"
        for name, text in LINK_FAMILIES:
            assert f"# HELP {name} {text}\n# TYPE {name} gauge\n" in fast and f"# TYPE {name} gauge" in reference


def test_the_scrape_has_each_family_once() -> None:
    metrics = Metrics()
    metrics.watch(View(Snapshot(links=generated_links(1, 4)), regions={"aws:r-0": object()}))
    text = metrics.render().decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)), "a family twice"
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {n for n, _ in LINK_FAMILIES} | {"mesh_region_state", "mesh_routes_relayed"} <= names
