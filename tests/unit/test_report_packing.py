"""Stored reports in their compact form (meshctl/store/reports.py).

- The packed batch gives back every window bit for bit (generated windows: NaN where a figure was
  left out, -0.0, values the 0.1 us integers cannot hold, no peers, 300 peers).
- Its size at 298 peers, on windows as noisy as the agent's (4 decimals of a ms).
- On SQLite and PostgreSQL: a window stored by one replica is folded by the leader exactly as
  the replica that accepted it folded it; pruning keeps what a new leader needs (and every
  accepted seq) and drops the rest; the migration from 0005 keeps the seqs and packs the recent
  bodies.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from meshctl.service.report_codec import parse_report
from meshctl.settings import Settings
from meshctl.store.db import MIGRATIONS, Store, make_engine
from meshctl.store.models import ReportBatchRow
from meshctl.store.reports import COLUMNS, Window, pack_batch, unpack_batch
from meshctl.store.values import ReportCursor, StoredReport
from tests.unit.test_control_loop import A, B, C, FakeClock, Mesh, Replica

IDS = [f"{i:016x}" for i in range(1, 400)]  # node ids as the controller makes them (16 hex digits)
NUMBER = {n: i + 1 for i, n in enumerate(IDS)}
WINDOW_BOUND = 3072  # bytes a 298-peer window may take packed (JSON: ~48-63 KiB)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit (NaN equals NaN, -0.0 differs from 0.0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.int64), b.view(np.int64)))


def assert_round_trip(windows: list[Window]) -> bytes:
    data = pack_batch(windows, NUMBER)
    back = unpack_batch(data)
    assert len(back) == len(windows)
    for w, (node, seq, start, received, window_s, peers, cols) in zip(windows, back, strict=True):
        assert (IDS[node - 1], seq, start, received, window_s) == (
            w.node_id,
            w.seq,
            w.window_start,
            w.received_at,
            w.window_s,
        )
        assert [IDS[p - 1] for p in peers.tolist()] == list(w.peer_ids)
        assert same(cols, w.columns), (cols, w.columns)
        assert not cols.flags.writeable
    return data


def agent_like(rng: np.random.Generator, seq: int, peers: int = 298) -> Window:
    """A window as noisy as the agent's: RTTs 5-300 ms with 0.1 us digits, p90 above p50,
    jitter under a ms, a few lossy peers and one that answered nothing."""
    ids = [str(x) for x in rng.choice(IDS[1:], peers, replace=False)]
    p50 = np.round(rng.uniform(5, 300, peers) + rng.exponential(0.3, peers), 4)
    p90 = np.round(p50 + rng.exponential(1.0, peers), 4)
    jitter = np.round(rng.exponential(0.5, peers), 4)
    sent = np.full(peers, 25.0)
    received = sent - (rng.random(peers) < 0.05)
    if peers:
        received[0], p50[0], p90[0], jitter[0] = 0, np.nan, np.nan, np.nan
    return Window(
        IDS[0], seq, 1.7e9 + 5 * seq, 1.7e9 + 5 * seq + 5.6, 5.0, ids, np.stack([sent, received, p50, p90, jitter])
    )


# --- the packed form ----------------------------------------------------------------------


_FIGURE = st.one_of(
    st.just(math.nan),
    st.floats(min_value=0, max_value=60_000, allow_nan=False).map(lambda x: round(x, 4)),
    st.floats(allow_nan=False, allow_infinity=True),  # anything a float holds, -0.0 and subnormals too
)
_COUNT = st.one_of(st.integers(0, 10_000_000).map(float), st.floats(allow_nan=True, allow_infinity=False))


@st.composite
def _windows(draw: st.DrawFn) -> list[Window]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        peers = draw(st.lists(st.sampled_from(IDS), max_size=12, unique=True))
        cols = [[draw(_COUNT if k < 2 else _FIGURE) for _ in peers] for k in range(5)]
        start = draw(st.floats(0, 2e9, allow_nan=False))
        out.append(
            Window(
                draw(st.sampled_from(IDS)),
                draw(st.integers(0, 2**62)),
                start,
                start + draw(st.floats(0, 400, allow_nan=False)),
                draw(st.floats(0.001, 300)),
                peers,
                np.array(cols, dtype=np.float64).reshape(5, len(peers)),
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(_windows())
def test_a_packed_batch_gives_back_every_window_bit_for_bit(windows: list[Window]) -> None:
    assert_round_trip(windows)


def test_edge_cases_round_trip() -> None:
    rng = np.random.default_rng(7)
    empty = Window(IDS[3], 1, 10.0, 12.0, 5.0, [], np.empty((5, 0)))
    assert_round_trip([empty])
    assert_round_trip([empty, agent_like(rng, 2, 300), empty])
    # quantised p50 with a p90 that is not: each column keeps its own form
    w = agent_like(rng, 3, 5)
    w.columns[3, 1] = 100.123456789
    w.columns[2, 2] = -0.0
    assert_round_trip([w])
    # counts that are not integers (an older replica's rules) and figures beyond 0.1 us integers
    odd = agent_like(rng, 4, 4)
    odd.columns[0, 0], odd.columns[2, 1], odd.columns[4, 2] = 2.5, 1e12, 5e-324
    assert_round_trip([odd])


def test_a_non_finite_figure_never_reaches_the_store() -> None:
    """NaN stands for a figure the report left out; a NaN or an infinity sent as a value is refused
    when the report is read, so packing never has to tell them apart."""
    body = {"node_id": IDS[0], "seq": 1, "window_start": "2026-01-02T03:04:05Z", "window_s": 5, "peers": []}
    peer = {"peer_node_id": IDS[1], "sent": 10, "received": 9, "rtt_p50_ms": 2.5, "rtt_p90_ms": 3.0}
    for bad in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps({**body, "peers": [peer]}).replace("2.5", bad)
        with pytest.raises(ValidationError):
            parse_report(raw)
    left_out = parse_report(json.dumps({**body, "peers": [{**peer, "rtt_p90_ms": None}]}))
    assert math.isnan(left_out.peers.p90[0])


def test_garbage_is_not_unpacked() -> None:
    with pytest.raises(ValueError, match="not a packed report batch"):
        unpack_batch(b'{"node_id": "x"}')
    data = pack_batch([agent_like(np.random.default_rng(1), 1, 3)], NUMBER)
    payload = zlib.decompress(data[1:])
    for bad in (payload[:-1], payload + b"\0"):  # cut short, or with bytes left over
        with pytest.raises(ValueError):
            unpack_batch(data[:1] + zlib.compress(bad))


def test_a_298_peer_window_packs_under_the_stated_bound() -> None:
    """README (Storage of reports): a 298-peer window under 3 KiB packed, against 48-63 KiB of JSON;
    batches of 1, 10 and 100 windows (the group commit's sizes)."""
    rng = np.random.default_rng(18)
    for size in (1, 10, 100):
        windows = [agent_like(rng, seq) for seq in range(size)]
        data = assert_round_trip(windows)
        per_window = len(data) / size
        assert per_window < WINDOW_BOUND, (size, per_window)
        body = json.dumps({"node_id": IDS[0], "seq": 1, "window_start": "2026-01-02T03:04:05Z", "window_s": 5.0,
                           "peers": [_peer_json(w, i) for w in windows[:1] for i in range(298)]})  # fmt: skip
        assert len(body) > 12 * per_window, (len(body), per_window)


def _peer_json(w: Window, i: int) -> dict[str, Any]:
    sent, received, p50, p90, jitter = (None if math.isnan(x) else x for x in w.columns[:, i].tolist())
    return {"peer_node_id": w.peer_ids[i], "sent": sent, "received": received, "rtt_min_ms": p50,
            "rtt_p50_ms": p50, "rtt_p90_ms": p90, "rtt_max_ms": p90, "jitter_ms": jitter}  # fmt: skip


def test_format_is_versioned() -> None:
    data = pack_batch([], NUMBER)
    assert data[0] == 1 and struct.unpack_from("<I", zlib.decompress(data[1:]))[0] == 0
    assert COLUMNS == ("sent", "received", "p50", "p90", "jitter")


def test_window_retention_outlives_the_fold() -> None:
    """Default: stale_after_s + 100 s (120 s); following a longer stale_after_s; an explicit value
    shorter than stale_after_s (a new leader would find nothing to rebuild from) is refused."""
    assert Settings().report_window_retention_s == 120.0
    assert Settings(stale_after_s=600).report_window_retention_s == 700.0
    assert Settings(report_window_retention_s=30).report_window_retention_s == 30.0
    with pytest.raises(ValidationError, match="must be at least stale_after_s"):
        Settings(report_window_retention_s=10)
    assert Settings().report_seen_s == 3660.0


# --- in the store ---------------------------------------------------------------------------


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    st_ = Store(database_url)
    st_.open()
    try:
        yield st_
    finally:
        st_.close()


def test_stored_windows_come_back_as_written(store: Store) -> None:
    rng = np.random.default_rng(3)
    windows = [agent_like(rng, seq) for seq in range(1, 6)]
    assert store.insert_reports(windows[:3], "r1") == [True] * 3
    assert store.insert_reports(windows[3:], "r2") == [True] * 2
    found, cursor = store.reports_after(0, "r1")
    assert [r.seq for r in found] == [4, 5] and cursor == ReportCursor(store.max_report_id())
    everything = store.recent_reports(0.0)
    assert [r.seq for r in everything] == [1, 2, 3, 4, 5]
    for w, r in zip(windows, everything, strict=True):
        assert (r.node_id, r.window_start, r.received_at, r.window_s) == (
            w.node_id,
            w.window_start,
            w.received_at,
            w.window_s,
        )
        assert r.peer_ids == tuple(w.peer_ids) and same(r.columns, w.columns)
    # a second Store (another replica's process) knows none of the node numbers yet: it reads them
    other = Store(store.url)
    try:
        again = other.recent_reports(0.0)
        assert [r.peer_ids for r in again] == [r.peer_ids for r in everything]
    finally:
        other.close()


def test_a_batch_committed_after_a_later_one_is_still_read(store: Store) -> None:
    """PostgreSQL hands out ids at insert and commits in any order: a batch whose transaction
    took id n and commits after the one with n + 1 was read is still read, once."""
    if store.backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: its batches commit in id order")
    rng = np.random.default_rng(13)
    slow, quick = agent_like(rng, 1, 5), agent_like(rng, 2, 5)
    number = store.reports.numbers([slow.node_id, *slow.peer_ids])
    row = {"replica_id": "r2", "received_at": 1.0, "reports": 1, "data": pack_batch([slow], number)}
    with store.engine.connect() as conn, conn.begin():  # the slow replica's transaction: id n, open
        conn.execute(sa.insert(ReportBatchRow).values(**row))
        assert store.insert_reports([quick], "r3") == [True]  # id n + 1, committed
        found, cursor = store.reports_after(0, "r1")
        assert [r.seq for r in found] == [2] and cursor.after == 2 and [i for i, _ in cursor.gaps] == [1]
        again, cursor = store.reports_after(cursor, "r1")
        assert again == [] and [i for i, _ in cursor.gaps] == [1]
    found, cursor = store.reports_after(cursor, "r1")  # committed now
    assert [r.seq for r in found] == [1] and cursor == ReportCursor(2)
    assert store.reports_after(cursor, "r1") == ([], ReportCursor(2))


def test_a_gap_that_never_fills_is_given_up(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An id no batch will have (its transaction rolled back) is asked for GAP_WAIT_S, then dropped."""
    import meshctl.store.reports as reports

    rng = np.random.default_rng(14)
    assert store.insert_reports([agent_like(rng, 1, 3)], "r2") == [True]
    found, cursor = store.reports_after(ReportCursor(0, ((0, time.monotonic()),)), "r1")  # id 0: never a batch
    assert [r.seq for r in found] == [1] and [i for i, _ in cursor.gaps] == [0]
    monkeypatch.setattr(reports, "GAP_WAIT_S", 0.0)
    assert store.reports_after(cursor, "r1") == ([], ReportCursor(1))


def test_pruning_keeps_what_a_new_leader_reads_and_every_accepted_seq(store: Store) -> None:
    """Windows received before the cut go (batch by batch), newer ones stay; the (node, seq) of
    a pruned window still refuses it, until the seen cut passes too."""
    rng = np.random.default_rng(5)
    t0 = 1.7e9
    for seq in range(1, 41):  # 40 windows, 5 s apart, each its own batch
        w = agent_like(rng, seq, 20)
        w.received_at = t0 + 5 * seq
        assert store.insert_reports([w], "r1") == [True]
    now = t0 + 5 * 40
    retention, stale = 120.0, 20.0
    batches, rows = store.prune_reports(now - retention, now - 3660.0)
    assert (batches, rows) == (15, 0)  # seqs 1..15 were received more than 120 s ago (16: exactly)
    kept = store.recent_reports(0.0)
    assert [r.seq for r in kept] == list(range(16, 41))
    assert [r.seq for r in store.recent_reports(now - stale)] == list(range(36, 41))  # what a new leader folds
    old = agent_like(rng, 3, 20)
    assert store.insert_reports([old], "r2") == [False]  # pruned window, still refused
    assert store.prune_reports(now - retention, now + 1.0) == (0, 40)  # the seen cut passed every row
    assert store.insert_reports([old], "r2") == [True]


def test_pruning_in_batches_of_rows(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshctl.store.reports as reports

    monkeypatch.setattr(reports, "PRUNE_BATCHES", 3)
    monkeypatch.setattr(reports, "PRUNE_SEEN", 4)
    rng = np.random.default_rng(9)
    for seq in range(1, 11):
        w = agent_like(rng, seq, 2)
        w.received_at = float(seq)
        store.insert_reports([w], "r1")
    assert store.prune_reports(8.5, 6.5) == (8, 6)
    assert [r.seq for r in store.recent_reports(0.0)] == [9, 10]


# --- replicas ---------------------------------------------------------------------------------

ODD = {(A, B): 20.1234, (B, C): 19.9999, (A, C): 100.5}  # RTTs that do not round to a few digits


@asynccontextmanager
async def two_replicas(url: str) -> AsyncIterator[tuple[FakeClock, Replica, Replica, Mesh]]:
    """r1 leading, r2 following, one node in each of A, B and C (joined through r1, known to r2)."""
    clock = FakeClock()
    r1 = await Replica(url, clock, "r1").start()
    await r1.loop.tick()
    r2 = await Replica(url, clock, "r2").start()
    try:
        mesh = Mesh(r1)
        await mesh.add(A, B, C)
        await r2.ctl.reload_config(force=True)
        assert r1.ctl.is_leader
        yield clock, r1, r2, mesh
    finally:
        await r2.stop()
        await r1.stop()


def test_the_leader_folds_a_window_another_replica_stored_as_that_replica_did(database_url: str) -> None:
    """r2 (a follower) accepts the windows and folds them into its own link book; r1 (the leader)
    reads them back from the store: both books fold to the same links, number for number, and
    the stored columns are those of the body as sent."""

    async def main() -> None:
        async with two_replicas(database_url) as (clock, r1, r2, mesh):
            mesh.r = r2
            for _ in range(3):
                for region in (A, B, C):
                    await mesh.report(region, ODD)
                clock.advance(1.0)
                await r1.loop.tick()
                await r2.loop.tick()
            assert r1.ctl.is_leader and not r2.ctl.is_leader
            now = clock()
            stale = r1.ctl.weights.stale_after_s
            leader, accepted = (r.ctl.reports.linkbook.fold(now, stale) for r in (r1, r2))
            assert set(leader) == {(a, b) for a in (A, B, C) for b in (A, B, C) if a != b}
            assert leader == accepted
            stored = await r1.ctl.db(r1.outage.recent_reports, 0.0)
            assert len(stored) == 9 and {r.replica_id for r in stored} == {r2.ctl.leadership.writer_id}
            last = stored[-1]
            sent = parse_report(_body(mesh, last))
            assert last.peer_ids == tuple(sent.peers.ids) and same(last.columns, sent.peers.matrix())

    asyncio.run(main())


def _body(mesh: Mesh, report: StoredReport) -> str:
    """The body `Mesh.report` sent for this stored window (its peers, as Mesh builds them)."""
    region = next(r for r, p in mesh.nodes.items() if p.id == report.node_id)
    peers = []
    for (a, b), rtt in ODD.items():
        other = b if a == region else a
        if region in (a, b):
            peers.append({"peer_node_id": mesh.nodes[other].id, "sent": 10, "received": 10, "rtt_p50_ms": rtt,
                          "rtt_p90_ms": rtt * 1.1, "jitter_ms": 0.5})  # fmt: skip
    start = datetime.fromtimestamp(report.window_start, UTC).isoformat()
    return json.dumps({"node_id": report.node_id, "seq": report.seq, "window_start": start, "window_s": 1.0,
                       "peers": peers})  # fmt: skip


def test_a_new_leader_after_pruning_rebuilds_every_link(database_url: str) -> None:
    """Four minutes of windows with pruning every minute (120 s kept); the leader pauses past its
    lease and r2 takes over: from the stored windows alone its link book folds to the links the
    old leader had, and only the retention's windows are left in the store."""

    async def main() -> None:
        async with two_replicas(database_url) as (clock, r1, r2, mesh):
            for _ in range(240):
                await mesh.second((A, B, C))
            await r2.loop.tick()
            before = r1.ctl.reports.linkbook.fold(clock(), r1.ctl.weights.stale_after_s)
            assert len(before) == 6
            kept = await r2.ctl.db(r2.outage.recent_reports, 0.0)
            retention = r1.ctl.settings.report_window_retention_s
            assert kept and min(r.received_at for r in kept) >= clock() - retention - 61  # pruned each minute
            assert len(kept) < 3 * 240 * (retention + 61) / 240
            with r1.outage._store.engine.connect() as conn:
                seen = conn.execute(sa.text("select count(*) from reports")).scalar_one()
            assert seen == 3 * 240  # every accepted seq is still refused

            clock.advance(r1.ctl.settings.lease_s + 1)  # r1 pauses past its lease: r2 leads
            await r2.loop.tick()
            assert r2.ctl.is_leader
            after = r2.ctl.reports.linkbook.fold(clock(), r2.ctl.weights.stale_after_s)
            assert {k: (v.rtt_p50_ms, v.rtt_p90_ms, v.loss_percent) for k, v in after.items()} == {
                k: (v.rtt_p50_ms, v.rtt_p90_ms, v.loss_percent) for k, v in before.items()
            }
            route = r2.route(A, C)
            assert route["reachable"] and route["path"] == [A, B, C]  # A-C direct is slow (TRIANGLE)

    asyncio.run(main())


# --- the migration ------------------------------------------------------------------------------


def _alembic(conn: sa.Connection, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def test_one_migration_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert len(ScriptDirectory.from_config(cfg).get_heads()) == 1


def test_upgrade_from_json_bodies_keeps_seqs_and_packs_recent_windows(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    with engine.begin() as conn:
        _alembic(conn, "0005")
    rng = np.random.default_rng(11)
    t = 1.7e9
    windows = [agent_like(rng, seq, 30) for seq in range(1, 5)]
    received = [t - 900.0, t - 10.0, t - 5.0, t]  # the first is beyond the 600 s that are packed
    insert = sa.text(
        "INSERT INTO reports (node_id, seq, window_start, received_at, replica_id, body)"
        " VALUES (:n, :q, :ws, :at, :r, :b)"
    )
    with engine.begin() as conn:
        for w, at in zip(windows, received, strict=True):
            start = datetime.fromtimestamp(w.window_start, UTC).isoformat()
            body = {"node_id": w.node_id, "seq": w.seq, "window_start": start, "window_s": w.window_s,
                    "peers": [_peer_json(w, i) for i in range(len(w.peer_ids))]}  # fmt: skip
            params = {"n": w.node_id, "q": w.seq, "ws": w.window_start, "at": at, "r": "old", "b": json.dumps(body)}
            conn.execute(insert, params)
        conn.execute(insert, {"n": IDS[5], "q": 1, "ws": t, "at": t, "r": "old", "b": "not json"})
    engine.dispose()

    store = Store(database_url)
    store.open()  # migrates to head
    try:
        with store.engine.connect() as conn:
            seen = sorted(tuple(r) for r in conn.execute(sa.text("select node_id, seq from reports")))
        assert seen == sorted([(IDS[0], 1), (IDS[0], 2), (IDS[0], 3), (IDS[0], 4), (IDS[5], 1)])
        back = store.recent_reports(0.0)
        assert [r.seq for r in back] == [2, 3, 4]  # the old and the unreadable body are not packed
        for w, r in zip(windows[1:], back, strict=True):
            assert r.peer_ids == tuple(w.peer_ids) and same(r.columns, w.columns)
            assert (r.window_start, r.window_s, r.replica_id) == (w.window_start, w.window_s, "old")
        assert store.insert_reports([windows[0]], "new") == [False]  # still refused after the upgrade
    finally:
        store.close()
