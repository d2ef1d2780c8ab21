"""Prometheus metrics of one controller process (own registry: several apps per process in tests).

The per-link and per-region series come from `MeshCollector`, which reads the current snapshot
at scrape time: at 150 regions that is 22,350 series per link metric, too many to keep as
labelled gauges updated on every tick.

A scrape is made in a worker thread (`exposition`): at 150 regions it is ~112,000 series and a
few hundred milliseconds of Python, which on the event loop would hold every other request
(route queries, reports, long polls) for that long. The collector reads only the snapshot, a
frozen value, and copies the region list in one step, so a thread may read them.

Times are in seconds, as Prometheus wants base units (`promtool check metrics` refuses `_ms`):
`mesh_link_rtt_p50_seconds`, not `mesh_link_rtt_p50_ms`; Grafana shows them in ms.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from meshctl.service.snapshot import Snapshot

REGION_STATES = ("active", "degraded", "drained")
LINK_LABELS = ["src", "dst", "src_cloud", "dst_cloud"]
LINK_FAMILIES = (
    ("mesh_link_rtt_p50_seconds", "Median RTT of the region link"),
    ("mesh_link_rtt_p90_seconds", "90th percentile RTT of the region link"),
    ("mesh_link_loss_ratio", "Packet loss of the region link (0..1)"),
    ("mesh_link_jitter_seconds", "Jitter of the region link"),
    ("mesh_link_age_seconds", "Seconds since the region link was last measured"),
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reports_ingested = Counter("mesh_reports_ingested", "Reports accepted", registry=r)
        self.reports_rejected = Counter("mesh_reports_rejected", "Reports refused", ["reason"], registry=r)
        self.route_generation = Gauge("mesh_route_generation", "Current route table generation", registry=r)
        self.recompute_seconds = Histogram(
            "mesh_route_recompute_seconds",
            "Time to recompute links, health and routes",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.regions = Gauge("mesh_regions", "Regions by state", ["state"], registry=r)
        self.nodes = Gauge("mesh_nodes", "Nodes by liveness", ["up"], registry=r)
        self.events = Counter("mesh_events", "Events recorded", ["kind"], registry=r)
        self.is_leader = Gauge("mesh_is_leader", "1 when this replica holds the leader lease", registry=r)
        self.leader_since = Gauge("mesh_leader_since_seconds", "Epoch time this replica became leader", registry=r)
        self.replica_lag = Gauge(
            "mesh_replica_lag_generations",
            "Generations this replica is behind the newest published",
            ["replica"],
            registry=r,
        )
        self.routes_changed = Counter(
            "mesh_routes_changed", "Region pairs whose route changed, over all new generations", registry=r
        )
        self.store_up = Gauge("mesh_store_up", "1 when the database answers", registry=r)
        self.frozen = Gauge("mesh_frozen", "1 while the controller fails static", registry=r)
        self.clock_offset = Gauge(
            "mesh_node_clock_offset_seconds",
            "How far a node's clock runs ahead (+) or behind (-) the controller's, as last measured",
            ["node"],
            registry=r,
        )

        self._mesh: MeshView | None = None

    async def exposition(self) -> bytes:
        """The text exposition of every series, made off the event loop (see the module's docstring)."""
        return await asyncio.to_thread(self.render)

    def render(self) -> bytes:
        """Every series: the registry's, then the per-link families written by `link_exposition`."""
        text = generate_latest(self.registry)
        mesh = self._mesh
        if mesh is None:
            return text
        return text + link_exposition(mesh.snapshot, mesh.clock()).encode()

    def watch(self, mesh: MeshView) -> None:
        """Export the per-link and per-region series of `mesh`, read at each scrape."""
        self._mesh = mesh
        self.registry.register(MeshCollector(mesh, links=False))


class MeshView(Protocol):
    """What the collector reads (the controller has these)."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    def region_state(self, region_id: str) -> str: ...

    @property
    def regions(self) -> Mapping[str, object]: ...


def _cloud(region_id: str) -> str:
    return region_id.partition(":")[0]


class MeshCollector(Collector):
    """Per region pair link gauges, region states and the relayed route count, from the snapshot."""

    def __init__(self, mesh: MeshView, links: bool = True) -> None:
        self.mesh = mesh
        self.links = links  # False: `link_exposition` writes them (this is its reference)

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape; registering must not call collect()

    def collect(self) -> Iterator[Metric]:
        mesh = self.mesh
        snap = mesh.snapshot
        now = mesh.clock()
        p50, p90, loss, jitter, age = (GaugeMetricFamily(n, h, labels=LINK_LABELS) for n, h in LINK_FAMILIES)
        clouds: dict[str, str] = {}
        for (src, dst), lk in snap.links.items() if self.links else ():
            sc = clouds.get(src) or clouds.setdefault(src, _cloud(src))
            dc = clouds.get(dst) or clouds.setdefault(dst, _cloud(dst))
            labels = [src, dst, sc, dc]
            if math.isfinite(lk.rtt_p50_ms):  # nothing came back: no RTT (the loss says so)
                p50.add_metric(labels, lk.rtt_p50_ms / 1000.0)
            if math.isfinite(lk.rtt_p90_ms):
                p90.add_metric(labels, lk.rtt_p90_ms / 1000.0)
            if math.isfinite(lk.jitter_ms):
                jitter.add_metric(labels, lk.jitter_ms / 1000.0)
            loss.add_metric(labels, lk.loss_percent / 100.0)
            age.add_metric(labels, max(0.0, now - lk.updated_at))
        if self.links:
            yield from (p50, p90, loss, jitter, age)
        states = GaugeMetricFamily(
            "mesh_region_state",
            "1 for the state the region is in, 0 for the others",
            labels=["region", "cloud", "state"],
        )
        for rid in sorted(list(mesh.regions)):  # one step under the GIL: the loop may add a region meanwhile
            current = mesh.region_state(rid)
            for st in REGION_STATES:
                states.add_metric([rid, _cloud(rid), st], 1.0 if st == current else 0.0)
        yield states
        relayed = 0
        table = snap.table
        if table is not None and table.relays.size:
            relayed = int(((table.relays[..., 0] >= 0) & np.isfinite(table.cost)).sum())
        yield GaugeMetricFamily("mesh_routes_relayed", "Routes that go through at least one relay region", relayed)


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def link_exposition(snap: Snapshot, now: float) -> str:
    """The five per-link families of `MeshCollector` in the text format, written directly.

    The fast path of a scrape: at 150 regions (22,350 links, 111,750 samples) prometheus_client
    builds a sample object and escapes four label values per sample, ~6x the time of this, which
    makes each link's label set once and one line per sample. `MeshCollector(links=True)` is the
    reference it is held to (a test parses both and compares every sample).
    """
    out: list[list[str]] = [[f"# HELP {name} {text}\n# TYPE {name} gauge\n"] for name, text in LINK_FAMILIES]
    p50, p90, loss, jitter, age = out
    n50, n90, nloss, njit, nage = (name for name, _ in LINK_FAMILIES)
    fmt = floatToGoString
    isfinite = math.isfinite
    for (src, dst), lk in snap.links.items():
        labels = (
            f'{{src="{_label(src)}",dst="{_label(dst)}",'
            f'src_cloud="{_label(_cloud(src))}",dst_cloud="{_label(_cloud(dst))}"}} '
        )
        if isfinite(lk.rtt_p50_ms):
            p50.append(f"{n50}{labels}{fmt(lk.rtt_p50_ms / 1000.0)}\n")
        if isfinite(lk.rtt_p90_ms):
            p90.append(f"{n90}{labels}{fmt(lk.rtt_p90_ms / 1000.0)}\n")
        loss.append(f"{nloss}{labels}{fmt(lk.loss_percent / 100.0)}\n")
        if isfinite(lk.jitter_ms):
            jitter.append(f"{njit}{labels}{fmt(lk.jitter_ms / 1000.0)}\n")
        age.append(f"{nage}{labels}{fmt(max(0.0, now - lk.updated_at))}\n")
    return "".join(line for family in out for line in family)
