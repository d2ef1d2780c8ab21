"""Peer lists kept current entry by entry, and joins that cost the same whatever the fleet.

In process (a real Controller on SQLite and PostgreSQL): after every step of a generated history
(joins in flight together, removals, key and endpoint changes, node and region drains) each
node's list from the peer book equals `Views.peers_of`, the reference; a second replica that
follows by reading only the changed rows ends with the same nodes as a fresh full read.

Over HTTP (a real controller): a join makes one peer-list entry and reads a few node rows,
whether 10 or 130 nodes are there (the old join re-read every node, and rebuilt every entry in
each list it served); existing nodes' lists and long polls get the new node, lose a removed one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from meshctl.service import peerbook
from meshctl.service.controller import Controller
from meshctl.settings import Settings
from meshctl.store.db import Store
from meshctl.wire import schemas as s
from probes.peerlist import merged
from tests.conftest import ControllerProcess

T = TypeVar("T")
REGIONS = ["aws:us-east-1", "gcp:us-east4", "azure:westeurope", "aws:eu-west-1"]
ADMIN = "msh_a_peer-book-test-" + "x" * 32


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def key(i: int) -> str:
    return base64.b64encode(i.to_bytes(32, "big")).decode()


async def replica(url: str, replica_id: str) -> Controller:
    ctl = Controller(Settings(database_url=url, replica_id=replica_id, admin_token=ADMIN), Store(url))
    await ctl.start()
    return ctl


async def stop(ctl: Controller) -> None:
    await ctl.stop()
    ctl.store.close()


def assert_lists_match_reference(ctl: Controller) -> None:
    for node_id in ctl.nodes:
        fast = json.loads(ctl.peers_json(node_id))
        assert fast == ctl.peers_of(node_id).model_dump(mode="json"), node_id


def brought_up_to_date(ctl: Controller, node_id: str, held: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """`held` (a whole list) after asking `ctl` for what changed since its generation, as the agent
    does; and whether the answer was a delta."""
    answer = json.loads(ctl.peers_json(node_id, since=held["generation"]))
    return merged(held, answer), answer["since"] is not None


def test_peer_book_lists_equal_the_reference_through_a_generated_history(database_url: str) -> None:
    async def main() -> None:
        rng = random.Random(7)
        ctl = await replica(database_url, "r1")
        try:
            for i, region in enumerate(REGIONS):
                await ctl.put_region(region, s.RegionIn(lat=10.0 * i, lon=10.0 * i))
            tokens = {r: (await ctl.create_join_token(s.JoinTokenCreate(region=r, uses=100))).token for r in REGIONS}
            serial = iter(range(10_000))

            async def join() -> dict[str, Any]:
                i = next(serial)
                region = rng.choice(REGIONS)
                body = s.NodeJoin(
                    join_token=tokens[region],
                    region=region,
                    name=f"n{i}",
                    public_key=key(i),
                    endpoint=f"192.0.2.{i % 250 + 1}:51820",
                )
                return dict(json.loads(await ctl.join_json(body)))

            first = await join()  # a join's answer is the reference answer of that moment
            want = ctl._joined(ctl.get_node(first["node_id"]), first["node_token"], ctl.peers_of(first["node_id"]))
            assert first == want.model_dump(mode="json")
            s.NodeJoined.model_validate(first)

            holders: dict[str, dict[str, Any]] = {}  # node id -> a whole list it holds, of some earlier step
            pick = random.Random(11)  # which lists are held: apart from the history's own draws
            deltas, drained_seen = 0, False
            for step in range(40):
                live = sorted(ctl.nodes)
                op = rng.random()
                if op < 0.45 or len(live) < 4:
                    await asyncio.gather(*(join() for _ in range(rng.randint(1, 6))))  # batched together
                elif op < 0.55:
                    await ctl.remove_node(rng.choice(live))
                elif op < 0.65:
                    await ctl.update_node(rng.choice(live), public_key=key(1000 + step))
                elif op < 0.72:
                    await ctl.update_node(rng.choice(live), endpoint=f"198.51.100.{step}:51820")
                elif op < 0.82:
                    await ctl.drain_node(rng.choice(live), f"step {step}", "test")
                elif op < 0.88:
                    drained = [n for n in live if n in ctl.state.node_drains]
                    if drained:
                        await ctl.undrain_node(rng.choice(drained), "test")
                elif op < 0.94:
                    await ctl.drain(rng.choice(REGIONS), f"step {step}", "test")
                else:
                    drained_regions = sorted(ctl.state.drains)
                    if drained_regions:
                        await ctl.undrain(rng.choice(drained_regions), "test")
                assert_lists_match_reference(ctl)
                # lists held since earlier steps, brought up to date by deltas, are the whole list now
                for node_id, held in list(holders.items()):
                    if node_id not in ctl.nodes:
                        del holders[node_id]
                        continue
                    now, was_delta = brought_up_to_date(ctl, node_id, held)
                    assert now == json.loads(ctl.peers_json(node_id)), (step, node_id)
                    deltas += was_delta
                    if pick.random() < 0.5:
                        holders[node_id] = now
                for node_id in pick.sample(sorted(ctl.nodes), min(3, len(ctl.nodes))):
                    holders.setdefault(node_id, json.loads(ctl.peers_json(node_id)))
                drained_seen |= any(p["drained"] for p in json.loads(ctl.peers_json(sorted(ctl.nodes)[0]))["peers"])
            assert deltas > 40  # most answers were deltas (a delta since the list's own generation is empty)
            assert len(ctl.nodes) >= 10
            assert drained_seen  # the history drained nodes or regions (node ids are random: so is the history)

            fresh = await replica(database_url, "r2")  # read everything from the store at its start
            try:
                assert dict(fresh.nodes) == dict(ctl.nodes)
                assert fresh.state.node_drains == ctl.state.node_drains
                for node_id in ctl.nodes:
                    assert (
                        json.loads(fresh.peers_json(node_id))["peers"] == json.loads(ctl.peers_json(node_id))["peers"]
                    )
            finally:
                await stop(fresh)
        finally:
            await stop(ctl)

    run(main())


def test_a_second_replica_follows_joins_reading_only_the_changed_rows(database_url: str) -> None:
    async def main() -> None:
        a = await replica(database_url, "r1")
        b = await replica(database_url, "r2")
        try:
            await a.put_region(REGIONS[0], s.RegionIn(lat=0.0, lon=0.0))
            token = (await a.create_join_token(s.JoinTokenCreate(region=REGIONS[0], uses=100))).token

            async def join(i: int) -> str:
                body = s.NodeJoin(
                    join_token=token, region=REGIONS[0], name=f"n{i}", public_key=key(i), endpoint="192.0.2.1:51820"
                )
                return json.loads(await a.join_json(body))["node_id"]

            for i in range(30):
                await join(i)
            await b.reload_config()
            assert dict(b.nodes) == dict(a.nodes)
            before = b.state.node_rows_loaded
            ids = [await join(100 + i) for i in range(5)]
            await b.reload_config()
            assert b.state.node_rows_loaded - before == 5  # the five new rows, not the 35 nodes
            assert set(ids) <= set(b.nodes)

            await a.update_node(ids[0], public_key=key(999))
            await a.remove_node(ids[1])
            await b.reload_config()
            assert b.nodes[ids[0]].public_key == key(999)
            assert ids[1] not in b.nodes
            assert dict(b.nodes) == dict(a.nodes)
            assert b.state.node_rows_loaded - before == 7
            asker = next(n for n in sorted(b.nodes) if n != ids[2])  # (a list leaves out its own node)
            peers_of_old = {p["node_id"] for p in json.loads(b.peers_json(asker))["peers"]}
            assert ids[1] not in peers_of_old and ids[2] in peers_of_old

            # a list from one replica, brought up to date by the other (a load balancer in front); a
            # book answers deltas since the first change after it was built (each replica's start)
            await a.update_node(ids[4], endpoint="198.51.100.4:51820")
            await b.reload_config()
            held = json.loads(b.peers_json(ids[0]))
            await a.update_node(ids[2], endpoint="198.51.100.1:51820")
            await a.remove_node(ids[3])
            gone_now = await join(200)
            for answering in (a, b):
                await answering.reload_config()
                now, was_delta = brought_up_to_date(answering, ids[0], held)
                assert was_delta and now == json.loads(answering.peers_json(ids[0]))
                delta = json.loads(answering.peers_json(ids[0], since=held["generation"]))
                # (a change the holder has already may come again: a replica tags what it learns late)
                assert ids[3] in delta["removed"] and not set(delta["removed"]) & set(answering.nodes)
                assert {p["node_id"] for p in delta["peers"]} >= {ids[2], gone_now}
                assert len(delta["peers"]) <= 5  # the changes, not the list of 36
            assert json.loads(a.peers_json(ids[0], since=0))["since"] is None  # before what it knows: all of it
            future = json.loads(a.peers_json(ids[0], since=a.peer_generation + 5))
            assert future["since"] is None and len(future["peers"]) == len(a.nodes) - 1
        finally:
            await stop(b)
            await stop(a)

    run(main())


def test_past_the_tombstones_kept_a_delta_is_the_whole_list(database_url: str, monkeypatch: Any) -> None:
    """The book keeps a bounded number of departures; a list older than the ones it dropped is
    answered whole (a delta could not say who left), a newer one still by delta."""
    monkeypatch.setattr(peerbook, "MAX_TOMBSTONES", 3)

    async def main() -> None:
        ctl = await replica(database_url, "r1")
        try:
            await ctl.put_region(REGIONS[0], s.RegionIn(lat=0.0, lon=0.0))
            token = (await ctl.create_join_token(s.JoinTokenCreate(region=REGIONS[0], uses=100))).token
            ids = []
            for i in range(12):
                body = s.NodeJoin(
                    join_token=token, region=REGIONS[0], name=f"n{i}", public_key=key(i), endpoint="192.0.2.1:51820"
                )
                ids.append(json.loads(await ctl.join_json(body))["node_id"])
            old = json.loads(ctl.peers_json(ids[0]))
            for gone in ids[1:5]:  # four departures: past three kept, the older half is dropped
                await ctl.remove_node(gone)
                json.loads(ctl.peers_json(ids[0]))  # served (the book takes changes when it serves)
            recent = json.loads(ctl.peers_json(ids[0]))
            await ctl.remove_node(ids[5])
            whole = json.loads(ctl.peers_json(ids[0]))
            answer = json.loads(ctl.peers_json(ids[0], since=old["generation"]))
            assert answer["since"] is None and answer["peers"] == whole["peers"]
            now, was_delta = brought_up_to_date(ctl, ids[0], recent)
            assert was_delta and now == whole
        finally:
            await stop(ctl)

    run(main())


# --- over HTTP ---------------------------------------------------------------------------------


def counters(c: httpx.Client) -> dict[str, float]:
    text = c.get("/metrics").text
    out = {}
    for name in ("mesh_peer_entries_built_total", "mesh_node_rows_loaded_total", "mesh_peer_lists_served_total"):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        assert m, name
        out[name] = float(m.group(1))
    return out


def test_a_join_costs_the_same_whatever_the_fleet_and_existing_lists_get_the_new_node(
    controller: ControllerProcess,
) -> None:
    region = REGIONS[0]
    controller.add_region(region)
    with controller.client() as c:
        token = c.post("/v1/join-tokens", json={"region": region, "ttl_s": 600, "uses": 500}).json()["token"]
    serial = iter(range(10_000))
    lock = threading.Lock()

    def join_one(_: int = 0) -> dict[str, Any]:
        with lock:
            i = next(serial)
        body = {"join_token": token, "region": region, "name": f"n{i}", "public_key": key(i), "endpoint": "192.0.2.9:1"}
        r = httpx.post(f"{controller.url}/v1/nodes", json=body, timeout=30)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def join_many(n: int) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(8) as pool:  # in flight together: batched
            return list(pool.map(join_one, range(n)))

    with controller.client() as c:
        first = join_many(10)
        at10 = counters(c)
        join_many(40)
        at50 = counters(c)
        grown = join_many(80)
        at130 = counters(c)

        def per_join(a: dict[str, float], b: dict[str, float], n: int, name: str) -> float:
            return (b[name] - a[name]) / n

        # each join makes its own entry and no other; it reads its own row and, when another join
        # committed in between, those rows: a few, never the fleet (the old join read all of them)
        for name, most in (("mesh_peer_entries_built_total", 1.0), ("mesh_node_rows_loaded_total", 3.0)):
            small, large = per_join(at10, at50, 40, name), per_join(at50, at130, 80, name)
            assert small <= most and large <= most, (name, small, large)
        assert at130["mesh_peer_lists_served_total"] - at50["mesh_peer_lists_served_total"] == 80

        # every existing node's list has the newcomers; the answer to a join has every other node
        me = first[0]
        with controller.client(me["node_token"]) as mine:
            r = mine.get(f"/v1/nodes/{me['node_id']}/peers")
            assert r.status_code == 200
            listed = {p["node_id"] for p in r.json()["peers"]}
            assert {n["node_id"] for n in grown} <= listed and me["node_id"] not in listed
            assert len(listed) == 129
            assert len(grown[-1]["peers"]["peers"]) >= 129 - 7  # joins in flight beside it may come after
            etag = r.headers["etag"]

            # a long poll on that list wakes for a join and brings the new node
            answer: dict[str, Any] = {}

            def poll() -> None:
                answer["r"] = mine.get(
                    f"/v1/nodes/{me['node_id']}/peers", params={"wait": 20}, headers={"If-None-Match": etag}
                )

            t = threading.Thread(target=poll)
            t.start()
            late = join_one()
            t.join(25)
            woke = answer["r"]
            assert woke.status_code == 200 and woke.headers["etag"] != etag
            assert late["node_id"] in {p["node_id"] for p in woke.json()["peers"]}

            # a removed node leaves the others' lists
            assert c.delete(f"/v1/nodes/{late['node_id']}").status_code == 200
            after = mine.get(f"/v1/nodes/{me['node_id']}/peers").json()
            assert late["node_id"] not in {p["node_id"] for p in after["peers"]}
            assert len(after["peers"]) == 129


def test_peer_long_polls_sleep_through_ticks_and_wake_once_for_a_join(controller: ControllerProcess) -> None:
    """The loop ticks every 0.2 s here and each tick wakes every waiter of the controller's
    condition; a peer long poll waits on the peer generation only, and a join wakes it once."""
    region = REGIONS[1]
    controller.add_region(region)
    nodes = [controller.join_node(region) for _ in range(3)]
    answers: dict[str, httpx.Response] = {}

    def poll(node: dict[str, Any]) -> None:
        with controller.client(node["node_token"]) as c:
            path = f"/v1/nodes/{node['node_id']}/peers"
            etag = c.get(path).headers["etag"]
            answers[node["node_id"]] = c.get(path, params={"wait": 20}, headers={"If-None-Match": etag}, timeout=30)

    with controller.client() as c:
        before = c.get("/metrics").text
        threads = [threading.Thread(target=poll, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        controller.wait_for(lambda: _polls(c) >= 3, what="three peer long polls waiting")
        ticks = _ticks(c)
        controller.wait_for(lambda: _ticks(c) >= ticks + 5, what="five ticks of the control loop")
        assert not answers and _woken(c) == _woken_in(before)  # ticks woke none of them

        late = controller.join_node(region)
        for t in threads:
            t.join(25)
        assert sorted(answers) == sorted(n["node_id"] for n in nodes)
        for r in answers.values():
            assert r.status_code == 200
            assert late["node_id"] in {p["node_id"] for p in r.json()["peers"]}
        assert _woken(c) - _woken_in(before) == 3


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _woken_in(text: str) -> float:
    return _metric(text, "mesh_peer_polls_woken_total")


def _woken(c: httpx.Client) -> float:
    return _woken_in(c.get("/metrics").text)


def _ticks(c: httpx.Client) -> float:
    return _metric(c.get("/metrics").text, "mesh_route_recompute_seconds_count")


def _polls(c: httpx.Client) -> float:
    return _metric(c.get("/metrics").text, "mesh_peer_polls_waiting")
