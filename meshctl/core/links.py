"""Fold many node-pair measurements into one directed link per region pair.

The latest sample of each (observer node, target node) pair is kept in flat numpy arrays;
`fold` takes the median over the fresh pairs of each region pair, so one lying or broken node
cannot move a link.

Recording is per report, not per sample: the slots of an observer's targets are looked up
once and kept with the target list, so the next report with the same peers (the usual case)
is a handful of whole-array stores (`record_report`). `record` does one sample the long way
and is the reference the vectorised path is tested against. `fold` reuses its grouping of
slots by region pair while no slot is taken or freed and freshness holds, sorts each field
within groups as rows of a padded matrix, and rebuilds only the links whose numbers moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# a padded (groups x largest group) matrix is sorted only while it is at most this many
# times the number of samples; skewed groups fall back to one lexsort per field
_PAD_LIMIT = 4
# A smoothed loss below this is no loss. An exponential average of a loss that stopped halves at
# every window and never reaches 0 (1e-20 % a minute after one lost probe in 1 s windows), and a
# link that says "0.0000000001 % loss" for a quarter of an hour is not one a person calls clean.
# One lost probe in a window of 300 is 0.33 %: the floor is far below anything measured.
LOSS_FLOOR_PERCENT = 0.01


class RegionLink(NamedTuple):
    """One directed region pair's link (immutable; a tuple, so a fold makes 20,000 cheaply)."""

    src: str
    dst: str
    rtt_p50_ms: float
    rtt_p90_ms: float
    jitter_ms: float
    loss_percent: float
    updated_at: float
    samples: int


@dataclass
class _Row:
    """One observer's last target list and the slots and region-pair ids of its samples."""

    region: str
    targets: list[str]
    slots: np.ndarray
    pids: np.ndarray


@dataclass
class _Grouping:
    """Fresh slots ordered by region-pair id, and where each group starts and ends."""

    layout: int
    fresh: np.ndarray
    idx: np.ndarray
    uniq: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    inverse: np.ndarray
    flat: np.ndarray | None  # where each sample goes in the padded (groups x width) matrix
    width: int
    keys: list[tuple[str, str]]  # the region pairs of the groups, self pairs left out
    key_pids: list[int]


class LinkBook:
    """Latest sample per (observer node, target node); folds into region links."""

    _FIELDS = ("p50", "p90", "jitter", "loss", "at")
    _MEDIANS = ("p50", "p90", "jitter", "loss")

    def __init__(self, capacity: int = 1024, loss_smoothing: float = 1.0, smoothing_horizon_s: float = 60.0) -> None:
        """`loss_smoothing` is the weight of a new window's loss against the pair's last value
        (an exponential average; 1.0 keeps only the newest), within `smoothing_horizon_s`."""
        self.loss_smoothing = loss_smoothing
        self.smoothing_horizon_s = smoothing_horizon_s
        self._out: dict[str, dict[str, int]] = {}  # observer -> target -> slot
        self._free: list[int] = []
        self._pair_id: dict[tuple[str, str], int] = {}
        self._pairs: list[tuple[str, str]] = []
        self._cap = capacity
        self._pair = np.full(capacity, -1, dtype=np.int64)
        self._data = {f: np.full(capacity, np.nan) for f in self._FIELDS}
        self._used = 0
        self._rows: dict[str, _Row] = {}
        self._pid_rows: dict[str, dict[str, int]] = {}  # observer region -> target node -> pair id
        self._layout = 0  # moves whenever a slot is taken, freed or changes region pair
        self._grouping: _Grouping | None = None
        # the last fold's link per region-pair id and the numbers it was made from
        self._links: dict[int, RegionLink] = {}
        self._last = np.full((0, 6), np.nan)

    def __len__(self) -> int:
        return int(np.count_nonzero(self._pair[: self._used] >= 0))  # pairs with a sample

    def _grow(self) -> None:
        new = self._cap * 2
        self._pair = np.concatenate([self._pair, np.full(new - self._cap, -1, dtype=np.int64)])
        for f in self._FIELDS:
            self._data[f] = np.concatenate([self._data[f], np.full(new - self._cap, np.nan)])
        self._cap = new

    def _slot_of(self, observer_node: str, target_node: str) -> int:
        targets = self._out.setdefault(observer_node, {})
        slot = targets.get(target_node)
        if slot is None:
            slot = targets[target_node] = self._take(1)[0]
            self._layout += 1
        return slot

    def _pid_of(self, observer_region: str, target_region: str) -> int:
        pair = (observer_region, target_region)
        pid = self._pair_id.get(pair)
        if pid is None:
            pid = self._pair_id[pair] = len(self._pairs)
            self._pairs.append(pair)
        return pid

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
        slot = self._slot_of(observer_node, target_node)
        pid = self._pid_of(observer_region, target_region)
        pid_row = self._pid_rows.get(observer_region)
        if pid_row is not None and pid_row.get(target_node, pid) != pid:  # the target under another region
            del pid_row[target_node]
            self._rows.clear()
        if self._pair[slot] != pid:
            if self._pair[slot] >= 0:  # the same nodes under other regions: the cached row is stale
                self._rows.pop(observer_node, None)
            self._layout += 1
        lost = rtt_p50_ms is None or loss_percent >= 100.0
        d = self._data
        if (
            self.loss_smoothing < 1.0
            and self._pair[slot] == pid
            and 0 <= at - d["at"][slot] <= self.smoothing_horizon_s
        ):
            loss_percent = self.loss_smoothing * loss_percent + (1 - self.loss_smoothing) * float(d["loss"][slot])
            if loss_percent < LOSS_FLOOR_PERCENT:
                loss_percent = 0.0
        self._pair[slot] = pid
        d["p50"][slot] = math.inf if lost or rtt_p50_ms is None else rtt_p50_ms
        d["p90"][slot] = math.inf if lost else (rtt_p90_ms if rtt_p90_ms is not None else rtt_p50_ms)
        d["jitter"][slot] = 0.0 if lost or jitter_ms is None else jitter_ms
        d["loss"][slot] = loss_percent
        d["at"][slot] = at

    def record_report(
        self,
        observer_node: str,
        observer_region: str,
        targets: Sequence[str],
        region_of: Callable[[str], str | None],
        p50: np.ndarray,
        p90: np.ndarray,
        jitter: np.ndarray,
        loss: np.ndarray,
        at: float,
        keep: np.ndarray | None = None,
    ) -> None:
        """Record one report at once: element i of each array is the sample of targets[i].

        NaN stands for a missing value (None in `record`); targets where `keep` is False are
        skipped, and so are those `region_of` does not know (None). The same as one `record` per
        sample, given what the controller guarantees: a node's region never changes, and a node
        that goes away is forgotten (`forget_node`). `region_of` is asked only about targets not
        seen before from the observer's region, when the observer's target list changes.
        """
        row = self._rows.get(observer_node)
        if row is None or row.region != observer_region or row.targets != targets:
            row = self._resolve(observer_node, observer_region, targets, region_of)
            if row is None:  # a target listed twice: the later sample wins, as one by one
                self._record_each(observer_node, observer_region, targets, region_of, p50, p90, jitter, loss, at, keep)
                return
        slots, pids = row.slots, row.pids
        mask = slots >= 0
        if keep is not None:
            mask &= keep
        if not mask.all():
            slots, pids, p50, p90, jitter, loss = (a[mask] for a in (slots, pids, p50, p90, jitter, loss))
        lost = np.isnan(p50) | (loss >= 100.0)
        d = self._data
        if self.loss_smoothing < 1.0:
            age = at - d["at"][slots]  # NaN for a slot never written: not recent
            recent = (self._pair[slots] == pids) & (age >= 0) & (age <= self.smoothing_horizon_s)
            w = self.loss_smoothing
            smoothed = w * loss + (1 - w) * d["loss"][slots]
            loss = np.where(recent, np.where(smoothed < LOSS_FLOOR_PERCENT, 0.0, smoothed), loss)
        self._pair[slots] = pids
        d["p50"][slots] = np.where(lost, math.inf, p50)
        d["p90"][slots] = np.where(lost, math.inf, np.where(np.isnan(p90), p50, p90))
        d["jitter"][slots] = np.where(lost | np.isnan(jitter), 0.0, jitter)
        d["loss"][slots] = loss
        d["at"][slots] = at

    def _resolve(
        self,
        observer_node: str,
        observer_region: str,
        targets: Sequence[str],
        region_of: Callable[[str], str | None],
    ) -> _Row | None:
        """Slots and region-pair ids for an observer's targets (-1: unknown target), cached
        while every target is known (an unknown one may become known later)."""
        if len(set(targets)) != len(targets):
            return None
        pid_row = self._pid_rows.setdefault(observer_region, {})
        pids = [pid_row.get(t, -1) for t in targets]
        if -1 in pids:
            for i, target in enumerate(targets):
                if pids[i] < 0 and (region := region_of(target)) is not None:
                    pids[i] = pid_row[target] = self._pid_of(observer_region, region)
        out = self._out.setdefault(observer_node, {})
        slots = [out.get(t, -1) for t in targets] if out else [-1] * len(targets)
        new = [i for i, (slot, pid) in enumerate(zip(slots, pids, strict=True)) if slot < 0 and pid >= 0]
        if new:
            taken = self._take(len(new))
            for i, slot in zip(new, taken, strict=True):
                slots[i] = slot
            out.update(zip([targets[i] for i in new], taken, strict=True))
            self._layout += 1
        pid_arr = np.array(pids, dtype=np.int64)
        slot_arr = np.where(pid_arr >= 0, np.array(slots, dtype=np.int64), -1)
        used = slot_arr >= 0
        if (self._pair[slot_arr[used]] != pid_arr[used]).any():
            self._layout += 1
        row = _Row(observer_region, list(targets), slot_arr, pid_arr)
        if used.all():
            self._rows[observer_node] = row
        return row

    def _take(self, count: int) -> list[int]:
        """`count` free slots, in the order `record` would take them one by one."""
        taken = [self._free.pop() for _ in range(min(count, len(self._free)))]
        rest = count - len(taken)
        while self._used + rest > self._cap:
            self._grow()
        taken.extend(range(self._used, self._used + rest))
        self._used += rest
        return taken

    def _record_each(
        self,
        observer_node: str,
        observer_region: str,
        targets: Sequence[str],
        region_of: Callable[[str], str | None],
        p50: np.ndarray,
        p90: np.ndarray,
        jitter: np.ndarray,
        loss: np.ndarray,
        at: float,
        keep: np.ndarray | None,
    ) -> None:
        def opt(x: float) -> float | None:
            return None if math.isnan(x) else x

        for i, target in enumerate(targets):
            region = region_of(target)
            if region is None or (keep is not None and not keep[i]):
                continue
            self.record(
                observer_node,
                observer_region,
                target,
                region,
                opt(float(p50[i])),
                opt(float(p90[i])),
                opt(float(jitter[i])),
                float(loss[i]),
                at,
            )

    def forget_node(self, node_id: str) -> None:
        """Drop every sample the node made or was the target of (a pass over the observers:
        nodes leave seldom, reports come all the time)."""
        freed = list(self._out.pop(node_id, {}).values())
        for targets in self._out.values():
            slot = targets.pop(node_id, None)
            if slot is not None:
                freed.append(slot)
        if freed:
            self._rows.clear()
            self._layout += 1
            self._pair[freed] = -1
            self._data["at"][freed] = np.nan
            self._free.extend(freed)
        for pid_row in self._pid_rows.values():
            pid_row.pop(node_id, None)

    def _group(self, fresh: np.ndarray) -> _Grouping:
        g = self._grouping
        if g is not None and g.layout == self._layout and np.array_equal(g.fresh, fresh):
            return g
        idx = np.flatnonzero(fresh)
        pids = self._pair[idx]
        order = np.argsort(pids, kind="stable")
        idx, pids = idx[order], pids[order]
        starts = np.flatnonzero(np.concatenate([[True], pids[1:] != pids[:-1]])) if idx.size else idx
        counts = np.diff(np.append(starts, idx.size))
        inverse = np.repeat(np.arange(starts.size), counts)
        width = int(counts.max()) if counts.size else 0
        flat = None
        if starts.size * width <= _PAD_LIMIT * idx.size:
            flat = inverse * width + np.arange(idx.size) - starts[inverse]
        uniq = pids[starts]
        key_pids = [pid for pid in uniq.tolist() if self._pairs[pid][0] != self._pairs[pid][1]]
        keys = [self._pairs[pid] for pid in key_pids]
        g = _Grouping(self._layout, fresh, idx, uniq, counts, starts, inverse, flat, width, keys, key_pids)
        self._grouping = g
        return g

    def _medians(self, values: np.ndarray, g: _Grouping) -> np.ndarray:
        """Median of each group of `values` (ordered as g.idx); inf wins over a finite neighbour."""
        lo_in, hi_in = (g.counts - 1) // 2, g.counts // 2
        if g.flat is not None:
            m = np.full((g.starts.size, g.width), np.nan)
            m.ravel()[g.flat] = values
            m.sort(axis=1)  # NaN (padding) sorts last
            rows = np.arange(g.starts.size) * g.width
            vlo, vhi = m.ravel()[rows + lo_in], m.ravel()[rows + hi_in]
        else:
            v = values[np.lexsort((values, g.inverse))]
            vlo, vhi = v[g.starts + lo_in], v[g.starts + hi_in]
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(vlo) | np.isinf(vhi), np.maximum(vlo, vhi), (vlo + vhi) / 2)

    def fold(self, now: float, stale_after_s: float) -> dict[tuple[str, str], RegionLink]:
        """One link per (observer region, target region) from fresh samples: medians."""
        n = self._used
        pair = self._pair[:n]
        at = self._data["at"][:n]
        fresh = (pair >= 0) & (at >= now - stale_after_s)
        g = self._group(fresh)
        if g.idx.size == 0:
            return {}
        numbers = np.empty((g.uniq.size, 6))
        for k, f in enumerate(self._MEDIANS):
            numbers[:, k] = self._medians(self._data[f][:n][g.idx], g)
        numbers[:, 4] = np.maximum.reduceat(at[g.idx], g.starts)
        numbers[:, 5] = g.counts
        # rebuild only the links whose numbers moved since the last fold (NaN: always)
        if self._last.shape[0] < len(self._pairs):
            grown = np.full((len(self._pairs), 6), np.nan)
            grown[: self._last.shape[0]] = self._last
            self._last = grown
        moved = np.flatnonzero((self._last[g.uniq] != numbers).any(axis=1))
        self._last[g.uniq[moved]] = numbers[moved]
        links, pairs, new = self._links, self._pairs, tuple.__new__
        p50, p90, jitter, loss, newest = (numbers[moved, k].tolist() for k in range(5))
        counts = g.counts[moved].tolist()
        for pid, a, b, c, d, e, k in zip(g.uniq[moved].tolist(), p50, p90, jitter, loss, newest, counts, strict=True):
            links[pid] = new(RegionLink, (*pairs[pid], a, b, c, d, e, k))
        return dict(zip(g.keys, map(links.__getitem__, g.key_pids), strict=True))
