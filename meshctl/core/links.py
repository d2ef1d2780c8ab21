"""Fold many node-pair measurements into one directed link per region pair.

The latest sample of each (observer node, target node) pair is kept in flat numpy arrays;
`fold` takes the median over the fresh pairs of each region pair, so one lying or broken node
cannot move a link.

Recording is per report, not per sample: the slots of an observer's targets are looked up
once and kept with the target list, so the next report with the same peers (the usual case)
is a handful of whole-array stores (`record_report`). `record` does one sample the long way
and is the reference the vectorised path is tested against. `fold` reuses its grouping of
slots by region pair while no slot is taken or freed and freshness holds, sorts each field
within groups as rows of a padded matrix (one gather per field from a cell map made with the
grouping), and returns a `LinkTable`: the links as columns, which the control loop's passes
(health, costs, history) read as whole arrays; it is also a read-only mapping of `RegionLink`s,
made only when someone reads it that way (the API, metrics). `fold_in_parts` splits the fold
for the control loop: the bookkeeping on the event loop, the numbers on a thread.

About 510 lines: the book and the table it folds into are one piece (the table's columns are
the book's grouping), each short on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
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


class LinkTable(Mapping[tuple[str, str], RegionLink]):
    """Links as columns, one row per directed region pair: what a fold gives.

    `names` are region ids; `src` and `dst` index them. `numbers` has one row per link: rtt p50,
    rtt p90, jitter, loss %, updated_at, samples. Read as a mapping (src, dst) -> RegionLink it
    makes the RegionLinks once, on first use: the control loop never does.
    """

    __slots__ = ("_links", "dst", "names", "numbers", "src")

    P50, P90, JITTER, LOSS, UPDATED_AT, SAMPLES = range(6)

    def __init__(self, names: Sequence[str], src: np.ndarray, dst: np.ndarray, numbers: np.ndarray) -> None:
        self.names = tuple(names)
        self.src = src
        self.dst = dst
        self.numbers = numbers
        self._links: dict[tuple[str, str], RegionLink] | None = None

    @classmethod
    def of(cls, links: Mapping[tuple[str, str], RegionLink]) -> LinkTable:
        """The links as a table (itself when it is one already)."""
        if isinstance(links, LinkTable):
            return links
        ids: dict[str, int] = {}
        src = [ids.setdefault(a, len(ids)) for a, _ in links]
        dst = [ids.setdefault(b, len(ids)) for _, b in links]
        rows = [lk[2:] for lk in links.values()]
        numbers = np.array(rows, dtype=np.float64).reshape(len(rows), 6)
        return cls(list(ids), np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), numbers)

    def column(self, k: int) -> np.ndarray:
        return self.numbers[:, k]

    def region_index(self, regions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each row's src and dst as indexes into `regions` (-1: not among them)."""
        where = {r: i for i, r in enumerate(regions)}
        lookup = np.array([where.get(n, -1) for n in self.names], dtype=np.int64)
        if not lookup.size:
            return self.src.copy(), self.dst.copy()
        return lookup[self.src], lookup[self.dst]

    def _mapping(self) -> dict[tuple[str, str], RegionLink]:
        links = self._links
        if links is None:
            names, new = self.names, tuple.__new__
            links = {}
            for a, b, (p50, p90, jitter, loss, at, k) in zip(
                map(names.__getitem__, self.src.tolist()),
                map(names.__getitem__, self.dst.tolist()),
                self.numbers.tolist(),
                strict=True,
            ):
                links[(a, b)] = new(RegionLink, (a, b, p50, p90, jitter, loss, at, int(k)))
            self._links = links
        return links

    def keys(self) -> KeysView[tuple[str, str]]:
        return self._mapping().keys()

    def values(self) -> ValuesView[RegionLink]:
        return self._mapping().values()

    def items(self) -> ItemsView[tuple[str, str], RegionLink]:
        return self._mapping().items()

    def __getitem__(self, key: tuple[str, str]) -> RegionLink:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return int(self.numbers.shape[0])

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()

    def __repr__(self) -> str:
        return f"LinkTable({len(self)} links over {len(self.names)} regions)"


class PairIndex:
    """Region pairs numbered as first seen, looked up for a whole table at once."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self._region: dict[str, int] = {}
        self._grid = np.full((0, 0), -1, dtype=np.int64)  # region id x region id -> pair id

    def ids(self, table: LinkTable) -> np.ndarray:
        """The pair id of each row of `table` (new pairs are numbered now)."""
        regions = self._region
        local = np.array([regions.setdefault(n, len(regions)) for n in table.names], dtype=np.int64)
        if len(regions) > self._grid.shape[0]:
            grown = np.full((len(regions), len(regions)), -1, dtype=np.int64)
            old = self._grid.shape[0]
            grown[:old, :old] = self._grid
            self._grid = grown
        if not local.size:
            return np.zeros(0, dtype=np.int64)
        s, d = local[table.src], local[table.dst]
        ids = self._grid[s, d]
        for k in np.flatnonzero(ids < 0).tolist():
            pid = self._grid[s[k], d[k]]
            if pid < 0:  # (a table never holds a pair twice; this keeps the index right if one did)
                pid = self._grid[s[k], d[k]] = len(self.pairs)
                self.pairs.append((table.names[table.src[k]], table.names[table.dst[k]]))
            ids[k] = pid
        return ids


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
    cells: np.ndarray | None  # per cell of the padded (groups x width) matrix, its slot (or a NaN one)
    width: int
    links: np.ndarray  # the groups that are links (self pairs left out)
    src: np.ndarray  # their regions, as indexes into names
    dst: np.ndarray
    names: tuple[str, ...]


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
        # slots freed since the last fold began: a fold may still be reading them on another
        # thread (`fold_in_parts`), so they are taken again only once the next fold begins
        self._freed_since_fold: list[int] = []
        self._pair_id: dict[tuple[str, str], int] = {}
        self._pairs: list[tuple[str, str]] = []
        self._regions: dict[str, int] = {}  # region id -> its index in the tables' names
        self._pair_ends: list[tuple[int, int]] = []  # per pair id: (src, dst) region indexes
        self._cap = capacity
        self._pair = np.full(capacity, -1, dtype=np.int64)
        # one slot more than the capacity, always NaN: padding cells of the fold's matrix read it
        self._data = {f: np.full(capacity + 1, np.nan) for f in self._FIELDS}
        self._used = 0
        self._rows: dict[str, _Row] = {}
        self._pid_rows: dict[str, dict[str, int]] = {}  # observer region -> target node -> pair id
        self._layout = 0  # moves whenever a slot is taken, freed or changes region pair
        self._grouping: _Grouping | None = None

    def __len__(self) -> int:
        return int(np.count_nonzero(self._pair[: self._used] >= 0))  # pairs with a sample

    def _grow(self) -> None:
        new = self._cap * 2
        self._pair = np.concatenate([self._pair, np.full(new - self._cap, -1, dtype=np.int64)])
        for f in self._FIELDS:
            self._data[f] = np.concatenate([self._data[f][: self._cap], np.full(new - self._cap + 1, np.nan)])
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
            ends = self._regions.setdefault(observer_region, len(self._regions))
            self._pair_ends.append((ends, self._regions.setdefault(target_region, len(self._regions))))
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
            self._freed_since_fold.extend(freed)
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
        cells = None
        if starts.size * width <= _PAD_LIMIT * idx.size:
            cells = np.full(starts.size * width, self._cap, dtype=np.int64)  # slot _cap: always NaN
            cells[inverse * width + np.arange(idx.size) - starts[inverse]] = idx
        uniq = pids[starts]
        ends = np.array(self._pair_ends, dtype=np.int64).reshape(-1, 2)[uniq]
        links = np.flatnonzero(ends[:, 0] != ends[:, 1])
        g = _Grouping(
            self._layout, fresh, idx, uniq, counts, starts, inverse, cells, width,
            links, ends[links, 0], ends[links, 1], tuple(self._regions),
        )  # fmt: skip
        self._grouping = g
        return g

    def _medians(self, values: np.ndarray, g: _Grouping) -> np.ndarray:
        """Median of each group of `values` (a whole field, by slot); inf wins over a finite neighbour."""
        lo_in, hi_in = (g.counts - 1) // 2, g.counts // 2
        if g.cells is not None:
            m = values.take(g.cells).reshape(g.starts.size, g.width)
            m.sort(axis=1)  # NaN (padding) sorts last
            rows = np.arange(g.starts.size) * g.width
            vlo, vhi = m.ravel()[rows + lo_in], m.ravel()[rows + hi_in]
        else:
            grouped = values[g.idx]
            v = grouped[np.lexsort((grouped, g.inverse))]
            vlo, vhi = v[g.starts + lo_in], v[g.starts + hi_in]
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(vlo) | np.isinf(vhi), np.maximum(vlo, vhi), (vlo + vhi) / 2)

    def fold(self, now: float, stale_after_s: float) -> LinkTable:
        """One link per (observer region, target region) from fresh samples: medians."""
        return self.fold_in_parts(now, stale_after_s)()

    def fold_in_parts(self, now: float, stale_after_s: float) -> Callable[[], LinkTable]:
        """The fold as two parts: the bookkeeping now, on the caller's thread (which fresh slots
        fold into which link; cached while no slot is taken or freed), and the number work
        (a gather and a sort per field, ~20 ms at 3,000 nodes) in the function returned, which
        may run on another thread while reports are still recorded. It reads the arrays as they
        are when it runs: a report recorded meanwhile may give a pair its newer sample in one
        field and its older one in another, each a sample of that pair. A slot freed meanwhile
        (`forget_node`) is not given to another pair before the next fold begins, so a fold never
        reads another pair's sample; one fold at a time.
        """
        self._free.extend(self._freed_since_fold)
        self._freed_since_fold.clear()
        n = self._used
        pair = self._pair[:n]
        at = self._data["at"][:n]
        fresh = (pair >= 0) & (at >= now - stale_after_s)
        g = self._group(fresh)
        data = dict(self._data)  # these arrays: a later _grow makes new ones, and g's padding slot stays NaN
        return lambda: self._fold_numbers(g, data)

    def _fold_numbers(self, g: _Grouping, data: dict[str, np.ndarray]) -> LinkTable:
        if g.idx.size == 0:
            return LinkTable((), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 6)))
        numbers = np.empty((g.uniq.size, 6))
        for k, f in enumerate(self._MEDIANS):
            numbers[:, k] = self._medians(data[f], g)
        if g.cells is not None:
            numbers[:, 4] = np.fmax.reduce(data["at"].take(g.cells).reshape(g.starts.size, g.width), axis=1)
        else:
            numbers[:, 4] = np.fmax.reduceat(data["at"][g.idx], g.starts)
        numbers[:, 5] = g.counts
        return LinkTable(g.names, g.src, g.dst, numbers[g.links])
