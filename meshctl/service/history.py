"""Link history: per region pair rollups the leader writes each minute, and the reads of them.

What a bucket holds. Each tick the leader folds the node pairs' latest windows into one link per
region pair (`LinkBook.fold`: the median over the pair's node pairs); a link whose `updated_at`
moved since the last tick is one new sample of the pair, its value the link's median RTT, jitter
and loss of that window. The samples of the current minute are kept in memory (numpy arrays)
and, at the minute boundary, rolled into one row per pair:

    rtt_min/p50/p90/max_ms   min, 50th and 90th percentile (numpy's linear interpolation) and max
                             of the window medians; windows with nothing back (RTT infinite) are
                             left out, and all four are NULL when every window was lost
    loss_percent             mean loss of the windows (lost ones count as 100 %)
    jitter_ms                mean jitter of the windows that came back
    samples                  windows counted

Hours are rolled up from the stored minute rows once the hour is over (so a new leader rolls up
what its predecessor wrote), and are approximate: min of the minute minima, max of the maxima,
p50 = median of the minute p50s, p90 = 90th percentile of the minute p90s (an upper estimate of
the hour's p90: a tail seen in a tenth of the minutes shows), loss and jitter the means of the
minutes weighted by their samples, samples the sum.

Kept: minute buckets for a day, hour buckets for 30 days (`KEEP`), pruned by the leader. At 150
regions (22,350 directed pairs) that is at most 32.2 million minute rows (22,350 x 1,440) and
16.1 million hour rows (22,350 x 720). Measured: ~144 bytes a row on SQLite, ~231 on PostgreSQL
(table and indexes), so ~4.6 + 2.3 GB on SQLite and ~7.4 + 3.7 GB on PostgreSQL at most. Costs
measured at 150 regions with every link new each 1 s tick: `observe` ~15 ms a tick (event loop),
the minute's rows ~0.5 s (a worker thread), the write ~0.4 s (SQLite) / ~0.7 s (PostgreSQL) a
minute; an hour's rollup read 1.34 million minute rows back (worker threads; 6.5 s, as it still
does for an hour this leader did not write whole), and is made in 0.44 s from the minutes the
leader kept (`HourBuffer`, `bench.bench_history`). The control loop runs all of it beside its
ticks, not in them: a tick that waited for it froze routes and drains for ~1 s each minute and
~8 s each hour.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from meshctl.core.links import LinkTable, PairIndex, RegionLink
from meshctl.service.errors import Invalid
from meshctl.store.history import Row
from meshctl.store.values import Fence
from meshctl.wire import schemas as s

if TYPE_CHECKING:
    from meshctl.service.controller import Controller

log = logging.getLogger("meshctl.history")

MINUTE, HOUR = 60, 3600
KEEP: dict[int, float] = {MINUTE: 86_400.0, HOUR: 30 * 86_400.0}  # step -> seconds kept
STEPS = {"1m": MINUTE, "1h": HOUR}
CATCH_UP_HOURS = 24  # a new leader rolls up at most this many past hours it finds missing
# rows per transaction: at 150 regions a minute is 22,350 rows, ~0.4 s of SQLite's one writer in
# one go, which every report acknowledged meanwhile would wait for
WRITE_ROWS = 2_000

_DURATION = re.compile(r"^([0-9]{1,7})(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
DURATION_PATTERN = _DURATION.pattern


# --- group statistics (pure) ---------------------------------------------------------------


def _groups(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Values sorted within groups of equal key: (unique keys, starts, counts, sorted values)."""
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]])) if k.size else np.zeros(0, np.int64)
    counts = np.diff(np.append(starts, k.size))
    return k[starts], starts, counts, v


def _quantile(v: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of each group of sorted `v`, interpolated as numpy's default ("linear")."""
    pos = q * (counts - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts - 1)
    frac = pos - lo
    a, b = v[starts + lo], v[starts + hi]
    return a + (b - a) * frac


def _mean_by(keys: np.ndarray, values: np.ndarray, weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of values per key in range(size), and the summed weights (0: no values)."""
    w = np.bincount(keys, weights=weights, minlength=size)
    total = np.bincount(keys, weights=values * weights, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / w, w


def _opt(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 4)


def minute_rows(
    pairs: Sequence[tuple[str, str]],
    pid: np.ndarray,
    rtt: np.ndarray,
    jitter: np.ndarray,
    loss: np.ndarray,
    bucket: int,
    step: int = MINUTE,
) -> list[Row]:
    """One row per pair with samples: `pid[i]` is the pair (index into `pairs`) of sample i."""
    if pid.size == 0:
        return []
    size = len(pairs)
    pid = pid.astype(np.int64)
    samples = np.bincount(pid, minlength=size)
    loss_mean, _ = _mean_by(pid, loss, np.ones_like(loss), size)
    ok = np.isfinite(rtt)
    jit_mean, jit_w = _mean_by(pid[ok], np.nan_to_num(jitter[ok]), np.ones(int(ok.sum())), size)
    lo = np.full(size, np.nan)
    p50, p90, hi = lo.copy(), lo.copy(), lo.copy()
    keys, starts, counts, v = _groups(pid[ok], rtt[ok])
    if keys.size:
        lo[keys] = v[starts]
        hi[keys] = v[starts + counts - 1]
        p50[keys] = _quantile(v, starts, counts, 0.5)
        p90[keys] = _quantile(v, starts, counts, 0.9)
    out: list[Row] = []
    for k in np.flatnonzero(samples).tolist():
        a, b = pairs[k]
        jit = float(jit_mean[k]) if jit_w[k] > 0 else math.nan
        out.append(
            (a, b, step, bucket, _opt(lo[k]), _opt(p50[k]), _opt(p90[k]), _opt(hi[k]),
             round(float(loss_mean[k]), 4), _opt(jit), int(samples[k]))
        )  # fmt: skip
    return out


def hour_rows(rows: Sequence[Row], hour: int, step: int = HOUR) -> list[Row]:
    """The hour's row of each pair from its minute rows (approximate: see the module docstring)."""
    held = HourBuffer(hour, complete=True)
    held.add(hour, rows)
    return held.rows(step)


# --- the leader's minute buffer --------------------------------------------------------------


class MinuteBuffer:
    """The samples of the current minute per region pair, as numpy arrays."""

    def __init__(self) -> None:
        self.index = PairIndex()
        self._last_at = np.zeros(0)
        self._chunks: list[np.ndarray] = []  # (k, 4): pair id, rtt (window median), jitter, loss

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return self.index.pairs

    def observe(self, links: Mapping[tuple[str, str], RegionLink]) -> int:
        """Add the links updated since the last call as samples; how many were added."""
        if not links:
            return 0
        table = LinkTable.of(links)
        pids = self.index.ids(table)
        if self._last_at.size < len(self.pairs):
            self._last_at = np.concatenate([self._last_at, np.full(len(self.pairs) - self._last_at.size, -np.inf)])
        at = table.column(LinkTable.UPDATED_AT)
        new = at > self._last_at[pids]
        if not new.any():
            return 0
        self._last_at[pids[new]] = at[new]
        chunk = np.empty((int(new.sum()), 4))
        chunk[:, 0] = pids[new]
        chunk[:, 1] = table.column(LinkTable.P50)[new]
        chunk[:, 2] = table.column(LinkTable.JITTER)[new]
        chunk[:, 3] = table.column(LinkTable.LOSS)[new]
        self._chunks.append(chunk)
        return chunk.shape[0]

    def take(self) -> np.ndarray:
        """The samples so far as one (n, 4) array; the buffer starts the next minute empty."""
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros((0, 4))


class HourBuffer:
    """The minute rows of one hour as this leader wrote them, to roll the hour up without reading
    them back (1.34 million rows at 150 regions, ~4 s of the store and ~1-2 s of Python a worker
    thread holds the GIL for). Kept per minute: pair ids, p50 and p90 (quantiles need every value,
    24 B a row, ~32 MB an hour at 150 regions); min, max, samples and the weighted sums of loss
    and jitter run. `rows()` is `hour_rows` of the same minutes (tests/unit/test_history.py).

    `complete`: every minute of the hour is here (the writer has run since before the hour
    began); only then is the store not asked.
    """

    def __init__(self, hour: int, complete: bool) -> None:
        self.hour, self.complete = hour, complete
        self.last_bucket: int | None = None
        self._number: dict[tuple[str, str], int] = {}
        self._pid: list[np.ndarray] = []
        self._p50: list[np.ndarray] = []
        self._p90: list[np.ndarray] = []
        self._sums = np.zeros((6, 0))  # lo, hi, samples, loss x n, jitter x n, n of finite jitter

    def add(self, bucket: int, rows: Sequence[Row]) -> None:
        """Minute rows (as written: None where nothing came back); `bucket`: the newest minute."""
        self.last_bucket = bucket
        if not rows:
            return
        number = self._number
        pid = np.fromiter((number.setdefault((r[0], r[1]), len(number)) for r in rows), np.int64, len(rows))
        if self._sums.shape[1] < len(number):
            grown = np.zeros((6, len(number)))
            grown[0], grown[1] = np.inf, -np.inf
            grown[:, : self._sums.shape[1]] = self._sums
            self._sums = grown

        def col(i: int) -> np.ndarray:
            return np.array([math.nan if r[i] is None else r[i] for r in rows], dtype=np.float64)

        rmin, r50, r90, rmax, loss, jit = (col(i) for i in (4, 5, 6, 7, 8, 9))
        n = np.array([r[10] for r in rows], dtype=np.float64)
        s, ok, okj = self._sums, np.isfinite(r50), np.isfinite(jit)
        np.fmin.at(s[0], pid[ok], rmin[ok])  # `.at`: a pair may come more than once (`hour_rows`)
        np.fmax.at(s[1], pid[ok], rmax[ok])
        np.add.at(s[2], pid, n)
        np.add.at(s[3], pid, loss * n)
        np.add.at(s[4], pid[okj], jit[okj] * n[okj])
        np.add.at(s[5], pid[okj], n[okj])
        self._pid.append(pid)
        self._p50.append(r50)
        self._p90.append(r90)

    def rows(self, step: int = HOUR) -> list[Row]:
        """The hour's row of each pair seen."""
        size = len(self._number)
        if not size:
            return []
        pid, r50, r90 = (np.concatenate(x) for x in (self._pid, self._p50, self._p90))
        ok = np.isfinite(r50)
        p50, p90 = np.full(size, np.nan), np.full(size, np.nan)
        for target, values, how in ((p50, r50, 0.5), (p90, r90, 0.9)):
            keys, starts, counts, v = _groups(pid[ok], values[ok])
            if keys.size:
                target[keys] = _quantile(v, starts, counts, how)
        lo, hi, samples, loss_w, jit_w, jit_n = self._sums
        seen = np.isfinite(lo)
        with np.errstate(invalid="ignore", divide="ignore"):
            loss_mean, jit_mean = loss_w / samples, jit_w / jit_n
        out: list[Row] = []
        for (a, b), k in self._number.items():
            jitter = float(jit_mean[k]) if jit_n[k] > 0 else math.nan
            out.append(
                (a, b, step, self.hour, _opt(lo[k]) if seen[k] else None, _opt(p50[k]), _opt(p90[k]),
                 _opt(hi[k]) if seen[k] else None, round(float(loss_mean[k]), 4), _opt(jitter), int(samples[k]))
            )  # fmt: skip
        return out


# --- the leader's writer (called by the control loop) ---------------------------------------


class HistoryWriter:
    """Buffers the folded links of each tick; at each minute boundary hands back the write of the
    minute's rows (one executemany, fenced by the lease) and of any hour that has ended."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.reset()

    def reset(self) -> None:
        """Forget the buffer (a replica that begins to lead starts a fresh minute)."""
        self.buffer = MinuteBuffer()
        self._bucket: int | None = None
        self._hours_done: int | None = None  # start of the newest hour rolled up (or found rolled up)
        self._hour: HourBuffer | None = None  # the minutes of the current hour, as written

    def tick(self, links: Mapping[tuple[str, str], RegionLink], now: float) -> Callable[[], Awaitable[bool]] | None:
        """Take this tick's links. At a minute boundary, also the write of the minute that ended
        (its rows, then any hour that has ended), fenced by the lease as it is now, for the caller
        to run off the tick (~1 s at 150 regions); it answers False when the store refused it
        because the lease is no longer ours. Writes must run one at a time, in order."""
        bucket = int(now // MINUTE) * MINUTE
        write = None
        if self._bucket is not None and bucket != self._bucket:
            samples, pairs = self.buffer.take(), list(self.buffer.pairs)
            write = functools.partial(self._flush, self._bucket, samples, pairs, self.ctl.leadership.fence)
        self._bucket = bucket
        self.buffer.observe(links)
        return write

    async def _flush(self, bucket: int, samples: np.ndarray, pairs: list[tuple[str, str]], fence: Fence) -> bool:
        rows = await asyncio.to_thread(
            minute_rows, pairs, samples[:, 0], samples[:, 1], samples[:, 2], samples[:, 3], bucket
        )
        if not await self._write(rows, fence):
            return False
        hour = bucket // HOUR * HOUR
        held = self._hour
        if held is None or held.hour != hour:  # whole only if we wrote the minute before the hour too
            held = self._hour = HourBuffer(hour, held is not None and held.last_bucket == hour - MINUTE)
        await asyncio.to_thread(held.add, bucket, rows)  # ~20 ms at 150 regions: not on the event loop
        return await self._roll_hours(bucket + MINUTE, fence)

    async def _write(self, rows: list[Row], fence: Fence) -> bool:
        """Rows in transactions of `WRITE_ROWS`, each fenced: reports and the lease get in between."""
        ctl = self.ctl
        for at in range(0, len(rows), WRITE_ROWS):
            if not await ctl.db(ctl.store.history.write, rows[at : at + WRITE_ROWS], fence, ctl.clock()):
                return False
        return True

    async def _roll_hours(self, upto: int, fence: Fence) -> bool:
        """Roll up every hour that ended by `upto` and has no hour rows yet (at most a day back)."""
        ctl = self.ctl
        ended = upto // HOUR * HOUR  # hours before this one are over
        if self._hours_done is None:
            newest = await asyncio.to_thread(ctl.store.history.newest_bucket, HOUR)
            self._hours_done = ended - (CATCH_UP_HOURS + 1) * HOUR if newest is None else newest
        start = max(self._hours_done + HOUR, ended - CATCH_UP_HOURS * HOUR)
        for hour in range(start, ended, HOUR):
            held = self._hour
            if held is not None and held.hour == hour and held.complete:
                rows = await asyncio.to_thread(held.rows)
            else:  # minutes another leader wrote, or from before we began: from the store
                minutes = await asyncio.to_thread(ctl.store.history.buckets, MINUTE, hour, hour + HOUR)
                rows = await asyncio.to_thread(hour_rows, minutes, hour)
            if not await self._write(rows, fence):
                return False
            self._hours_done = hour
        return True

    async def prune(self, now: float) -> int:
        return int(await self.ctl.db(self.ctl.store.history.prune, KEEP, now))


# --- reads (any replica: from the store) -----------------------------------------------------


def check_since(value: str) -> str:
    """A duration back from now (`90s`, `15m`, `24h`, `7d`, `2w`) or an ISO 8601 time; ValueError if neither."""
    text = value.strip()
    if _DURATION.match(text):
        return text
    try:
        _iso(text)
    except ValueError:
        raise ValueError("give a duration back from now (e.g. 15m, 24h, 7d) or an ISO 8601 time") from None
    return text


def _iso(text: str) -> float:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def since_epoch(value: str, now: float) -> float:
    """`since` (see `check_since`) as epoch seconds; Invalid naming the field otherwise."""
    text = value.strip()
    m = _DURATION.match(text)
    if m:
        return now - int(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return _iso(text)
    except ValueError as exc:
        raise Invalid(f"since: {exc}", field="since") from exc


def pick_step(step: str, since: float, now: float) -> int:
    """Seconds per bucket: `1m`, `1h`, or `auto` (minutes while they are kept, hours beyond)."""
    if step == "auto":
        return MINUTE if now - since <= KEEP[MINUTE] else HOUR
    if step not in STEPS:
        raise Invalid(f"step: {step!r} is not one of 1m, 1h, auto", field="step")
    return STEPS[step]


async def history_out(ctl: Controller, src: str, dst: str, since: str, step: str) -> s.LinkHistoryOut:
    """`GET /v1/links/{src}/{dst}/history`: the pair's buckets from the store (any replica)."""
    ctl.get_region(src)
    ctl.get_region(dst)
    now = ctl.clock()
    start = since_epoch(since, now)
    step_s = pick_step(step, start, now)
    first = int(start // step_s) * step_s
    found = await asyncio.to_thread(ctl.store.history.series, src, dst, step_s, first)
    return s.LinkHistoryOut(
        src=src,
        dst=dst,
        step="1m" if step_s == MINUTE else "1h",
        step_s=step_s,
        since=datetime.fromtimestamp(first, UTC),
        until=datetime.fromtimestamp(now, UTC),
        points=[
            s.LinkHistoryPoint(
                at=datetime.fromtimestamp(p.bucket_start, UTC),
                rtt_min_ms=p.rtt_min_ms,
                rtt_p50_ms=p.rtt_p50_ms,
                rtt_p90_ms=p.rtt_p90_ms,
                rtt_max_ms=p.rtt_max_ms,
                loss_percent=p.loss_percent,
                jitter_ms=p.jitter_ms,
                samples=p.samples,
            )
            for p in found
        ],
    )
