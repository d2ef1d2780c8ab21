"""Store.insert_reports: one transaction per batch, duplicates told apart, node counters kept.

The packed form of the windows and their pruning: tests/unit/test_report_packing.py."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from meshctl.store.db import SQLITE_PAGE_SIZE, Store
from meshctl.store.reports import Window
from meshctl.store.values import Node, Region


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    st = Store(database_url)
    st.open()
    seed(st)
    try:
        yield st
    finally:
        st.close()


def seed(st: Store) -> None:
    """A region and two nodes, n-a and n-b."""
    st.upsert_region("aws:us-east-1", "aws", None, 0.0, 0.0, None, 1.0)
    for name in ("a", "b"):
        tok = st.create_join_token(f"j{name}", "aws:us-east-1", f"hash-j{name}", 1.0, 600, 1)
        st.join_node(
            node_id=f"n-{name}",
            join_hash=tok.token_hash,
            region="aws:us-east-1",
            name=name,
            public_key="A" * 43 + "=",
            endpoint="192.0.2.1:51820",
            token_hash=f"hash-n{name}",
            now=1.0,
            overlay_cidr="100.96.0.0/12",
            region_prefix=22,
        )


def row(node: str, seq: int, at: float) -> Window:
    peer = "n-b" if node == "n-a" else "n-a"
    columns = np.array([[10.0], [9.0], [20.0 + seq], [21.5], [0.25]])
    return Window(node, seq, at - 5, at, 5.0, [peer], columns)


def test_batches_duplicates_and_counters(store: Store) -> None:
    assert store.insert_reports([], "r1") == []
    first = [row("n-a", 1, 10.0), row("n-a", 3, 12.0), row("n-b", 7, 11.0), row("n-a", 1, 13.0)]
    assert store.insert_reports(first, "r1") == [True, True, True, False]  # the same window twice in a batch
    assert store.insert_reports([row("n-a", 2, 20.0), row("n-b", 7, 21.0)], "r2") == [True, False]
    nodes = {n.id: n for n in store.nodes()}
    assert (nodes["n-a"].last_seq, nodes["n-a"].reports_accepted, nodes["n-a"].last_report_at) == (3, 3, 20.0)
    assert (nodes["n-b"].last_seq, nodes["n-b"].reports_accepted, nodes["n-b"].last_report_at) == (7, 1, 11.0)
    rows, cursor = store.reports_after(0, "r1")
    assert [(r.node_id, r.seq, r.replica_id, r.window_start, r.window_s) for r in rows] == [("n-a", 2, "r2", 15.0, 5.0)]
    assert rows[0].peer_ids == ("n-b",) and rows[0].columns.tolist() == [[10.0], [9.0], [22.0], [21.5], [0.25]]
    assert cursor.after == store.max_report_id() and not cursor.gaps


def test_an_acknowledged_write_is_synced_to_disk(database_url: str) -> None:
    """An accepted report must survive a power cut, not only a controller crash: SQLite syncs
    its WAL on every commit (synchronous=FULL); PostgreSQL commits synchronously."""
    st = Store(database_url)
    st.open()
    try:
        with st.engine.connect() as conn:
            if st.backend == "sqlite":
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            else:
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    finally:
        st.close()


def test_a_new_sqlite_database_has_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """1 KiB pages write 2.4x fewer bytes per report window (bench.bench_report_store); a database
    made before (4 KiB pages, WAL) opens, migrates and takes windows as it is."""
    new = Store(f"sqlite:///{tmp_path / 'new.db'}")
    new.open()
    old_path = tmp_path / "old.db"
    with sqlite3.connect(old_path) as conn:  # as the previous release made it
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE made_before (x INTEGER)")
    old = Store(f"sqlite:///{old_path}")
    old.open()
    try:
        for st, size in ((new, SQLITE_PAGE_SIZE), (old, 4096)):
            with st.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA page_size").scalar() == size
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            seed(st)
            assert st.insert_reports([row("n-a", 1, 10.0), row("n-a", 1, 11.0)], "r1") == [True, False]
    finally:
        new.close()
        old.close()


def test_the_store_hands_out_frozen_values(store: Store) -> None:
    """What the store returns is a value, not an ORM row a caller could change behind its back."""
    node = store.nodes()[0]
    region = store.regions()[0]
    assert isinstance(node, Node) and isinstance(region, Region)
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.last_seq = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        region.lat = 1.0  # type: ignore[misc]
    assert store.nodes()[0] == node
