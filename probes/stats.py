"""Per-peer windowed probe statistics: loss, RTT percentiles, RFC 3550 jitter, reorders, duplicates.

Standard library only: a window holds a few dozen RTTs, and a node should not need numpy for
them. `percentile` is numpy's default ("linear") method, tested equal to it.

Jitter is RFC 3550's running interarrival jitter (section 6.4.1, appendix A.8), one `Jitter` per
peer that lives across windows: restarting it from 0 in every window under-reports it (J has a
gain of 1/16, so after n samples it has reached only 1 - (15/16)^(n-1) of the truth: about 79%
at 25 samples, 23% at 5). A window reports J as it stood after the last of its own replies.
Its transit time is the round trip (T4 - T1 minus the reflector's processing time): D(i,j) of
two replies is the difference of their round trips, the same as (Rj - Ri) - (Sj - Si).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of sorted values, computed as `numpy.percentile` does by default."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    index = (n - 1) * (p / 100)
    if index >= n - 1:
        return float(sorted_values[-1])
    lo = math.floor(index)
    t = index - lo
    a, b = sorted_values[lo], sorted_values[lo + 1]
    diff = b - a
    # numpy's _lerp: from the nearer end, so the result is exact at both ends
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


@dataclass
class Jitter:
    """RFC 3550 interarrival jitter of one peer, fed every reply in arrival order, across windows.

    Lost packets are simply never fed (D is taken between consecutive *received* packets, as the
    RFC does); a reordered reply is fed when it arrives; duplicates are not fed (the window drops
    them: a copy of a reply says nothing about the path's variation).
    """

    value_ms: float = 0.0
    last_transit_ms: float | None = None

    def update(self, transit_ms: float) -> float:
        """J += (|D| - J) / 16 with D the change of transit since the previous reply; returns J."""
        if self.last_transit_ms is not None:
            self.value_ms += (abs(transit_ms - self.last_transit_ms) - self.value_ms) / 16.0
        self.last_transit_ms = transit_ms
        return self.value_ms


@dataclass
class PeerWindow:
    """One window of probes to one peer; feed it sends and replies, then `summary()`.

    `jitter` is the peer's running state shared with its earlier and later windows (a window
    made without one starts its own, from 0).
    """

    sent: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    highest_seq: int = -1
    reorders: int = 0
    duplicates: int = 0
    jitter_ms: float = 0.0  # J after this window's last reply
    jitter: Jitter = field(default_factory=Jitter)

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
        self.jitter_ms = self.jitter.update(rtt_ms)

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
            a = sorted(self.rtts_ms)
            out.update(
                rtt_min_ms=round(a[0], 4),
                rtt_p50_ms=round(percentile(a, 50), 4),
                rtt_p90_ms=round(percentile(a, 90), 4),
                rtt_max_ms=round(a[-1], 4),
                jitter_ms=round(self.jitter_ms, 4),
            )
        return out
