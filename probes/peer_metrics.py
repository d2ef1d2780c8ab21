"""The agent's per-peer Prometheus series (exported on `--metrics-listen`, or 127.0.0.1:9464)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class PeerGauges(Collector):
    """Per-peer series of the last window: RTT p50, loss and jitter, labelled with the peer's node id
    and region. Replaced whole each window, so a peer no longer probed disappears.

    The window is only kept (a list of tuples); the series are made when /metrics is scraped, not
    per window (at ~300 targets, three labelled gauges per peer cost more than the window itself)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._last: list[tuple[str, str, float | None, float | None, float | None]] = []
        registry.register(self)

    def window(self, peers: list[dict[str, Any]], by_node: dict[str, dict[str, Any]]) -> None:
        rows = []
        for p in peers:
            node_id = str(p["peer_node_id"])
            region = str(by_node.get(node_id, {}).get("region", ""))
            sent = int(p.get("sent") or 0)
            loss = 1.0 - int(p.get("received") or 0) / sent if sent else None
            rtt = p.get("rtt_p50_ms")
            rtt_s = float(rtt) / 1000.0 if rtt is not None else None
            jitter_s = float(p.get("jitter_ms") or 0.0) / 1000.0 if rtt is not None else None
            rows.append((node_id, region, rtt_s, loss, jitter_s))
        self._last = rows

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = ["peer", "peer_region"]  # seconds, the base unit (promtool check metrics refuses `_ms`)
        rtt = GaugeMetricFamily("mesh_agent_peer_rtt_p50_seconds", "Median RTT to the peer, last window", labels=labels)
        loss = GaugeMetricFamily(
            "mesh_agent_peer_loss_ratio", "Probe loss to the peer, last window (0..1)", labels=labels
        )
        jitter = GaugeMetricFamily("mesh_agent_peer_jitter_seconds", "Jitter to the peer, last window", labels=labels)
        for node_id, region, rtt_s, loss_ratio, jitter_s in self._last:
            if loss_ratio is not None:
                loss.add_metric([node_id, region], loss_ratio)
            if rtt_s is not None:
                rtt.add_metric([node_id, region], rtt_s)
                jitter.add_metric([node_id, region], jitter_s or 0.0)
        yield from (rtt, loss, jitter)
