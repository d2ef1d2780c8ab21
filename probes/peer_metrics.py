"""The agent's per-peer Prometheus series (exported on `--metrics-listen`, or 127.0.0.1:9464)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge


class PeerGauges:
    """Per-peer series of the last window: RTT p50, loss and jitter, labelled with the peer's node id
    and region. Replaced whole each window, so a peer no longer probed disappears."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["peer", "peer_region"]
        r = registry  # seconds, the base unit (promtool check metrics refuses `_ms`)
        self.rtt = Gauge("mesh_agent_peer_rtt_p50_seconds", "Median RTT to the peer, last window", labels, registry=r)
        self.loss = Gauge(
            "mesh_agent_peer_loss_ratio", "Probe loss to the peer, last window (0..1)", labels, registry=r
        )
        self.jitter = Gauge("mesh_agent_peer_jitter_seconds", "Jitter to the peer, last window", labels, registry=r)

    def window(self, peers: list[dict[str, Any]], by_node: dict[str, dict[str, Any]]) -> None:
        for g in (self.rtt, self.loss, self.jitter):
            g.clear()
        for p in peers:
            node_id = str(p["peer_node_id"])
            labels = (node_id, str(by_node.get(node_id, {}).get("region", "")))
            sent = int(p.get("sent") or 0)
            if sent:
                self.loss.labels(*labels).set(1.0 - int(p.get("received") or 0) / sent)
            if p.get("rtt_p50_ms") is not None:
                self.rtt.labels(*labels).set(float(p["rtt_p50_ms"]) / 1000.0)
                self.jitter.labels(*labels).set(float(p.get("jitter_ms") or 0.0) / 1000.0)
