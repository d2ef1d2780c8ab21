"""All-pairs routes with at most two relay regions, vectorised.

The search is two min-plus products over the cost matrix, done in int32 with the relay's
index packed into the low bits of each sum, so one pass gives both the best cost and the
relay that achieves it (costs are compared at 0.01 ms resolution; the reported cost and RTT
are recomputed in float along the chosen path).

The product runs in a numba kernel when numba is installed (it is a dependency): the triple
loop compiles to SIMD code over rows split across the cores, 4-7x the numpy version, and is
cached on disk after the first compile (`warm_up`). The numpy version, where Python loops
only over the relay index k and each step is a ufunc over a block of rows that stays in
cache, is the reference the tests hold the kernel to, and the fallback.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from meshctl.core.links import LinkTable, RegionLink

numba: Any
try:
    import numba
except ImportError:  # pragma: no cover - a platform without numba wheels: the numpy kernel
    numba = None

prange: Any = range if numba is None else numba.prange

UNITS_PER_MS = 100  # 0.01 ms resolution for the search
_SHIFT = 11  # low bits hold the relay index: up to 2048 regions
_MAX_REGIONS = 1 << _SHIFT
_UNUSABLE = (1 << 18) - 1  # 2621 ms: anything costlier is not a route
_ROW_BLOCK = 64
_THREADS_FROM = 256  # below this, one thread is faster than two (measured)


@dataclass(frozen=True)
class RoutingWeights:
    loss_weight: float = 5.0
    jitter_weight: float = 1.0
    relay_penalty_ms: float = 1.0
    hysteresis_ratio: float = 0.05
    max_relays: int = 2
    stale_after_s: float = 20.0


@dataclass(frozen=True)
class Route:
    src: str
    dst: str
    path: list[str] | None
    rtt_ms: float | None
    cost: float | None
    via_relay: bool
    reachable: bool


@dataclass(frozen=True)
class Candidate:
    path: list[str]
    rtt_ms: float | None
    cost: float | None
    usable: bool
    chosen: bool
    note: str | None


@dataclass
class RouteTable:
    regions: tuple[str, ...]
    index: dict[str, int]
    cost: np.ndarray  # RxR float, inf when unreachable
    rtt: np.ndarray  # RxR float, estimated RTT of the chosen path
    relays: np.ndarray  # RxRx2 int, -1 = none

    def path(self, src: str, dst: str) -> list[str] | None:
        i, j = self.index[src], self.index[dst]
        if i == j:
            return [src]
        if not math.isfinite(self.cost[i, j]):
            return None
        return [src, *(self.regions[k] for k in self.relays[i, j] if k >= 0), dst]

    def route(self, src: str, dst: str) -> Route:
        i, j = self.index[src], self.index[dst]
        path = self.path(src, dst)
        if path is None:
            return Route(src, dst, None, None, None, False, False)
        return Route(src, dst, path, float(self.rtt[i, j]), float(self.cost[i, j]), len(path) > 2, True)

    def all_routes(self) -> Iterator[Route]:
        for src in self.regions:
            for dst in self.regions:
                if src != dst:
                    yield self.route(src, dst)


def link_cost(link: RegionLink, w: RoutingWeights) -> float:
    """rtt_p50 + loss_weight * loss% + jitter_weight * jitter; inf when nothing gets through."""
    if not math.isfinite(link.rtt_p50_ms) or link.loss_percent >= 100.0:
        return math.inf
    return link.rtt_p50_ms + w.loss_weight * link.loss_percent + w.jitter_weight * link.jitter_ms


def link_costs(table: LinkTable, w: RoutingWeights) -> np.ndarray:
    """`link_cost` of every row of the table at once."""
    p50, loss, jitter = (table.column(k) for k in (LinkTable.P50, LinkTable.LOSS, LinkTable.JITTER))
    with np.errstate(invalid="ignore"):
        cost = p50 + w.loss_weight * loss + w.jitter_weight * jitter
        return np.where(~np.isfinite(p50) | (loss >= 100.0), math.inf, cost)


def cost_matrices(
    regions: Sequence[str], links: Mapping[tuple[str, str], RegionLink], weights: RoutingWeights, now: float
) -> tuple[np.ndarray, np.ndarray]:
    """(cost, rtt) matrices: inf where a link is missing, stale or dead; 0 on the diagonal."""
    r = len(regions)
    cost = np.full((r, r), np.inf)
    rtt = np.full((r, r), np.inf)
    table = LinkTable.of(links)
    src, dst = table.region_index(regions)
    c = link_costs(table, weights)
    with np.errstate(invalid="ignore"):
        stale = now - table.column(LinkTable.UPDATED_AT) > weights.stale_after_s
    keep = np.flatnonzero((src >= 0) & (dst >= 0) & (src != dst) & ~stale & np.isfinite(c))
    cost[src[keep], dst[keep]] = c[keep]
    rtt[src[keep], dst[keep]] = table.column(LinkTable.P50)[keep]
    np.fill_diagonal(cost, 0.0)
    np.fill_diagonal(rtt, 0.0)
    return cost, rtt


def _to_units(cost: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        u = np.where(np.isfinite(cost), np.minimum(np.rint(cost * UNITS_PER_MS), _UNUSABLE), _UNUSABLE)
    return u.astype(np.int32)


def _min_plus_rows(a_t: np.ndarray, b: np.ndarray, relays: list[int], out: np.ndarray, i0: int, i1: int) -> None:
    """Rows i0:i1 of the product; a_t is the left matrix transposed (contiguous columns)."""
    block = _ROW_BLOCK if out.shape[0] > 256 else 256
    tmp = np.empty((min(block, i1 - i0), out.shape[1]), dtype=np.int32)
    add, minimum = np.add, np.minimum
    for s in range(i0, i1, block):
        e = min(i1, s + block)
        blk, t = out[s:e], tmp[: e - s]
        cols = a_t[:, s:e, None]
        for col, row in zip([cols[k] for k in relays], [b[k] for k in relays], strict=True):
            add(col, row, out=t)
            minimum(blk, t, out=blk)


def _min_plus_kernel_source(a: np.ndarray, b: np.ndarray, ks: np.ndarray, out: np.ndarray) -> None:
    """What numba compiles: for each row (in parallel), each relay, each column: keep the min."""
    for i in prange(a.shape[0]):
        row = out[i]
        for kk in range(ks.shape[0]):
            k = ks[kk]
            aik = a[i, k]
            bk = b[k]
            for j in range(row.shape[0]):
                row[j] = min(row[j], aik + bk[j])


_kernel: Any = (
    None
    if numba is None
    else numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)(_min_plus_kernel_source)
)


def warm_up() -> None:
    """Compile (or load from the disk cache) the kernel now rather than in the first recompute."""
    one = np.zeros((2, 2), dtype=np.int32)
    _min_plus(one, one, np.arange(2))


def _min_plus(left: np.ndarray, right_units: np.ndarray, relays: np.ndarray, use_kernel: bool = True) -> np.ndarray:
    """out[i, j] = min over k in relays of left[i, k] + right[k, j], k packed in the low bits.

    numpy releases the GIL inside ufuncs, so large tables split their rows over two threads.
    """
    r = left.shape[0]
    b = (right_units.astype(np.int32) << _SHIFT) | np.arange(r, dtype=np.int32)[:, None]
    out = np.full((r, r), np.iinfo(np.int32).max, dtype=np.int32)
    ks = relays.tolist()
    if not ks or r == 0:
        return out
    if use_kernel and _kernel is not None:
        _kernel(left.astype(np.int32) << _SHIFT, b, np.asarray(ks, dtype=np.int64), out)
        return out
    a_t = np.ascontiguousarray(left.T, dtype=np.int32) << _SHIFT
    if r < _THREADS_FROM:
        _min_plus_rows(a_t, b, ks, out, 0, r)
        return out
    half = (r + 1) // 2
    futures = [_pool().submit(_min_plus_rows, a_t, b, ks, out, lo, hi) for lo, hi in ((0, half), (half, r))]
    for f in futures:
        f.result()
    return out


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="minplus")


def _path_sums(relays: np.ndarray, mats: Sequence[np.ndarray], penalties: Sequence[float]) -> list[np.ndarray]:
    """For each matrix (zero diagonal): its sum along each pair's path, plus a penalty per relay.

    A one-relay path i-a-j is summed as i-a, a-j, j-j (the diagonal is 0), so one gather
    pattern serves both path lengths.
    """
    r = relays.shape[0]
    k1 = relays[..., 0].ravel()
    via = np.flatnonzero(k1 >= 0)
    outs = [m.copy() for m in mats]
    if via.size == 0:
        return outs
    i, j = np.divmod(via, r)
    a = k1[via]
    b = relays[..., 1].ravel()[via]
    hops = 1.0 + (b >= 0)
    b = np.where(b >= 0, b, j)
    first, second, third = i * r + a, a * r + b, b * r + j
    for out, m, pen in zip(outs, mats, penalties, strict=True):
        flat = m.ravel()
        total = flat[first] + flat[second] + flat[third]
        out.ravel()[via] = total + hops * pen if pen else total
    return outs


def _path_costs(relays: np.ndarray, mat: np.ndarray, penalty: float) -> np.ndarray:
    return _path_sums(relays, [mat], [penalty])[0]


def _valid_previous(previous: RouteTable, drained_mask: np.ndarray) -> np.ndarray:
    rel = previous.relays
    bad = np.zeros(rel.shape[:2], dtype=bool)
    for h in range(2):
        k = rel[..., h]
        bad |= (k >= 0) & drained_mask[np.where(k >= 0, k, 0)]
    return ~bad


def compute_routes(
    regions: Sequence[str],
    cost: np.ndarray,
    rtt: np.ndarray,
    drained: Collection[str],
    weights: RoutingWeights,
    previous: RouteTable | None = None,
) -> RouteTable:
    """Best path for every pair, with hysteresis against the previous table."""
    regions = tuple(regions)
    r = len(regions)
    if r > _MAX_REGIONS:
        raise ValueError(f"at most {_MAX_REGIONS} regions")
    index = {x: i for i, x in enumerate(regions)}
    drained_mask = np.array([x in drained for x in regions], dtype=bool)
    relays_ok = np.flatnonzero(~drained_mask)
    units = _to_units(cost)
    np.fill_diagonal(units, _UNUSABLE)  # a relay is never an endpoint
    pen = round(weights.relay_penalty_ms * UNITS_PER_MS)
    mask = (1 << _SHIFT) - 1
    relays = np.full((r, r, 2), -1, dtype=np.int32)
    best = cost.copy()
    np.fill_diagonal(best, 0.0)
    if r and weights.max_relays >= 1:
        p1 = _min_plus(units, units, relays_ok)
        c1 = (p1 >> _SHIFT).astype(np.int64)
        k1 = p1 & mask
        usable1 = c1 < _UNUSABLE
        c1 = np.where(usable1, c1 + pen, _UNUSABLE)
        relay_cost = c1
        relay_k = np.stack([np.where(usable1, k1, -1), np.full((r, r), -1)], axis=-1)
        if weights.max_relays >= 2:
            left = np.minimum(c1, _UNUSABLE).astype(np.int32)
            np.fill_diagonal(left, _UNUSABLE)
            p2 = _min_plus(left, units, relays_ok)
            c2 = (p2 >> _SHIFT).astype(np.int64)
            l2 = p2 & mask
            usable2 = c2 < _UNUSABLE
            c2 = np.where(usable2, c2 + pen, _UNUSABLE)
            l2 = np.where(usable2, l2, 0)
            k2 = k1[np.arange(r)[:, None], l2]
            take2 = usable2 & (c2 < relay_cost)
            relay_cost = np.where(take2, c2, relay_cost)
            relay_k = np.where(take2[..., None], np.stack([k2, l2], axis=-1), relay_k)
        direct_units = np.where(np.isfinite(cost), cost * UNITS_PER_MS, np.inf)
        relay_float = np.where(relay_cost < _UNUSABLE, relay_cost.astype(np.float64), np.inf)
        margin = 1.0 - weights.hysteresis_ratio
        use_relay = np.isfinite(relay_float) & (relay_float < direct_units * margin)
        np.fill_diagonal(use_relay, False)
        relays = np.where(use_relay[..., None], relay_k, -1).astype(np.int32)
    new_cost, est_rtt = _path_sums(relays, [cost, rtt], [weights.relay_penalty_ms, 0.0])
    if previous is not None and previous.regions == regions and previous.relays.shape == relays.shape:
        differs = np.any(previous.relays != relays, axis=-1) & _valid_previous(previous, drained_mask)
        if weights.max_relays < 2:
            differs &= previous.relays[..., 1] < 0
        if differs.any():
            prev_relays = np.where(differs[..., None], previous.relays, -1).astype(np.int32)
            prev_cost = _path_costs(prev_relays, cost, weights.relay_penalty_ms)
            keep = differs & np.isfinite(prev_cost) & (prev_cost <= new_cost * (1.0 + weights.hysteresis_ratio))
            # ...but a relay is never kept over a direct link at least as cheap: the band stays one
            # margin wide (relay below (1 - margin) x direct, direct again once no dearer than the
            # relay), and a route that moved to a relay while its link was down comes back on heal
            keep &= ~((previous.relays[..., 0] >= 0) & (relays[..., 0] < 0) & (new_cost <= prev_cost))
            if keep.any():
                relays = np.where(keep[..., None], previous.relays, relays).astype(np.int32)
                new_cost, est_rtt = _path_sums(relays, [cost, rtt], [weights.relay_penalty_ms, 0.0])
    best = new_cost
    np.fill_diagonal(best, 0.0)
    est_rtt = np.where(np.isfinite(best), est_rtt, np.inf)
    np.fill_diagonal(est_rtt, 0.0)
    relays = np.where(np.isfinite(best)[..., None], relays, -1).astype(np.int32)
    return RouteTable(regions=regions, index=index, cost=best, rtt=est_rtt, relays=relays)


def changed_mask(old: RouteTable | None, new: RouteTable) -> np.ndarray:
    """RxR: True where the pair's path changed (every reachable pair when there was no old table)."""
    if old is None or old.regions != new.regions:
        changed = np.isfinite(new.cost)
    else:
        reach_old, reach_new = np.isfinite(old.cost), np.isfinite(new.cost)
        changed = (reach_old != reach_new) | (reach_new & np.any(old.relays != new.relays, axis=-1))
    np.fill_diagonal(changed, False)
    return changed


def diff_routes(
    old: RouteTable | None, new: RouteTable, limit: int | None = None
) -> list[tuple[str, str, list[str] | None, list[str] | None]]:
    """Pairs whose path changed, with the paths before and after (at most `limit` of them)."""
    regs = new.regions
    same = old is not None and old.regions == regs
    out = []
    for i, j in np.argwhere(changed_mask(old, new))[:limit]:
        a, b = regs[i], regs[j]
        out.append((a, b, old.path(a, b) if same and old is not None else None, new.path(a, b)))
    return out


def explain_route(
    regions: Sequence[str],
    cost: np.ndarray,
    rtt: np.ndarray,
    drained: Collection[str],
    weights: RoutingWeights,
    src: str,
    dst: str,
    table: RouteTable | None = None,
    limit: int = 8,
) -> list[Candidate]:
    """The direct link and the best relay paths for one pair, cheapest first, with notes."""
    regions = tuple(regions)
    index = {x: i for i, x in enumerate(regions)}
    i, j = index[src], index[dst]
    r = len(regions)
    pen = weights.relay_penalty_ms
    chosen = table.path(src, dst) if table is not None else None
    drained_set = set(drained)
    cands: list[tuple[float, list[int], str | None]] = []
    direct = float(cost[i, j])
    cands.append((direct, [i, j], None if math.isfinite(direct) else "direct link missing, stale or dead"))
    others = np.array([k for k in range(r) if k not in (i, j)], dtype=np.int64)
    if others.size and weights.max_relays >= 1:
        one = cost[i, others] + cost[others, j] + pen
        for pos in np.argsort(one, kind="stable")[:limit]:
            k = int(others[pos])
            note = f"relay {regions[k]} is drained" if regions[k] in drained_set else None
            cands.append((float(one[pos]), [i, k, j], note))
        if weights.max_relays >= 2 and others.size >= 2:
            two = cost[i, others][:, None] + cost[np.ix_(others, others)] + cost[others, j][None, :] + 2 * pen
            np.fill_diagonal(two, np.inf)
            flat = np.argsort(two, axis=None, kind="stable")[:limit]
            for f in flat:
                a, b = divmod(int(f), others.size)
                k, m = int(others[a]), int(others[b])
                bad = [regions[x] for x in (k, m) if regions[x] in drained_set]
                note = f"relay {', '.join(bad)} drained" if bad else None
                cands.append((float(two[a, b]), [i, k, m, j], note))
    cands.sort(key=lambda c: (not math.isfinite(c[0]), c[0], len(c[1])))
    out: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    chosen_idx = tuple(index[x] for x in chosen) if chosen else None
    if chosen_idx is not None and all(tuple(c[1]) != chosen_idx for c in cands):
        cands.insert(0, (float(table.cost[i, j]) if table is not None else math.nan, list(chosen_idx), None))
    for c, path, note in cands:
        key = tuple(path)
        if key in seen:
            continue
        seen.add(key)
        usable = (math.isfinite(c) and note is None) or (
            math.isfinite(c) and note is not None and "drained" not in note
        )
        is_chosen = chosen_idx == key
        path_rtt = sum(float(rtt[a, b]) for a, b in itertools.pairwise(path))
        if is_chosen and len(path) > 2 and math.isfinite(direct) and c > direct * (1 - weights.hysteresis_ratio):
            note = note or "kept previous route (hysteresis)"
        elif is_chosen and len(path) > 2 and math.isfinite(direct) and direct > 0:
            note = note or f"relay cheaper than direct by {100 * (1 - c / direct):.0f}%"
        elif not is_chosen and len(path) > 2 and usable and direct * (1 - weights.hysteresis_ratio) <= c < direct:
            note = note or f"cheaper than direct by under the {weights.hysteresis_ratio:.0%} margin"
        out.append(
            Candidate(
                path=[regions[x] for x in path],
                rtt_ms=path_rtt if math.isfinite(path_rtt) else None,
                cost=c if math.isfinite(c) else None,
                usable=bool(usable),
                chosen=is_chosen,
                note=note,
            )
        )
    # the cheapest `limit`, and always the direct link: it is what an operator compares against
    shown = out[:limit] + [c for c in out[limit:] if len(c.path) == 2]
    shown.sort(key=lambda c: (not c.chosen,))
    return shown
