"""The control loop of one replica: hold or watch the leader lease, recompute or follow.

Leader: pull reports other replicas accepted, fold links, judge health, apply automatic
drains (fenced by the lease), recompute routes, and publish a new generation when routes,
drains or region states change (the insert checks the lease in the same statement). Follower:
adopt newer published tables and reload regions, drains, nodes and tokens when their version
moves. When the database is unreachable every replica keeps answering from memory and says so.

On PostgreSQL every writer NOTIFYs at commit and each replica LISTENs on a connection of its own
(a thread): a change kicks the loop at once, and followers poll only every
`heartbeat_every_s` as a fallback. On SQLite (or while that connection is down) followers poll
every `follower_poll_s`.

The loop owns the leader's judgement (link baselines, health state, report cursor) and talks to
the controller only through its public methods (`tick_started`, `adopt`, `publish`, `follow`,
`leadership`, ...). `tick()` is one whole round, so tests drive the loop with a fake clock. Store
work a tick need not wait for (the link history's rows, pruning) runs beside the ticks, one
piece at a time (`_chore`; `chores_done` waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from meshctl.core.health import Baselines, HealthState, RegionHealthState, initial_state, observe, step
from meshctl.core.links import LinkTable
from meshctl.core.routing import changed_mask, compute_routes, cost_matrices, diff_routes, warm_up
from meshctl.service.controller import Controller
from meshctl.service.history import HistoryWriter
from meshctl.service.leadership import heartbeat_every_s
from meshctl.service.snapshot import Snapshot
from meshctl.service.state import MeshState
from meshctl.service.views import ts
from meshctl.store.db import StoreError
from meshctl.store.values import Lease, ReportCursor
from meshctl.wire import schemas as s

log = logging.getLogger("meshctl.loop")

PRUNE_EVERY_S = 60.0
CHORES_AT_STOP_S = 5.0  # how long `stop` lets handed-off store work finish
MAX_CHORES = 8  # handed-off store work waiting at most (a minute's history, a prune: ~2 a minute)


class ControlLoop:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self._task: asyncio.Task[None] | None = None
        # store work a tick hands off (`_chore`): the newest, and all not yet done
        self._chore_last: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._last_prune = 0.0
        self._listening_since = 0.0  # when this replica began to lead: silence is counted from here
        # while the database is unreachable no report can be accepted: the replica is deaf, and
        # that time is not held against the links (for one stale period after it hears again)
        self._deaf_since: float | None = None
        self._deaf_credit = (0.0, 0.0)  # (seconds deaf, until when the credit holds)
        # the leader's judgement: lowest RTT seen per link, health state machine, report cursor
        self.baselines = Baselines()
        self.health: HealthState = initial_state([])
        self._report_cursor: int | ReportCursor = 0
        self.history = HistoryWriter(ctl)  # the leader's link history rollups
        self._listen_stop = threading.Event()
        self._listener: threading.Thread | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="control-loop")
        if self.ctl.store.backend == "postgresql":
            self._start_listener()

    async def stop(self) -> None:
        self._listen_stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):  # a minute's history being written: let it land
            await asyncio.wait_for(self.chores_done(), CHORES_AT_STOP_S)
        for chore in list(self._chores):
            chore.cancel()
        if self._chores:
            await asyncio.wait(list(self._chores))
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, 3.0)

    def _start_listener(self) -> None:
        """LISTEN for the changes other replicas (and we) commit, in a thread of its own."""
        ctl = self.ctl
        loop = asyncio.get_running_loop()

        def on_change(what: str) -> None:
            loop.call_soon_threadsafe(ctl.changed_elsewhere, what)

        def on_up(up: bool) -> None:
            def note() -> None:
                if up and not ctl.listening:
                    log.info("listening for changes (PostgreSQL LISTEN)")
                    ctl.kick()  # changes made while we were not listening: look now
                ctl.listening = up

            loop.call_soon_threadsafe(note)

        self._listener = threading.Thread(
            target=ctl.store.listen, args=(on_change, self._listen_stop, on_up), name="store-listen", daemon=True
        )
        self._listener.start()

    def _chore(self, job: Callable[[], Awaitable[None]], what: str) -> None:
        """Run store work the tick need not wait for (the link history's rows at a minute
        boundary, ~1 s at 150 regions; pruning) beside the ticks: one chore at a time, in the
        order handed. A failure is logged; the next tick's lease renewal finds a dead database.
        A store so slow that `MAX_CHORES` are waiting gets no more (the chore is dropped, and said)."""
        if len(self._chores) >= MAX_CHORES:
            log.warning("%s skipped: the store is behind (%d earlier chores still waiting)", what, len(self._chores))
            return
        before = self._chore_last

        async def run() -> None:
            if before is not None:
                await asyncio.wait([before])
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: %s", what, exc)

        task = asyncio.create_task(run(), name=what)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        self._chore_last = task

    async def chores_done(self) -> None:
        """Wait for the chores handed so far to end."""
        while self._chores:
            await asyncio.wait(list(self._chores))

    async def _run(self) -> None:
        ctl = self.ctl
        interval = ctl.settings.recompute_interval_s
        await asyncio.to_thread(warm_up)  # the route kernel compiles (or loads) off the event loop
        while True:
            started = time.monotonic()
            await self.tick()
            delay = max(0.0, interval - (time.monotonic() - started))
            if not ctl.is_leader:
                # told of changes (LISTEN): poll only to renew the heartbeat and watch the lease
                poll = heartbeat_every_s(ctl.settings) if ctl.listening else ctl.settings.follower_poll_s
                delay = poll - (time.monotonic() - started) if ctl.listening else min(delay, poll)
            await ctl.wait_kick(max(0.0, delay))

    async def tick(self) -> None:
        """One round. A store failure does not escape: the replica marks the database down,
        keeps answering from memory, and steps down once its lease has run out."""
        ctl = self.ctl
        tick_no = ctl.tick_started()
        ok = True
        try:
            await self._round()
            if not ctl.store_ok:
                log.warning("database reachable again")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if ctl.store_ok:
                log.warning("control loop: %s", exc)
            ok = False
            if self._deaf_since is None:
                self._deaf_since = ctl.clock()
            if ctl.leadership.lapsed(ctl.clock()):
                ctl.leadership.step_down("lease expired while the database was unreachable")
        await ctl.tick_done(tick_no, ok)

    async def _round(self) -> None:
        ctl = self.ctl
        lead = ctl.leadership
        now = ctl.clock()
        lease = await ctl.db_urgent(  # not behind telemetry: a lease renewed late is a leader lost
            ctl.store.acquire_or_renew, ctl.settings.replica_id, lead.instance, now, ctl.settings.lease_s
        )
        if self._deaf_since is not None:  # the database answers again: reports can come in
            deaf_s = max(0.0, now - self._deaf_since)
            self._deaf_since = None
            self._deaf_credit = (deaf_s, now + ctl.weights.stale_after_s)
            self._listening_since = now  # and the agents' silence is counted afresh
        leading = lead.observe(lease, now)
        if leading and not lead.is_leader:
            await self._become_leader(lease)
        elif not leading and lead.is_leader:
            lead.step_down(f"lease now held by {lease.holder}")
        if leading:
            lead.renewed(lease)
        await ctl.reload_config()
        if lead.is_leader:
            await self._pull_reports()
            await self._recompute(now)
        else:
            await ctl.follow()
        await self._heartbeat(now)
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            # windows: kept for a new leader, counted back from when links are judged (so the
            # time the database was unreachable does not eat them); accepted seqs: as long as a
            # window could be accepted
            windows_before = self._links_as_of(now) - ctl.settings.report_window_retention_s
            seen_before, leading_now = now - ctl.settings.report_seen_s, lead.is_leader

            async def prune() -> None:
                await ctl.db(ctl.store.prune_reports, windows_before, seen_before)
                if leading_now:
                    await self.history.prune(now)
                    await ctl.db(ctl.store.prune_route_tables)
                    await ctl.db(ctl.store.prune_replicas, now - 3600.0)

            self._chore(prune, "pruning")

    def _links_as_of(self, now: float) -> float:
        """When links are judged fresh or stale: `now`, less the time this replica was deaf
        (database unreachable, no report accepted) for one stale period after it hears again."""
        deaf_s, until = self._deaf_credit
        return now - deaf_s if now < until else now

    async def _become_leader(self, lease: Lease) -> None:
        ctl = self.ctl
        ctl.leadership.become_leader(lease.epoch, lease.acquired_at)
        self._listening_since = ctl.clock()
        await ctl.follow()  # start from the newest published table and generation
        # warm the link book with what other replicas (or our previous life) accepted
        since = self._links_as_of(ctl.clock()) - ctl.weights.stale_after_s
        for report in await ctl.db(ctl.store.recent_reports, since):
            ctl.reports.record_stored(report, heard=False)
        self._report_cursor = await ctl.db(ctl.store.max_report_id)
        self.health = health_from_drains(ctl.state)
        self.history.reset()
        replica = ctl.settings.replica_id
        await ctl.db(
            ctl.store.add_event,
            ctl.clock(),
            "leader",
            f"replica {replica} leads (lease epoch {lease.epoch})",
            None,
            None,
            {"replica": replica, "instance": lease.instance, "epoch": lease.epoch},
        )

    async def _pull_reports(self) -> None:
        """Fold in the reports other replicas accepted since the last look."""
        ctl = self.ctl
        found, self._report_cursor = await ctl.db(
            ctl.store.reports_after, self._report_cursor, ctl.leadership.writer_id
        )
        for report in found:
            ctl.reports.record_stored(report)

    async def _recompute(self, now: float) -> None:
        ctl = self.ctl
        state = ctl.state
        t0 = time.perf_counter()
        regions = sorted(state.regions)
        links_at = self._links_as_of(now)
        # the fold's number work (~20 ms at 3,000 nodes) runs on a thread: numpy's gathers and
        # sorts let go of the GIL, so reports and route queries are answered meanwhile
        links = await asyncio.to_thread(ctl.reports.linkbook.fold_in_parts(links_at, ctl.weights.stale_after_s))
        write_history = self.history.tick(links, now)
        if write_history is not None:
            fence = ctl.leadership.fence

            async def history() -> None:
                if not await write_history() and ctl.leadership.fence == fence:
                    ctl.leadership.step_down("writing link history refused: the lease is no longer ours")

            self._chore(history, "writing link history")
        baselines = self.baselines.update(links)
        await _requests_first()
        last_report = state.last_report_by_region()
        for r in last_report:  # a restarted or new leader has not been reachable until now
            last_report[r] = max(last_report[r], self._listening_since)
        nodes_of: dict[str, list[str]] = {}
        for n in state.nodes.values():
            nodes_of.setdefault(n.region, []).append(n.id)
        await _requests_first()
        judged = [r for r in regions if r in nodes_of]
        policy = ctl.settings.health_policy()
        observations = observe(judged, links, baselines, last_report, now, policy)
        manual = {r for r, d in state.drains.items() if d.kind == "manual"}
        health, events = step(self.health, observations, manual, policy, now)
        if self.health.frozen and not health.frozen:
            self._listening_since = now  # silence is counted afresh: agents reconnect one by one
        fence = ctl.leadership.fence
        for ev in events:
            if ev.kind == "drain" and ev.region is not None:
                try:
                    drain, gen = await ctl.db_urgent(
                        ctl.store.set_drain, ev.region, "auto", ev.reason, "controller", now, fence
                    )
                except StoreError:
                    ctl.leadership.step_down("lease lost while draining")
                    return
                await ctl.drain_stored(drain, gen)  # the region's agents hear it now, not after this tick
            elif ev.kind == "undrain" and ev.region is not None:
                try:
                    lifted = await ctl.db_urgent(
                        ctl.store.remove_drain, ev.region, ev.reason, "controller", now, fence, "auto"
                    )
                except StoreError:
                    ctl.leadership.step_down("lease lost while undraining")
                    return
                if lifted is not None:
                    await ctl.undrain_stored(ev.region, lifted)
            else:
                await ctl.db(ctl.store.add_event, now, ev.kind, ev.reason, ev.region)
            ctl.metrics.events.labels(ev.kind).inc()
        self.health = health
        if events:
            await ctl.reload_config(force=True)
        await _requests_first()
        drained = frozenset(state.drains)
        current = ctl.snapshot
        if health.frozen:
            # fail static: keep routing on the links as they were when reports stopped, rather
            # than letting them go stale and leaving the whole table unusable
            frozen_at = health.frozen_since if health.frozen_since is not None else now
            links = LinkTable.of(current.links) if current.links else links
            cost, rtt = cost_matrices(regions, links, ctl.weights, frozen_at)
        else:
            cost, rtt = cost_matrices(regions, links, ctl.weights, links_at)
        prev = current.table
        previous = prev if prev is not None and prev.regions == tuple(regions) else None
        # no relay through a drained region, nor through one whose every node is drained
        table = compute_routes(regions, cost, rtt, drained | state.no_transit_regions(), ctl.weights, previous)
        changed = int(changed_mask(previous, table).sum())
        await _requests_first()
        states: dict[str, str] = {}
        health_out: dict[str, dict[str, Any]] = {}
        for rid in regions:
            h = health.regions.get(rid)
            st = h.state if h is not None else "active"
            states[rid] = "drained" if rid in drained else ("degraded" if st in ("degraded", "drained") else "active")
            o = observations.get(rid)
            health_out[rid] = {
                "observers_bad": o.observers_bad if o else 0,
                "observers_total": o.observers_total if o else 0,
                "bad_windows": h.bad_streak if h else 0,
                "good_windows": h.good_streak if h else 0,
                "reporting_nodes": sum(1 for n in nodes_of.get(rid, ()) if state.node_up(n, now)),
                "reason": (o.reason if o else None),
            }
        await _requests_first()
        alerts = [ev.reason for ev in events if ev.kind == "alert"]
        if health.frozen:
            alerts.append(
                "frozen: reports from most regions stopped at once; draining nothing and routing on the links "
                "measured before"
            )
        snap = Snapshot(
            generation=current.generation,
            computed_at=now,
            table=table,
            cost=cost,
            rtt=rtt,
            drained=drained,
            links=links,
            states=states,
            health=health_out,
            frozen=health.frozen,
            alerts=tuple(alerts),
        )
        must_publish = changed > 0 or previous is None or drained != current.drained or states != current.states
        if not must_publish:
            ctl.adopt(snap)
            ctl.metrics.recompute_seconds.observe(time.perf_counter() - t0)
            return
        published = await ctl.publish(snap, now)
        if published is None:
            ctl.leadership.step_down("publishing refused: the lease is no longer ours")
            return
        if changed:
            generation = published.generation
            sample = [
                {"src": a, "dst": b, "before": old, "after": new}
                for a, b, old, new in diff_routes(previous, table, limit=20)
            ]
            await ctl.db(
                ctl.store.add_event,
                now,
                "route_change",
                route_change_reason(sample, changed, generation, new_table=previous is None),
                None,
                None,
                {"generation": generation, "changed": changed, "sample": sample},
            )
            ctl.metrics.events.labels("route_change").inc()
            ctl.metrics.routes_changed.inc(changed)
        ctl.metrics.recompute_seconds.observe(time.perf_counter() - t0)
        await ctl.notify()

    async def _heartbeat(self, now: float) -> None:
        ctl = self.ctl
        rows = await ctl.db(ctl.store.heartbeat, ctl.settings.replica_id, ctl.snapshot.generation, now)
        newest = max([r.generation for r in rows] + [ctl.snapshot.generation])
        live = [r for r in rows if now - r.seen_at <= max(5.0, 3 * ctl.settings.lease_s)]
        leader = ctl.leadership.leader
        ctl.set_replicas(
            [
                s.ReplicaOut(
                    replica_id=r.replica_id,
                    is_leader=r.replica_id == leader,
                    generation=r.generation,
                    lag_generations=newest - r.generation,
                    seen_at=ts(r.seen_at),
                )
                for r in live
            ]
        )
        for r in live:
            ctl.metrics.replica_lag.labels(r.replica_id).set(newest - r.generation)


async def _requests_first() -> None:
    """Let the requests waiting on the event loop run between the recompute's stages: each stage
    is a few ms at 3,000 nodes, the whole tick tens, and a route query or a report that waits for
    all of it is the p99. A stage works on what the stages before it computed: a node, a drain or
    a report that came meanwhile counts from the next tick, as with the store calls a tick waits on."""
    await asyncio.sleep(0)


def health_from_drains(state: MeshState) -> HealthState:
    """After a restart or takeover: automatic drains in the store stay drained until they recover."""
    health = initial_state(sorted(state.regions))
    for rid, d in state.drains.items():
        if d.kind == "auto" and rid in health.regions:
            health.regions[rid] = RegionHealthState(
                state="drained",
                auto_drained=True,
                bad_streak=0,
                good_streak=0,
                since=d.since,
                drained_at=d.since,
                reason=d.reason,
            )
    return health


def _path_text(path: list[str] | None) -> str:
    if path is None:
        return "unreachable"
    return "direct" if len(path) <= 2 else "via " + ", ".join(path[1:-1])


def route_change_reason(
    sample: list[dict[str, Any]], changed: int, generation: int, show: int = 3, new_table: bool = False
) -> str:
    """What changed, for people: the first `show` pairs with their new and old paths, and a count.

    "aws:ap-northeast-1 -> aws:us-east-1 now via gcp:asia-northeast1 (was direct); +4 more (generation 19)"
    (`new_table`: there was no earlier table over the same regions to compare with.)
    """
    parts = [
        f"{c['src']} -> {c['dst']} now {_path_text(c['after'])} "
        + ("(new)" if new_table else f"(was {_path_text(c['before'])})")
        for c in sample[:show]
    ]
    more = changed - len(parts)
    if more > 0:
        parts.append(f"+{more} more")
    return f"{'; '.join(parts) or f'{changed} routes changed'} (generation {generation})"
