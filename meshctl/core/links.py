"""Fold many node-pair measurements into one directed link per region pair.

The latest sample of each (observer node, target node) pair is kept in flat numpy arrays
(`record` is a few array stores); `fold` takes the median over the fresh pairs of each
region pair, so one lying or broken node cannot move a link.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegionLink:
    src: str
    dst: str
    rtt_p50_ms: float
    rtt_p90_ms: float
    jitter_ms: float
    loss_percent: float
    updated_at: float
    samples: int


class LinkBook:
    """Latest sample per (observer node, target node); folds into region links."""

    _FIELDS = ("p50", "p90", "jitter", "loss", "at")

    def __init__(self, capacity: int = 1024) -> None:
        self._slot: dict[tuple[str, str], int] = {}
        self._by_node: dict[str, set[tuple[str, str]]] = {}
        self._free: list[int] = []
        self._pair_id: dict[tuple[str, str], int] = {}
        self._pairs: list[tuple[str, str]] = []
        self._cap = capacity
        self._pair = np.full(capacity, -1, dtype=np.int64)
        self._data = {f: np.full(capacity, np.nan) for f in self._FIELDS}
        self._used = 0

    def __len__(self) -> int:
        return len(self._slot)

    def _grow(self) -> None:
        new = self._cap * 2
        self._pair = np.concatenate([self._pair, np.full(new - self._cap, -1, dtype=np.int64)])
        for f in self._FIELDS:
            self._data[f] = np.concatenate([self._data[f], np.full(new - self._cap, np.nan)])
        self._cap = new

    def record(
        self,
        observer_node: str,
        observer_region: str,
        target_node: str,
        target_region: str,
        rtt_p50_ms: float | None,
        rtt_p90_ms: float | None,
        jitter_ms: float | None,
        loss_percent: float,
        at: float,
    ) -> None:
        """Keep this as the latest sample of the pair (rtt None: nothing came back)."""
        key = (observer_node, target_node)
        slot = self._slot.get(key)
        if slot is None:
            if self._free:
                slot = self._free.pop()
            else:
                if self._used == self._cap:
                    self._grow()
                slot = self._used
                self._used += 1
            self._slot[key] = slot
            self._by_node.setdefault(observer_node, set()).add(key)
            self._by_node.setdefault(target_node, set()).add(key)
        pair = (observer_region, target_region)
        pid = self._pair_id.get(pair)
        if pid is None:
            pid = self._pair_id[pair] = len(self._pairs)
            self._pairs.append(pair)
        lost = rtt_p50_ms is None or loss_percent >= 100.0
        d = self._data
        self._pair[slot] = pid
        d["p50"][slot] = math.inf if lost or rtt_p50_ms is None else rtt_p50_ms
        d["p90"][slot] = math.inf if lost else (rtt_p90_ms if rtt_p90_ms is not None else rtt_p50_ms)
        d["jitter"][slot] = 0.0 if lost or jitter_ms is None else jitter_ms
        d["loss"][slot] = loss_percent
        d["at"][slot] = at

    def record_many(
        self,
        observer_node: str,
        observer_region: str,
        samples: list[tuple[str, str, float | None, float | None, float | None, float]],
        at: float,
    ) -> None:
        """Record one report's samples: (target node, target region, p50, p90, jitter, loss%)."""
        for target_node, target_region, p50, p90, jitter, loss in samples:
            self.record(observer_node, observer_region, target_node, target_region, p50, p90, jitter, loss, at)

    def forget_node(self, node_id: str) -> None:
        """Drop every sample the node made or was the target of."""
        for key in self._by_node.pop(node_id, set()):
            slot = self._slot.pop(key, None)
            if slot is None:
                continue
            other = key[1] if key[0] == node_id else key[0]
            self._by_node.get(other, set()).discard(key)
            self._pair[slot] = -1
            self._data["at"][slot] = np.nan
            self._free.append(slot)

    def fold(self, now: float, stale_after_s: float) -> dict[tuple[str, str], RegionLink]:
        """One link per (observer region, target region) from fresh samples: medians."""
        n = self._used
        pair = self._pair[:n]
        at = self._data["at"][:n]
        fresh = (pair >= 0) & (at >= now - stale_after_s)
        idx = np.flatnonzero(fresh)
        if idx.size == 0:
            return {}
        pids = pair[idx]
        uniq, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        lo = starts + (counts - 1) // 2
        hi = starts + counts // 2

        def median(values: np.ndarray) -> np.ndarray:
            order = np.lexsort((values, inverse))
            v = values[order]
            with np.errstate(invalid="ignore"):
                return np.where(np.isinf(v[lo]) | np.isinf(v[hi]), np.maximum(v[lo], v[hi]), (v[lo] + v[hi]) / 2)

        meds = {f: median(self._data[f][:n][idx]) for f in ("p50", "p90", "jitter", "loss")}
        newest = np.full(uniq.size, -np.inf)
        np.maximum.at(newest, inverse, at[idx])
        out: dict[tuple[str, str], RegionLink] = {}
        for g, pid in enumerate(uniq.tolist()):
            src, dst = self._pairs[pid]
            if src == dst:
                continue
            out[(src, dst)] = RegionLink(
                src=src,
                dst=dst,
                rtt_p50_ms=float(meds["p50"][g]),
                rtt_p90_ms=float(meds["p90"][g]),
                jitter_ms=float(meds["jitter"][g]),
                loss_percent=float(meds["loss"][g]),
                updated_at=float(newest[g]),
                samples=int(counts[g]),
            )
        return out
