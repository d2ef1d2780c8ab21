"""The control loop in process: a real Controller on a temp-file SQLite store, a fake clock, and
ticks driven one by one (`await loop.tick()`), no server process and no sleeps.

Fail static, the grace period after a database outage, when a new generation is published (and
that a replica which lost the lease cannot publish), and seq de-duplication of reports. Replicas
with one replica id (refused at start; fenced if forced), credentials first seen by another
replica, and a node whose clock runs fast.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.exc import OperationalError

from meshctl.service import report_codec as codec
from meshctl.service.auth import Principal
from meshctl.service.controller import Controller
from meshctl.service.errors import Conflict, NodeRemoved, ServiceError, Unauthorized, Unavailable
from meshctl.service.leadership import ReplicaIdInUse, check_replica_id
from meshctl.service.loop import MAX_CHORES, ControlLoop
from meshctl.settings import Settings
from meshctl.store.db import Store
from meshctl.wire import schemas as s

T = TypeVar("T")
A, B, C, D = "aws:us-east-1", "gcp:us-east4", "azure:westeurope", "aws:eu-west-1"
ADMIN = "msh_a_loop-test-" + "x" * 32
KEY = "A" * 43 + "="
# A-C direct is slow: the best route A -> C goes through B
TRIANGLE = {(A, B): 20.0, (B, C): 20.0, (A, C): 100.0, (A, D): 30.0, (B, D): 30.0, (C, D): 30.0}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Outage:
    """The store, or no store at all: while `down`, every call raises as an unreachable database."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise OperationalError("SELECT 1", {}, Exception("connection refused"))
            return attr(*args, **kwargs)

        return call


class Replica:
    """One controller replica in process, with its loop driven by hand."""

    def __init__(self, url: str, clock: FakeClock, replica_id: str = "r1") -> None:
        settings = Settings(database_url=url, replica_id=replica_id, admin_token=ADMIN)
        self.outage = Outage(Store(url))
        self.ctl = Controller(settings, self.outage, clock=clock)  # type: ignore[arg-type]
        self.loop = ControlLoop(self.ctl)
        self.clock = clock

    async def start(self) -> Replica:
        await self.ctl.start()
        return self

    async def stop(self) -> None:
        await self.loop.stop()  # the store work it handed off lands first
        await self.ctl.stop()
        self.outage._store.close()

    def route(self, src: str, dst: str) -> dict[str, Any]:
        return dict(json.loads(self.ctl.route_json(src, dst)))


class Mesh:
    """Regions with one node each, reporting the RTTs it is given."""

    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self.nodes: dict[str, Principal] = {}  # region -> the node's principal
        self.tokens: dict[str, str] = {}  # region -> the node's credential
        self.seq: dict[str, int] = {}
        self.skew: dict[str, float] = {}  # region -> how far its node's clock runs ahead

    async def add(self, *regions: str) -> None:
        ctl = self.r.ctl
        for i, region in enumerate(regions):
            await ctl.put_region(region, s.RegionIn(lat=10.0 * i, lon=10.0 * i))
            jt = await ctl.create_join_token(s.JoinTokenCreate(region=region))
            assert jt.token is not None
            joined = await ctl.join(
                s.NodeJoin(
                    join_token=jt.token,
                    region=region,
                    name=f"n{i}",
                    public_key=KEY,
                    endpoint=f"192.0.2.{i + 1}:51820",
                )
            )
            self.nodes[region] = await ctl.authenticate(joined.node_token)
            self.tokens[region] = joined.node_token
            self.seq[region] = 0

    async def report(self, src: str, rtts: dict[tuple[str, str], float], seq: int | None = None) -> s.ReportAck:
        """One window from src's node: every link of src in `rtts` (both directions count)."""
        peers = []
        for (a, b), rtt in rtts.items():
            other = b if a == src else a
            if src in (a, b) and other in self.nodes:
                peers.append(
                    {
                        "peer_node_id": self.nodes[other].id,
                        "sent": 10,
                        "received": 10,
                        "rtt_p50_ms": rtt,
                        "rtt_p90_ms": rtt * 1.1,
                        "jitter_ms": 0.5,
                    }
                )
        if seq is None:
            self.seq[src] += 1
            seq = self.seq[src]
        return await self.send(src, seq, peers)

    async def send(self, src: str, seq: int, peers: list[dict[str, Any]]) -> s.ReportAck:
        now = self.r.clock() + self.skew.get(src, 0.0)
        body = {
            "node_id": self.nodes[src].id,
            "seq": seq,
            "window_start": datetime.fromtimestamp(now - 1.0, UTC).isoformat(),
            "window_s": 1.0,
            "peers": peers,
        }
        raw = json.dumps(body)
        return await self.r.ctl.ingest(self.nodes[src], codec.parse_report(raw))

    async def second(self, reporting: tuple[str, ...], rtts: dict[tuple[str, str], float] = TRIANGLE) -> None:
        """One second of mesh life: the reporting regions report, the clock moves, the loop ticks."""
        for region in reporting:
            await self.report(region, rtts)
        self.r.clock.advance(1.0)
        await self.r.loop.tick()


async def started(tmp_path: Path, clock: FakeClock, *regions: str) -> tuple[Replica, Mesh]:
    replica = await Replica(f"sqlite:///{tmp_path / 'mesh.db'}", clock).start()
    await replica.loop.tick()  # takes the lease
    mesh = Mesh(replica)
    await mesh.add(*regions)
    return replica, mesh


async def settle(mesh: Mesh, regions: tuple[str, ...], seconds: int = 5) -> None:
    for _ in range(seconds):
        await mesh.second(regions)


# --- fail static -------------------------------------------------------------------------


def test_store_work_handed_off_runs_in_order_one_at_a_time_and_is_bounded(tmp_path: Path) -> None:
    """What a tick hands off (history rows, pruning) runs beside it, in order, one piece at a time;
    a failure does not stop the next; a store so slow that MAX_CHORES wait gets no more."""

    async def main() -> None:
        replica, _ = await started(tmp_path, FakeClock(), A, B)
        loop = replica.loop
        await loop.chores_done()
        gate, ran, running = asyncio.Event(), [], [0]

        async def job(i: int) -> None:
            running[0] += 1
            assert running[0] == 1, "two at once"
            await gate.wait()
            await asyncio.sleep(0.01)
            running[0] -= 1
            if i == 3:
                raise OperationalError("insert", {}, Exception("disk I/O error"))
            ran.append(i)

        try:
            for i in range(MAX_CHORES + 2):
                loop._chore(lambda i=i: job(i), f"job {i}")  # type: ignore[misc]
            await asyncio.sleep(0.05)
            assert ran == []  # none went ahead of the gate
            gate.set()
            await loop.chores_done()
            assert ran == [i for i in range(MAX_CHORES) if i != 3]  # the last two were dropped
        finally:
            await replica.stop()

    run(main())


def test_most_regions_silent_at_once_freezes_drains_nothing_keeps_routes(tmp_path: Path) -> None:
    async def main() -> None:
        replica, mesh = await started(tmp_path, FakeClock(), A, B, C, D)
        ctl = replica.ctl
        try:
            await settle(mesh, (A, B, C, D))
            before = replica.route(A, C)
            assert before["path"] == [A, B, C] and before["reachable"]
            assert not ctl.snapshot.frozen
            for _ in range(60):  # only D still reports, for a minute: longer than links stay fresh
                await mesh.second((D,))
            snap = ctl.snapshot
            assert snap.frozen
            assert any(a.startswith("frozen") for a in snap.alerts)
            assert ctl.state.drains == {}
            assert all(ctl.region_state(r) != "drained" for r in (A, B, C, D))
            after = replica.route(A, C)
            assert after["reachable"] and after["path"] == before["path"]
            assert after["rtt_ms"] == before["rtt_ms"]
            status = ctl.status()
            assert status.frozen and status.regions_by_state["drained"] == 0
            kinds = [e.kind for e in await ctl.events(None, 100, 0)]
            assert "freeze" in kinds and "drain" not in kinds
            # reports come back: the controller thaws
            await settle(mesh, (A, B, C, D), 3)
            assert not ctl.snapshot.frozen
            assert replica.route(A, C)["path"] == [A, B, C]
        finally:
            await replica.stop()

    run(main())


def test_one_region_silent_is_drained(tmp_path: Path) -> None:
    """The counterpart of fail static: a single silent region is judged, and drained."""

    async def main() -> None:
        replica, mesh = await started(tmp_path, FakeClock(), A, B, C, D)
        ctl = replica.ctl
        try:
            await settle(mesh, (A, B, C, D))
            for _ in range(30):
                await mesh.second((A, B, D))
            assert not ctl.snapshot.frozen
            assert ctl.region_state(C) == "drained"
            assert ctl.state.drains[C].kind == "auto"
            assert not replica.route(A, C)["reachable"] or replica.route(A, C)["path"][-1] == C
            assert replica.route(A, B)["reachable"]
        finally:
            await replica.stop()

    run(main())


# --- database outage -----------------------------------------------------------------------


def test_database_outage_reads_continue_and_first_table_after_keeps_routes(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        replica, mesh = await started(tmp_path, clock, A, B, C, D)
        ctl = replica.ctl
        try:
            await settle(mesh, (A, B, C, D))
            before = replica.route(A, C)
            generation = ctl.snapshot.generation
            assert before["path"] == [A, B, C] and ctl.is_leader and ctl.store_ok

            replica.outage.down = True
            with pytest.raises(Unavailable) as refused:  # an agent's report cannot be stored: 503
                await mesh.report(A, TRIANGLE)
            assert refused.value.status == 503
            for _ in range(30):  # longer than links stay fresh (20 s) and than the lease (10 s)
                clock.advance(1.0)
                await replica.loop.tick()
            assert not ctl.store_ok and ctl.status().degraded_store
            assert not ctl.is_leader  # the lease ran out and could not be renewed
            assert replica.route(A, C) == before  # answered from memory all along
            assert ctl.snapshot.generation == generation

            replica.outage.down = False
            clock.advance(1.0)
            await replica.loop.tick()  # the first table after it, before any agent reported again
            assert ctl.store_ok and ctl.is_leader
            assert ctl.snapshot.computed_at == clock()
            after = replica.route(A, C)
            assert after["reachable"] and after["path"] == [A, B, C]
            assert ctl.state.drains == {} and not ctl.snapshot.frozen
            # the agents report again; the table stays whole through the grace period and after it
            for _ in range(25):
                await mesh.second((A, B, C, D))
                assert replica.route(A, C)["path"] == [A, B, C]
            assert ctl.state.drains == {}
        finally:
            await replica.stop()

    run(main())


# --- publication ---------------------------------------------------------------------------


def test_publishes_a_new_generation_only_when_routes_drains_or_states_change(tmp_path: Path) -> None:
    async def main() -> None:
        replica, mesh = await started(tmp_path, FakeClock(), A, B, C, D)
        ctl = replica.ctl
        store = replica.outage
        try:
            await settle(mesh, (A, B, C, D))
            gen = ctl.snapshot.generation
            assert gen == await ctl.db(store.max_generation) and gen > 0
            computed = ctl.snapshot.computed_at

            await settle(mesh, (A, B, C, D), 10)  # the same measurements: recomputed, not published
            assert ctl.snapshot.generation == gen == await ctl.db(store.max_generation)
            assert ctl.snapshot.computed_at != computed

            faster = {**TRIANGLE, (A, C): 30.0}  # now direct is cheaper: routes change
            await settle(mesh, (A, B, C, D), 3)
            for _ in range(3):
                await mesh.second((A, B, C, D), faster)
            assert replica.route(A, C)["path"] == [A, C]
            assert ctl.snapshot.generation == gen + 1 == await ctl.db(store.max_generation)
            assert replica.route(A, C)["generation"] == gen + 1
            events = await ctl.events(None, 100, 0, kind="route_change")
            assert events and events[-1].data["generation"] == gen + 1

            drain = asyncio.create_task(ctl.drain(D, "maintenance", "test"))  # waits for the next tick
            while not drain.done():
                await replica.loop.tick()
            assert (await drain).state == "drained"  # a drain: a new generation at once
            assert ctl.snapshot.generation == gen + 2
            assert D in ctl.snapshot.drained and ctl.snapshot.states[D] == "drained"
            for _ in range(5):  # the same again: nothing new to publish
                await mesh.second((A, B, C, D), faster)
            assert ctl.snapshot.generation == gen + 2 == await ctl.db(store.max_generation)
        finally:
            await replica.stop()

    run(main())


def test_a_replica_that_lost_the_lease_cannot_publish(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        url = f"sqlite:///{tmp_path / 'mesh.db'}"
        r1, mesh = await started(tmp_path, clock, A, B, C)
        r2 = await Replica(url, clock, "r2").start()
        try:
            await settle(mesh, (A, B, C))
            assert r1.ctl.is_leader
            await r2.loop.tick()
            assert not r2.ctl.is_leader and r2.ctl.snapshot.generation == r1.ctl.snapshot.generation
            gen = r1.ctl.snapshot.generation

            clock.advance(r1.ctl.settings.lease_s + 1)  # r1 pauses past its lease; r2 takes over
            await r2.loop.tick()
            assert r2.ctl.is_leader and r2.ctl.leadership.epoch > r1.ctl.leadership.epoch
            assert r1.ctl.is_leader  # r1 has not noticed yet
            # r1 wakes and tries to publish what it computed: refused, in the same statement
            stale = r1.ctl.snapshot
            assert await r1.ctl.publish(stale, clock()) is None
            assert r1.ctl.snapshot is stale
            published = await r1.ctl.db(r1.outage.max_generation)
            assert published == r2.ctl.snapshot.generation
            await r1.loop.tick()  # and steps down
            assert not r1.ctl.is_leader
            assert r1.ctl.status().leader == "r2"
            assert gen <= r1.ctl.snapshot.generation == r2.ctl.snapshot.generation
        finally:
            await r2.stop()
            await r1.stop()

    run(main())


# --- seq de-duplication --------------------------------------------------------------------


def test_a_window_is_accepted_once(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        replica, mesh = await started(tmp_path, clock, A, B)
        ctl = replica.ctl
        node = mesh.nodes[A]

        async def stored() -> list[int]:
            found, _ = await ctl.db(replica.outage.reports_after, 0, None)
            return sorted(r.seq for r in found if r.node_id == node.id)

        async def refused(call: Callable[[], Awaitable[Any]]) -> ServiceError:
            with pytest.raises(Conflict) as err:
                await call()
            assert err.value.status == 409 and err.value.field == "seq"
            return err.value

        try:
            links = {(A, B): 20.0}
            assert (await mesh.report(A, links, seq=5)).accepted
            await refused(lambda: mesh.report(A, links, seq=5))
            for seq in (3, 4):  # out of order, each once
                assert (await mesh.report(A, links, seq=seq)).accepted
            await refused(lambda: mesh.report(A, links, seq=3))
            # the same window twice at once: one is written, the other refused
            both = await asyncio.gather(
                mesh.report(A, links, seq=9), mesh.report(A, links, seq=9), return_exceptions=True
            )
            assert sorted(type(x).__name__ for x in both) == ["Conflict", "ReportAck"]
            assert await stored() == [3, 4, 5, 9]
            counters = ctl.node_out(ctl.get_node(node.id))
            assert (counters.last_seq, counters.reports_accepted) == (9, 4)

            # a restarted replica has no memory of the seqs: the store still refuses them
            await replica.stop()
            again = await Replica(f"sqlite:///{tmp_path / 'mesh.db'}", clock).start()
            replica = again
            ctl = again.ctl
            mesh.r = again
            await refused(lambda: mesh.report(A, links, seq=4))
            assert (await mesh.report(A, links, seq=6)).accepted
            assert await stored() == [3, 4, 5, 6, 9]
            counters = ctl.node_out(ctl.get_node(node.id))
            assert (counters.last_seq, counters.reports_accepted) == (9, 5)
        finally:
            await replica.stop()

    run(main())


# --- replica identity and fencing -----------------------------------------------------------


def test_one_replica_id_twice_never_two_leaders(tmp_path: Path) -> None:
    """The second process given a live replica's id is refused at start; forced (both started
    before either sent a heartbeat), the lease is still fenced by process instance and epoch."""

    async def main() -> None:
        clock = FakeClock()
        url = f"sqlite:///{tmp_path / 'mesh.db'}"
        first = await Replica(url, clock, "same").start()
        second = await Replica(url, clock, "same").start()  # forced: no heartbeat to see yet
        store = first.outage._store
        try:
            await first.loop.tick()  # leads, and sends a heartbeat

            def sleep_while_first_lives(seconds: float) -> None:
                clock.advance(seconds)
                store.heartbeat("same", 0, clock())

            with pytest.raises(ReplicaIdInUse, match="in use by a live replica"):
                check_replica_id(store, second.ctl.settings, clock, sleep_while_first_lives)
            check_replica_id(store, second.ctl.settings, clock, clock.advance)  # heartbeat stopped: free

            mesh = Mesh(first)
            await mesh.add(A, B, C)
            for _ in range(5):
                await mesh.second((A, B, C))
                await second.loop.tick()
                assert first.ctl.is_leader and not second.ctl.is_leader
            # same id, same epoch: the second process's write is refused all the same
            assert await second.ctl.publish(first.ctl.snapshot, clock()) is None

            clock.advance(first.ctl.settings.lease_s + 1)  # the first pauses past its lease
            await second.loop.tick()
            assert second.ctl.is_leader and second.ctl.leadership.epoch == first.ctl.leadership.epoch + 1
            stale = first.ctl.snapshot
            assert await first.ctl.publish(stale, clock()) is None  # fenced, whatever its id
            await first.loop.tick()
            assert not first.ctl.is_leader
            for _ in range(3):
                await mesh.second((A, B, C), {**TRIANGLE, (A, C): 30.0})
                await second.loop.tick()
                assert second.ctl.is_leader and not first.ctl.is_leader

            published = await first.ctl.db(store.latest_route_table)
            assert published is not None and published.instance == second.ctl.leadership.instance
            with store.engine.connect() as conn:
                from sqlalchemy import text

                rows = conn.execute(text("select epoch, instance from route_tables")).all()
            by_epoch: dict[int, set[str]] = {}
            for epoch, instance in rows:
                by_epoch.setdefault(int(epoch), set()).add(str(instance))
            assert len(by_epoch) == 2 and all(len(v) == 1 for v in by_epoch.values()), by_epoch
        finally:
            await second.stop()
            await first.stop()

    run(main())


# --- credentials seen first by another replica ----------------------------------------------


def test_any_replica_authenticates_what_another_made(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        url = f"sqlite:///{tmp_path / 'mesh.db'}"
        r1, mesh = await started(tmp_path, clock, A, B)
        r2 = await Replica(url, clock, "r2").start()
        asked: list[str] = []
        credential = r2.outage._store.credential

        def counted(token_hash: str) -> Any:
            asked.append(token_hash)
            return credential(token_hash)

        r2.outage._store.credential = counted  # type: ignore[method-assign]
        try:
            await mesh.add(C)  # joins through r1 after r2 loaded its nodes: r2 has not seen it
            assert mesh.nodes[C].id not in r2.ctl.nodes
            who = await r2.ctl.authenticate(mesh.tokens[C])
            assert (who.kind, who.id) == ("node", mesh.nodes[C].id)
            mesh.r = r2  # its report, naming peers r2 has not loaded either, goes through r2
            assert (await mesh.report(C, TRIANGLE)).accepted

            made = await r1.ctl.create_token(s.TokenCreate(name="ops", scope="operator"))
            assert (await r2.ctl.authenticate(made.token)).scope == "operator"

            asked.clear()
            for _ in range(50):  # a flood of one bad token: one query, then the negative cache
                with pytest.raises(Unauthorized):
                    await r2.ctl.authenticate("msh_n_" + "bad" * 12)
            assert len(asked) == 1
            clock.advance(6)
            with pytest.raises(Unauthorized):
                await r2.ctl.authenticate("msh_n_" + "bad" * 12)
            assert len(asked) == 2

            await r1.ctl.remove_node(mesh.nodes[C].id)
            await r2.ctl.reload_config()
            with pytest.raises(NodeRemoved) as gone:
                await r2.ctl.authenticate(mesh.tokens[C])
            assert gone.value.status == 410 and gone.value.slug == "node-removed"
            with pytest.raises(NodeRemoved):  # also on the replica it was removed through
                await r1.ctl.authenticate(mesh.tokens[C])
        finally:
            await r2.stop()
            await r1.stop()

    run(main())


# --- clocks ----------------------------------------------------------------------------------


def test_a_node_whose_clock_runs_90s_fast_keeps_its_region_healthy(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        replica, mesh = await started(tmp_path, clock, A, B, C, D)
        ctl = replica.ctl
        mesh.skew[C] = 90.0
        try:
            for _ in range(20):  # every report of C's node is accepted (none "in the future")
                await mesh.second((A, B, C, D))
            node = ctl.node_out(ctl.get_node(mesh.nodes[C].id))
            assert node.reports_accepted == 20
            assert node.clock_offset_s is not None and 88 <= node.clock_offset_s <= 91
            assert ctl.region_out(ctl.get_region(C)).state == "active"
            assert ctl.snapshot.states[C] == "active" and not ctl.snapshot.drained
            assert replica.route(A, C)["path"] == [A, B, C]  # C's links are fresh: routes use them
            assert ctl.links_out().links and all(lk.fresh for lk in ctl.links_out().links)
            assert s.LinksOut.model_validate_json(ctl.links_json()) == ctl.links_out()  # the fast path says the same
            assert ctl.links_json() == ctl.links_out().model_dump_json().encode()  # byte for byte
            skew = await ctl.events(None, 10, 0, kind="clock_skew")
            assert len(skew) == 1 and skew[0].node_id == mesh.nodes[C].id and skew[0].data["skewed"]
            assert "mesh_node_clock_offset_seconds" in metrics_text(ctl)
            found, _ = await ctl.db(replica.outage.reports_after, 0, None)
            windows = [r.window_start for r in found if r.node_id == mesh.nodes[C].id]
            assert windows and max(windows) <= clock()  # kept in the controller's time

            mesh.skew[C] = 0.0  # NTP fixed: back within the tolerance, one more event
            await mesh.second((A, B, C, D))
            skew = await ctl.events(None, 10, 0, kind="clock_skew")
            assert [e.data["skewed"] for e in skew] == [True, False]
            assert ctl.node_out(ctl.get_node(mesh.nodes[C].id)).clock_offset_s == 0.0
        finally:
            await replica.stop()

    run(main())


def metrics_text(ctl: Controller) -> str:
    from prometheus_client import generate_latest

    return generate_latest(ctl.metrics.registry).decode()
