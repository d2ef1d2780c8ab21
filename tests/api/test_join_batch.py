"""Group-committed joins (`Store.join_batch`) held to the one-by-one join (`Store.join_node`).

The same generated requests (good tokens, used-up, expired, unknown and another region's tokens,
an unknown region, a region whose subnet runs out) go through `join_batch` in random chunks on
one database and through `join_node`, one transaction each, on another: every answer (the node,
its address and peer generation, or the refusal and its text), the tokens' uses left and the
events must be the same. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from meshctl.core.ipam import SubnetExhausted
from meshctl.store.db import JoinRefused, JoinRequest, Store
from meshctl.store.models import JoinTokenRow
from meshctl.store.values import Node
from tests.conftest import make_database_url

NOW = 1_700_000_000.0
REGIONS = ["aws:us-east-1", "gcp:us-east4", "azure:westeurope"]
OVERLAY = "100.96.0.0/12"
PREFIX = 28  # 13 hosts a region: the generated joins run one region out of addresses


@pytest.fixture
def two_stores(backend: str, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    urls = []
    for name in ("batch", "single"):
        (tmp_path / name).mkdir()
        urls.append(make_database_url(backend, tmp_path / name))
    stores = [Store(url) for url, _ in urls]
    try:
        for st in stores:
            st.open()
        yield stores[0], stores[1]
    finally:
        for st in stores:
            st.close()
        for _, drop in urls:
            drop()


def seed(store: Store, tokens: list[tuple[str, str, float, int]]) -> None:
    for i, region in enumerate(REGIONS):
        store.upsert_region(region, region.split(":")[0], None, float(i), float(i), None, NOW - 100)
    for k, (h, region, expires, uses) in enumerate(tokens):
        store.create_join_token(f"jt{k}", region, h, expires - 3600, 3600, uses)


def requests(rng: random.Random, tokens: list[tuple[str, str, float, int]], n: int) -> list[JoinRequest]:
    out = []
    for i in range(n):
        h, region, _, _ = rng.choices(tokens, weights=[5] + [1] * (len(tokens) - 1))[0]
        kind = rng.random()
        if kind < 0.08:
            h = secrets.token_hex(32)  # no such token
        elif kind < 0.14:
            region = rng.choice([r for r in REGIONS if r != region])  # another region's token
        elif kind < 0.17:
            region = "aws:mars-1"  # no such region
        out.append(
            JoinRequest(
                node_id=f"n-{i:016x}",
                region=region,
                name=f"node-{i}",
                public_key=f"{i:043d}=",
                endpoint=f"192.0.2.{i % 250 + 1}:51820",
                token_hash=f"{i:064x}",
                now=NOW,
                overlay_cidr=OVERLAY,
                region_prefix=PREFIX,
                join_hash=h,
            )
        )
    return out


def answer(found: tuple[Node, int] | Exception) -> tuple[str, ...]:
    if isinstance(found, Exception):
        return (type(found).__name__, str(found))
    node, gen = found
    assert node.peer_gen == gen
    return ("joined", node.id, node.region, node.overlay_ip, str(gen))


def one_by_one(store: Store, reqs: list[JoinRequest]) -> list[tuple[str, ...]]:
    out = []
    for r in reqs:
        try:
            out.append(
                answer(
                    store.join_node(
                        node_id=r.node_id,
                        join_hash=r.join_hash or "",
                        region=r.region,
                        name=r.name,
                        public_key=r.public_key,
                        endpoint=r.endpoint,
                        token_hash=r.token_hash,
                        now=r.now,
                        overlay_cidr=r.overlay_cidr,
                        region_prefix=r.region_prefix,
                    )
                )
            )
        except (JoinRefused, SubnetExhausted) as exc:
            out.append(answer(exc))
    return out


@pytest.mark.parametrize("seed_no", [1, 2])
def test_a_batch_answers_every_join_as_one_by_one_would(two_stores: tuple[Store, Store], seed_no: int) -> None:
    rng = random.Random(seed_no)
    batch, single = two_stores
    tokens = [
        (secrets.token_hex(32), REGIONS[0], NOW + 600, 40),  # more uses than addresses: the subnet runs out
        (secrets.token_hex(32), REGIONS[1], NOW + 600, 3),  # used up early
        (secrets.token_hex(32), REGIONS[1], NOW - 1, 5),  # expired
        (secrets.token_hex(32), REGIONS[2], NOW + 600, 8),
    ]
    seed(batch, tokens)
    seed(single, tokens)
    reqs = requests(rng, tokens, 70)

    got: list[tuple[str, ...]] = []
    i = 0
    while i < len(reqs):
        size = rng.randint(1, 12)
        got += [answer(a) for a in batch.join_batch(reqs[i : i + size])]
        i += size
    want = one_by_one(single, reqs)

    assert got == want
    kinds = {a[0] for a in want}
    assert {"joined", "JoinRefused", "SubnetExhausted"} <= kinds  # every path was taken
    assert {t.token_hash: t.uses_left for t in _tokens(batch)} == {t.token_hash: t.uses_left for t in _tokens(single)}
    assert [(n.id, n.overlay_ip, n.peer_gen) for n in batch.nodes()] == [
        (n.id, n.overlay_ip, n.peer_gen) for n in single.nodes()
    ]
    assert batch.counters()["peer_generation"] == single.counters()["peer_generation"]
    assert [(e.kind, e.reason, e.node_id) for e in batch.events(None, None, 500)] == [
        (e.kind, e.reason, e.node_id) for e in single.events(None, None, 500)
    ]


def _tokens(store: Store) -> list[JoinTokenRow]:
    with store._session() as s:
        return list(s.scalars(select(JoinTokenRow).order_by(JoinTokenRow.id)))


def test_nodes_since_reads_only_what_changed_after_a_generation(two_stores: tuple[Store, Store]) -> None:
    store, _ = two_stores
    h = secrets.token_hex(32)
    seed(store, [(h, REGIONS[0], NOW + 600, 10)])
    reqs = requests(random.Random(3), [(h, REGIONS[0], NOW + 600, 10)], 6)
    reqs = [dataclasses.replace(r, region=REGIONS[0], join_hash=h) for r in reqs]
    joined = [a for a in store.join_batch(reqs[:4]) if not isinstance(a, Exception)]
    gen_after_four = store.counters()["peer_generation"]
    assert len(joined) == 4
    store.join_batch(reqs[4:])
    first = joined[0][0]
    store.remove_node(first.id, NOW + 1)

    gen, changed, drains = store.nodes_since(gen_after_four)
    assert gen == gen_after_four + 3
    assert sorted(n.id for n in changed) == sorted([reqs[4].node_id, reqs[5].node_id, first.id])
    gone = next(n for n in changed if n.id == first.id)
    assert gone.removed_at is not None and gone.peer_gen == gen
    assert drains == []
    assert store.nodes_since(gen)[1] == []
