"""Link history: the minute and hour rollups held to numpy on the same samples, the minute buffer,
and the leader writing, rolling up and pruning through the real control loop with a fake clock
(a temp-file SQLite store; `tests/api/test_history_api.py` covers the API on every backend)."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshctl.core.links import RegionLink
from meshctl.service import history as h
from meshctl.service.loop import route_change_reason
from meshctl.store.history import Row
from tests.unit.test_control_loop import TRIANGLE, A, B, C, D, FakeClock, run, started


def _close(got: float | None, want: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-3)


def test_minute_rows_match_numpy() -> None:
    rng = np.random.default_rng(7)
    pairs = [(f"aws:r{i}", f"gcp:r{j}") for i in range(6) for j in range(5)]
    n = 3000
    pid = rng.integers(0, len(pairs) - 3, n)  # the last three pairs have no samples: no rows
    rtt = rng.lognormal(3.5, 0.4, n)
    rtt[rng.random(n) < 0.1] = math.inf  # windows with nothing back
    lost_pair = 0
    rtt[pid == lost_pair] = math.inf  # every window of this pair lost
    jitter = rng.random(n) * 3
    loss = np.where(np.isinf(rtt), 100.0, rng.random(n) * 5)
    rows = h.minute_rows(pairs, pid, rtt, jitter, loss, bucket=1_700_000_040)
    by_pair = {(r[0], r[1]): r for r in rows}
    assert len(rows) == len(set(pid.tolist())) == len(pairs) - 3
    for k, pair in enumerate(pairs):
        mine = pid == k
        if not mine.any():
            assert pair not in by_pair
            continue
        src, dst, step, bucket, lo, p50, p90, hi, loss_pct, jit, samples = by_pair[pair]
        assert (src, dst, step, bucket, samples) == (*pair, 60, 1_700_000_040, int(mine.sum()))
        assert _close(loss_pct, float(loss[mine].mean()))
        ok = rtt[mine][np.isfinite(rtt[mine])]
        if k == lost_pair:
            assert lo is p50 is p90 is hi is jit is None and loss_pct == 100.0
            continue
        assert _close(lo, float(ok.min())) and _close(hi, float(ok.max()))
        assert _close(p50, float(np.percentile(ok, 50))) and _close(p90, float(np.percentile(ok, 90)))
        assert _close(jit, float(jitter[mine][np.isfinite(rtt[mine])].mean()))


def test_hour_rows_from_minutes_match_numpy() -> None:
    rng = np.random.default_rng(11)
    hour = 1_700_002_800
    rows: list[Row] = []
    for pair in [("aws:a", "aws:b"), ("aws:b", "aws:a"), ("gcp:c", "aws:a")]:
        for minute in rng.choice(60, size=int(rng.integers(1, 60)), replace=False):
            p50 = float(rng.lognormal(3, 0.3))
            lost = pair == ("gcp:c", "aws:a") and minute % 3 == 0
            rows.append(
                (*pair, 60, hour + 60 * int(minute),
                 None if lost else p50 * 0.9, None if lost else p50, None if lost else p50 * 1.2,
                 None if lost else p50 * 1.5, 100.0 if lost else float(rng.random() * 2),
                 None if lost else float(rng.random()), int(rng.integers(1, 13)))
            )  # fmt: skip
    out = {(r[0], r[1]): r for r in h.hour_rows(rows, hour)}
    assert len(out) == 3
    for pair, got in out.items():
        mine = [r for r in rows if (r[0], r[1]) == pair]
        ok = [r for r in mine if r[5] is not None]
        n = np.array([r[10] for r in mine], float)
        assert got[2:4] == (3600, hour) and got[10] == int(n.sum())
        assert _close(got[4], min(r[4] for r in ok)) and _close(got[7], max(r[7] for r in ok))  # type: ignore[type-var]
        assert _close(got[5], float(np.percentile([r[5] for r in ok], 50)))
        assert _close(got[6], float(np.percentile([r[6] for r in ok], 90)))
        assert _close(got[8], float(np.average([r[8] for r in mine], weights=n)))
        assert _close(got[9], float(np.average([r[9] for r in ok], weights=[r[10] for r in ok])))


def test_hour_buffer_rolls_up_as_hour_rows_does() -> None:
    """The leader's hour kept in memory gives the rows `hour_rows` makes of the same minutes read
    back: pairs missing from some minutes, lost minutes (None), no jitter, minutes with no rows."""
    rng = np.random.default_rng(23)
    hour = 1_700_002_800
    pairs = [("aws:a", "aws:b"), ("aws:b", "aws:a"), ("gcp:c", "aws:a"), ("gcp:c", "aws:b")]
    buf, every = h.HourBuffer(hour, complete=True), []
    for minute in range(60):
        rows: list[Row] = []
        for k, pair in enumerate(pairs):
            if minute % 13 == 5 or rng.random() < 0.2 * k:
                continue
            p50 = round(float(rng.lognormal(3, 0.3)), 4)
            lost = k == 2 and minute % 3 == 0
            rows.append(
                (*pair, 60, hour + 60 * minute,
                 None if lost else round(p50 * 0.9, 4), None if lost else p50, None if lost else round(p50 * 1.2, 4),
                 None if lost else round(p50 * 1.5, 4), 100.0 if lost else round(float(rng.random() * 2), 4),
                 None if lost or k == 3 else round(float(rng.random()), 4), int(rng.integers(1, 13)))
            )  # fmt: skip
        buf.add(hour + 60 * minute, rows)
        every += rows
    assert buf.last_bucket == hour + 3540
    want = {(r[0], r[1]): r for r in h.hour_rows(every, hour)}
    got = {(r[0], r[1]): r for r in buf.rows()}
    assert got.keys() == want.keys() == set(pairs)
    for pair, row in got.items():
        assert row[:5] == want[pair][:5] and row[5:8] == want[pair][5:8] and row[10] == want[pair][10]
        assert row[8] == pytest.approx(want[pair][8], abs=1e-4)
        assert (row[9] is None) == (want[pair][9] is None) and (row[9] is None or abs(row[9] - want[pair][9]) <= 1e-4)
    assert got[("gcp:c", "aws:b")][9] is None  # no jitter ever came back
    assert h.HourBuffer(hour, complete=True).rows() == []


def _link(src: str, dst: str, rtt: float, at: float) -> RegionLink:
    return RegionLink(src, dst, rtt, rtt * 1.1, 0.5, 1.0, at, 3)


def test_buffer_takes_only_links_measured_again() -> None:
    buf = h.MinuteBuffer()
    links = {(A, B): _link(A, B, 20.0, 10.0), (B, A): _link(B, A, 21.0, 10.0)}
    assert buf.observe(links) == 2
    assert buf.observe(links) == 0  # the same windows folded again are not new samples
    links[(A, B)] = _link(A, B, 22.0, 11.0)
    links[(A, C)] = _link(A, C, 90.0, 11.0)
    assert buf.observe(links) == 2
    taken = buf.take()
    assert taken.shape == (4, 4) and buf.take().shape == (0, 4)
    got = sorted((buf.pairs[int(p)], r) for p, r in taken[:, :2].tolist())
    assert got == sorted([((A, B), 20.0), ((A, B), 22.0), ((A, C), 90.0), ((B, A), 21.0)])


def test_since_and_step() -> None:
    now = 1_700_000_000.0
    assert h.since_epoch("24h", now) == now - 86_400 and h.since_epoch("15m", now) == now - 900
    assert h.since_epoch("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    assert h.since_epoch("2023-11-14T22:13:20", now) == 1_700_000_000.0  # no zone: UTC
    for bad in ("", "yesterday", "24 h", "-1h", "1y"):
        with pytest.raises(ValueError):
            h.check_since(bad)
    assert h.pick_step("auto", now - 3600, now) == 60 and h.pick_step("auto", now - 7 * 86_400, now) == 3600
    assert h.pick_step("1h", now - 60, now) == 3600


def test_route_change_reason_names_pairs() -> None:
    sample = [
        {"src": A, "dst": C, "before": [A, C], "after": [A, B, C]},
        {"src": C, "dst": A, "before": [C, B, A], "after": [C, A]},
        {"src": A, "dst": D, "before": [A, D], "after": None},
        {"src": D, "dst": A, "before": None, "after": [D, B, C, A]},
    ]
    text = route_change_reason(sample, 7, 19)
    assert text == (
        f"{A} -> {C} now via {B} (was direct); {C} -> {A} now direct (was via {B}); "
        f"{A} -> {D} now unreachable (was direct); +4 more (generation 19)"
    )
    assert route_change_reason(sample[3:], 1, 2) == f"{D} -> {A} now via {B}, {C} (was unreachable) (generation 2)"


def test_leader_writes_minutes_rolls_up_hours_and_prunes(tmp_path: Path) -> None:
    hour = 1_700_002_800  # an hour boundary
    clock = FakeClock(hour - 150.0)

    async def main() -> None:
        replica, mesh = await started(tmp_path, clock, A, B, C, D)
        ctl, hist = replica.ctl, replica.ctl.store.history
        regions = (A, B, C, D)
        try:
            for _ in range(230):  # a second at a time, across minute boundaries and an hour boundary
                await mesh.second(regions)
            await replica.loop.chores_done()  # the writes run beside the ticks
            minutes = hist.series(A, B, 60, 0)
            starts = [p.bucket_start for p in minutes]
            assert starts == sorted(set(starts)) and hour - 120 in starts and hour in starts
            full = next(p for p in minutes if p.bucket_start == hour - 120)
            assert full.samples >= 50  # a window a second, each tick a new sample
            assert full.rtt_p50_ms == pytest.approx(20.0) and full.rtt_p90_ms == pytest.approx(20.0)
            assert full.loss_percent == 0.0 and full.jitter_ms == pytest.approx(0.5)
            # the hour that ended was rolled up from its stored minutes
            (hourly,) = hist.series(A, B, 3600, 0)
            assert hourly.bucket_start == hour - 3600
            expect = {(r[0], r[1]): r for r in h.hour_rows(hist.buckets(60, hour - 3600, hour), hour - 3600)}
            assert hourly.samples == expect[(A, B)][10] == sum(p.samples for p in minutes if p.bucket_start < hour)
            assert len(hist.buckets(3600, hour - 3600, hour)) == len(expect) == 12  # every directed pair
            # API view of the same (any replica reads the store)
            out = await h.history_out(ctl, A, B, "1h", "1m")
            assert out.step == "1m" and [p.at.timestamp() for p in out.points] == [float(x) for x in starts]
            out = await h.history_out(ctl, A, B, "2d", "auto")
            assert out.step == "1h" and len(out.points) == 1
            # pruned by age: minutes after a day, hours after 30 days
            clock.advance(86_400 + 120)
            await replica.loop.tick()
            await replica.loop.chores_done()
            assert hist.series(A, B, 60, 0) == [] and len(hist.series(A, B, 3600, 0)) == 1
            clock.advance(30 * 86_400)
            await replica.loop.tick()
            await replica.loop.chores_done()
            assert hist.series(A, B, 3600, 0) == []
        finally:
            await replica.stop()

    run(main())


def test_ticks_go_on_while_a_minute_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The minute's rows are made and written beside the ticks (~1 s at 150 regions): routes and
    drains do not wait for them. Here making them is held until the test lets it go."""
    clock = FakeClock(1_700_000_000.0)  # 40 s into a minute
    gate, made = threading.Event(), h.minute_rows

    def held(*args: Any) -> list[Row]:
        assert gate.wait(30), "never let go"
        return made(*args)

    monkeypatch.setattr(h, "minute_rows", held)

    async def main() -> None:
        replica, mesh = await started(tmp_path, clock, A, B, C)
        hist = replica.ctl.store.history
        try:
            for _ in range(50):  # across the minute boundary and 30 s on: no tick waits
                await asyncio.wait_for(mesh.second((A, B, C), TRIANGLE), 5.0)
            assert replica.route(A, C)["path"] and hist.series(A, B, 60, 0) == []
            gate.set()
            await replica.loop.chores_done()
            (minute,) = hist.series(A, B, 60, 0)
            assert minute.bucket_start == 1_699_999_980 and minute.samples >= 15
        finally:
            gate.set()
            await replica.stop()

    run(main())


def test_an_hour_the_leader_wrote_whole_is_rolled_up_from_memory(tmp_path: Path) -> None:
    """An hour whose every minute this leader wrote is rolled up from what it kept, without
    reading the minutes back; an hour it began within is read back from the store. Both rows are
    what `hour_rows` makes of the stored minutes."""
    hour = 1_700_002_800
    clock = FakeClock(hour - 150.0)

    async def main() -> None:
        replica, _ = await started(tmp_path, clock, A, B, C)
        store, writer = replica.ctl.store.history, replica.loop.history
        read, reads = store.buckets, []

        def spy(step: int, start: int, end: int) -> list[Row]:
            reads.append((step, start))
            return read(step, start, end)

        store.buckets = spy  # type: ignore[method-assign]
        try:
            writer.reset()
            for i in range(130):  # every 30 s from 150 s before the hour to past the next one
                t = hour - 150.0 + 30 * i
                links = {(a, b): _link(a, b, 20.0 + i % 7 + (a == C), t) for a, b in ((A, B), (B, A), (A, C), (C, A))}
                write = writer.tick(links, t)
                if write is not None:
                    assert await write()
            assert (h.MINUTE, hour) not in reads  # the whole hour: from memory
            assert (h.MINUTE, hour - 3600) in reads  # begun within: read back
            for start in (hour - 3600, hour):
                (row,) = [r for r in read(3600, start, start + 1) if (r[0], r[1]) == (A, B)]
                (want,) = [r for r in h.hour_rows(read(h.MINUTE, start, start + 3600), start) if r[:2] == row[:2]]
                assert row[:8] == want[:8] and row[10] == want[10] and row[8:10] == pytest.approx(want[8:10])
            (whole,) = [r for r in read(3600, hour, hour + 1) if (r[0], r[1]) == (A, B)]
            assert whole[10] == 120  # a new sample each 30 s tick, 60 minutes
        finally:
            store.buckets = read  # type: ignore[method-assign]
            await replica.stop()

    run(main())


def test_a_new_leader_keeps_what_was_written_and_follower_reads(tmp_path: Path) -> None:
    """A minute written twice (a new leader's partial minute) keeps the first row; writes need the lease."""
    clock = FakeClock(1_700_000_000.0)

    async def main() -> None:
        replica, mesh = await started(tmp_path, clock, A, B, C)
        hist = replica.ctl.store.history
        try:
            for _ in range(70):
                await mesh.second((A, B, C), TRIANGLE)
            await replica.loop.chores_done()
            before = hist.series(A, B, 60, 0)
            assert before
            row: Row = (A, B, 60, before[0].bucket_start, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1)
            assert hist.write([row], None, clock())
            assert hist.series(A, B, 60, 0) == before  # ON CONFLICT DO NOTHING
            stale = replica.ctl.leadership.fence
            replica.ctl.store.release(stale)  # the lease is gone: a fenced write is refused
            assert not hist.write([(*row[:3], row[3] + 600, *row[4:])], stale, clock())  # type: ignore[arg-type]
            assert hist.series(A, B, 60, 0) == before
        finally:
            await replica.stop()

    run(main())
