"""Events read after an id see every event, also one whose transaction commits after a later one.

On PostgreSQL an event takes its id at insert and shows at commit: a drain's transaction (its event
inserted, then waiting on a row lock) can commit after an event with a higher id. A reader that
took the higher one and moved on (`GET /v1/events?since=`, the event stream, `meshctl events
--follow`) never saw the drain. `Store.events` now holds back everything past an id that is
missing while the event after it is fresh; a gap older than EVENT_GAP_WAIT_S is a rolled-back
transaction and is passed. Driven here with two real transactions on a real server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from meshctl.store.db import EVENT_GAP_WAIT_S, Store
from tests.conftest import make_database_url


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url, drop = make_database_url(str(request.param), tmp_path)
    st = Store(url)
    st.open()
    try:
        yield st
    finally:
        st.close()
        drop()


def _kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.kind for e in events]


def test_an_event_that_commits_after_a_later_one_is_not_skipped(store: Store) -> None:
    if store.backend != "postgresql":
        pytest.skip("SQLite has one writer: events commit in id order")
    now = time.time()
    store.add_event(now, "alert", "before")
    since = store.events(limit=1)[-1].id
    slow = store.engine.connect()  # a drain's transaction: its event inserted, the commit later
    tx = slow.begin()
    slow.execute(
        text("INSERT INTO events (ts, kind, reason, data) VALUES (:ts, 'drain', 'slow drain', '{}')"), {"ts": now}
    )
    try:
        store.add_event(now, "route_change", "committed first")  # a higher id, committed now
        assert store.events(since_id=since, now=now + 1) == []  # not the later one alone
        assert store.events(since_id=since, kind="route_change", now=now + 1) == []
        tx.commit()
    finally:
        slow.close()
    got = store.events(since_id=since, now=now + 1)
    assert _kinds(got) == ["drain", "route_change"]
    assert _kinds(store.events(since_id=since, kind="route_change", now=now + 1)) == ["route_change"]


def test_a_rolled_back_event_holds_readers_only_for_a_while(store: Store) -> None:
    now = time.time()
    store.add_event(now, "alert", "before")
    since = store.events(limit=1)[-1].id
    with store.engine.connect() as conn:  # takes an id, then rolls back: that id is never used
        tx = conn.begin()
        conn.execute(text("INSERT INTO events (ts, kind, reason, data) VALUES (:ts, 'drain', 'x', '{}')"), {"ts": now})
        tx.rollback()
    store.add_event(now, "undrain", "after the gap")
    held = store.events(since_id=since, now=now + 1)
    later = store.events(since_id=since, now=now + EVENT_GAP_WAIT_S + 1)
    assert _kinds(later) == ["undrain"]
    assert held == ([] if store.backend == "postgresql" else later)


def test_events_in_order_without_gaps_are_answered_at_once(store: Store) -> None:
    now = time.time()
    store.add_event(now, "alert", "first")
    since = store.events(limit=1)[-1].id
    for i in range(5):
        store.add_event(now, "alert", f"n{i}")
    assert [e.reason for e in store.events(since_id=since, now=now)] == [f"n{i}" for i in range(5)]
    assert [e.reason for e in store.events(since_id=since, limit=2, now=now)] == ["n0", "n1"]
