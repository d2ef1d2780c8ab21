"""Per-peer windowed probe statistics: loss, RTT percentiles, RFC 3550 jitter, reorders, duplicates."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PeerWindow:
    """One window of probes to one peer; feed it sends and replies, then `summary()`."""

    sent: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    highest_seq: int = -1
    reorders: int = 0
    duplicates: int = 0
    jitter_ms: float = 0.0
    _last_rtt: float | None = None

    def on_sent(self) -> None:
        self.sent += 1

    def on_reply(self, seq: int, rtt_ms: float) -> None:
        if seq in self.seen:
            self.duplicates += 1
            return
        self.seen.add(seq)
        if seq < self.highest_seq:
            self.reorders += 1
        self.highest_seq = max(self.highest_seq, seq)
        if rtt_ms < 0:
            rtt_ms = 0.0
        self.rtts_ms.append(rtt_ms)
        if self._last_rtt is not None:  # RFC 3550 6.4.1: J += (|D| - J) / 16
            self.jitter_ms += (abs(rtt_ms - self._last_rtt) - self.jitter_ms) / 16.0
        self._last_rtt = rtt_ms

    def summary(self, peer_node_id: str) -> dict[str, object]:
        """The body of one `peers[]` entry of POST /v1/reports."""
        received = len(self.rtts_ms)
        out: dict[str, object] = {
            "peer_node_id": peer_node_id,
            "sent": self.sent,
            "received": min(received, self.sent),
            "reorders": self.reorders,
            "duplicates": self.duplicates,
        }
        if received:
            a = np.asarray(self.rtts_ms)
            out.update(
                rtt_min_ms=round(float(a.min()), 4),
                rtt_p50_ms=round(float(np.percentile(a, 50)), 4),
                rtt_p90_ms=round(float(np.percentile(a, 90)), 4),
                rtt_max_ms=round(float(a.max()), 4),
                jitter_ms=round(self.jitter_ms, 4),
            )
        return out

    def next_window(self) -> PeerWindow:
        """A fresh window that keeps the jitter estimate and the sequence high-water mark."""
        w = PeerWindow(highest_seq=self.highest_seq, jitter_ms=self.jitter_ms)
        w._last_rtt = self._last_rtt
        return w
