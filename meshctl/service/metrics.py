"""Prometheus metrics of one controller process (own registry: several apps per process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.store_up = Gauge("mesh_store_up", "1 when the database answers", registry=r)
        self.frozen = Gauge("mesh_frozen", "1 while the controller fails static", registry=r)
