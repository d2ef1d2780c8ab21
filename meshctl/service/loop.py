"""The control loop of one replica: hold or watch the leader lease, recompute or follow.

Leader: pull reports other replicas accepted, fold links, judge health, apply automatic
drains (fenced by the lease), recompute routes, and publish a new generation when routes
change (the insert checks the lease in the same statement). Follower: adopt newer published
tables and reload regions, drains, nodes and tokens when their version moves.
When the database is unreachable every replica keeps answering from memory and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from meshctl.api import schemas as s
from meshctl.core.health import HealthState, RegionHealthState, initial_state, observe, step
from meshctl.core.routing import changed_mask, compute_routes, cost_matrices, diff_routes, warm_up
from meshctl.service.controller import Controller, Snapshot, snapshot_body
from meshctl.store.db import StoreError

log = logging.getLogger("meshctl.loop")


class ControlLoop:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._listening_since = 0.0  # when this replica began to lead: silence is counted from here
        # while the database is unreachable no report can be accepted: the replica is deaf, and
        # that time is not held against the links (for one stale period after it hears again)
        self._deaf_since: float | None = None
        self._deaf_credit = (0.0, 0.0)  # (seconds deaf, until when the credit holds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="control-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        ctl = self.ctl
        interval = ctl.settings.recompute_interval_s
        await asyncio.to_thread(warm_up)  # the route kernel compiles (or loads) off the event loop
        while True:
            started = time.monotonic()
            ctl.ticks_started += 1
            tick_no = ctl.ticks_started
            try:
                await self.tick()
                if not ctl.store_ok:
                    log.warning("database reachable again")
                ctl.store_ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if ctl.store_ok:
                    log.warning("control loop: %s", exc)
                ctl.store_ok = False
                if self._deaf_since is None:
                    self._deaf_since = ctl.clock()
                if ctl.is_leader and ctl.clock() >= ctl.lease_expires:
                    self._step_down("lease expired while the database was unreachable")
            ctl.metrics.store_up.set(1 if ctl.store_ok else 0)
            ctl.ticks_done = tick_no
            await ctl.notify()
            delay = max(0.0, interval - (time.monotonic() - started))
            if not ctl.is_leader:
                delay = min(delay, ctl.settings.follower_poll_s)
            ctl._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctl._kick.wait(), delay)

    async def tick(self) -> None:
        ctl = self.ctl
        now = ctl.clock()
        lease = await ctl.db(ctl.store.acquire_or_renew, ctl.settings.replica_id, now, ctl.settings.lease_s)
        leading = lease.holder == ctl.settings.replica_id
        if self._deaf_since is not None:  # the database answers again: reports can come in
            deaf_s = max(0.0, now - self._deaf_since)
            self._deaf_since = None
            self._deaf_credit = (deaf_s, now + ctl.weights.stale_after_s)
            self._listening_since = now  # and the agents' silence is counted afresh
        ctl.leader = lease.holder if lease.expires_at > now else None
        ctl.leader_since = lease.acquired_at if ctl.leader is not None else None
        if leading and not ctl.is_leader:
            await self._become_leader(lease.epoch, lease.acquired_at)
        elif not leading and ctl.is_leader:
            self._step_down(f"lease now held by {lease.holder}")
        if leading:
            ctl.lease_epoch, ctl.lease_expires = lease.epoch, lease.expires_at
        await ctl.reload_config()
        if ctl.is_leader:
            await self._pull_reports()
            await self._recompute(now)
        else:
            await self._follow()
        await self._heartbeat(now)
        if now - self._last_prune > 60:
            self._last_prune = now
            await ctl.db(ctl.store.prune_reports, now - ctl.settings.report_max_age_s)
            if ctl.is_leader:
                await ctl.db(ctl.store.prune_route_tables)

    def _links_as_of(self, now: float) -> float:
        """When links are judged fresh or stale: `now`, less the time this replica was deaf
        (database unreachable, no report accepted) for one stale period after it hears again."""
        deaf_s, until = self._deaf_credit
        return now - deaf_s if now < until else now

    async def _become_leader(self, epoch: int, since: float) -> None:
        ctl = self.ctl
        ctl.is_leader, ctl.lease_epoch, ctl.leader_since = True, epoch, since
        self._listening_since = ctl.clock()
        ctl.metrics.is_leader.set(1)
        ctl.metrics.leader_since.set(since)
        await self._follow()  # start from the newest published table and generation
        # warm the link book with what other replicas (or our previous life) accepted
        recent = await ctl.db(ctl.store.recent_reports, self._links_as_of(ctl.clock()) - ctl.weights.stale_after_s)
        for row in recent:
            node = ctl.nodes.get(row.node_id)
            if node is not None:
                ctl.record_stored_report(node, row.body, row.window_start, row.received_at)
        ctl.report_cursor = await ctl.db(ctl.store.max_report_id)
        ctl.health = _health_from_drains(ctl)
        await ctl.db(
            ctl.store.add_event,
            ctl.clock(),
            "leader",
            f"replica {ctl.settings.replica_id} leads (lease epoch {epoch})",
            None,
            None,
            {"replica": ctl.settings.replica_id, "epoch": epoch},
        )
        log.info("leading with lease epoch %d", epoch)

    def _step_down(self, why: str) -> None:
        ctl = self.ctl
        if ctl.is_leader:
            log.warning("stepping down: %s", why)
        ctl.is_leader = False
        ctl.metrics.is_leader.set(0)

    async def _pull_reports(self) -> None:
        """Fold in the reports other replicas accepted since the last look."""
        ctl = self.ctl
        rows, ctl.report_cursor = await ctl.db(ctl.store.reports_after, ctl.report_cursor, ctl.settings.replica_id)
        for row in rows:
            node = ctl.nodes.get(row.node_id)
            if node is None:
                continue
            node.last_report_at = max(node.last_report_at or 0, row.received_at)
            ctl.record_stored_report(node, row.body, row.window_start, row.received_at)

    async def _recompute(self, now: float) -> None:
        ctl = self.ctl
        t0 = time.perf_counter()
        regions = sorted(ctl.regions)
        links_at = self._links_as_of(now)
        links = ctl.linkbook.fold(links_at, ctl.weights.stale_after_s)
        for key, link in links.items():
            if link.rtt_p50_ms == link.rtt_p50_ms and link.rtt_p50_ms < float("inf"):
                old = ctl.baselines.get(key)
                ctl.baselines[key] = link.rtt_p50_ms if old is None else min(old, link.rtt_p50_ms)
        last_report = dict(ctl.region_last_report)
        nodes_of: dict[str, list[Any]] = {}
        for n in ctl.nodes.values():
            nodes_of.setdefault(n.region, []).append(n)
            if n.last_report_at:
                last_report[n.region] = max(last_report.get(n.region, 0), n.last_report_at)
        for r in last_report:  # a restarted or new leader has not been reachable until now
            last_report[r] = max(last_report[r], self._listening_since)
        judged = [r for r in regions if r in nodes_of]
        policy = ctl.settings.health_policy()
        observations = observe(judged, links, ctl.baselines, last_report, now, policy)
        manual = {r for r, d in ctl.drains.items() if d.kind == "manual"}
        health, events = step(ctl.health, observations, manual, policy, now)
        if ctl.health.frozen and not health.frozen:
            self._listening_since = now  # silence is counted afresh: agents reconnect one by one
        fence = (ctl.settings.replica_id, ctl.lease_epoch)
        for ev in events:
            if ev.kind == "drain" and ev.region is not None:
                try:
                    await ctl.db(ctl.store.set_drain, ev.region, "auto", ev.reason, "controller", now, fence)
                except StoreError:
                    self._step_down("lease lost while draining")
                    return
            elif ev.kind == "undrain" and ev.region is not None:
                try:
                    await ctl.db(ctl.store.remove_drain, ev.region, ev.reason, "controller", now, fence, "auto")
                except StoreError:
                    self._step_down("lease lost while undraining")
                    return
            else:
                await ctl.db(ctl.store.add_event, now, ev.kind, ev.reason, ev.region)
            ctl.metrics.events.labels(ev.kind).inc()
        ctl.health = health
        if events:
            await ctl.reload_config(force=True)
        drained = frozenset(ctl.drains)
        if health.frozen:
            # fail static: keep routing on the links as they were when reports stopped, rather
            # than letting them go stale and leaving the whole table unusable
            frozen_at = health.frozen_since if health.frozen_since is not None else now
            links = dict(ctl.snapshot.links) or links
            cost, rtt = cost_matrices(regions, links, ctl.weights, frozen_at)
        else:
            cost, rtt = cost_matrices(regions, links, ctl.weights, links_at)
        prev = ctl.snapshot.table
        previous = prev if prev is not None and prev.regions == tuple(regions) else None
        table = compute_routes(regions, cost, rtt, drained, ctl.weights, previous)
        changed = int(changed_mask(previous, table).sum())
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
                "reporting_nodes": sum(1 for n in nodes_of.get(rid, ()) if ctl._node_up(n, now)),
                "reason": (o.reason if o else None),
            }
        alerts = [ev.reason for ev in events if ev.kind == "alert"]
        if health.frozen:
            alerts.append(
                "frozen: reports from most regions stopped at once; draining nothing and routing on the links "
                "measured before"
            )
        snap = Snapshot(
            generation=ctl.snapshot.generation,
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
        must_publish = (
            changed > 0 or previous is None or drained != ctl.snapshot.drained or states != ctl.snapshot.states
        )
        if must_publish:
            generation = max(ctl.snapshot.generation, await ctl.db(ctl.store.max_generation)) + 1
            snap.generation = generation
            ok = await ctl.db(
                ctl.store.publish_route_table,
                generation,
                ctl.settings.replica_id,
                ctl.lease_epoch,
                now,
                snapshot_body(snap),
            )
            if not ok:
                self._step_down("publishing refused: the lease is no longer ours")
                return
            if changed:
                sample = [
                    {"src": a, "dst": b, "before": old, "after": new}
                    for a, b, old, new in diff_routes(previous, table, limit=20)
                ]
                await ctl.db(
                    ctl.store.add_event,
                    now,
                    "route_change",
                    f"{changed} routes changed (generation {generation})",
                    None,
                    None,
                    {"generation": generation, "changed": changed, "sample": sample},
                )
                ctl.metrics.events.labels("route_change").inc()
        ctl.snapshot = snap
        ctl.metrics.route_generation.set(snap.generation)
        ctl.metrics.recompute_seconds.observe(time.perf_counter() - t0)
        self._set_gauges(snap)
        if must_publish:
            await ctl.notify()

    async def _follow(self) -> None:
        ctl = self.ctl
        row = await ctl.db(ctl.store.latest_route_table, ctl.snapshot.generation)
        if row is not None:
            ctl.load_published(row.generation, row.computed_at, row.body)
            self._set_gauges(ctl.snapshot)
            await ctl.notify()
        elif ctl.snapshot.table is not None:
            # links age in memory even without a new generation
            pass

    async def _heartbeat(self, now: float) -> None:
        ctl = self.ctl
        rows = await ctl.db(ctl.store.heartbeat, ctl.settings.replica_id, ctl.snapshot.generation, now)
        newest = max([r.generation for r in rows] + [ctl.snapshot.generation])
        live = [r for r in rows if now - r.seen_at <= max(5.0, 3 * ctl.settings.lease_s)]
        ctl.replicas = [
            s.ReplicaOut(
                replica_id=r.replica_id,
                is_leader=r.replica_id == ctl.leader,
                generation=r.generation,
                lag_generations=newest - r.generation,
                seen_at=_dt(r.seen_at),
            )
            for r in live
        ]
        for r in live:
            ctl.metrics.replica_lag.labels(r.replica_id).set(newest - r.generation)

    def _set_gauges(self, snap: Snapshot) -> None:
        ctl = self.ctl
        counts = {"active": 0, "degraded": 0, "drained": 0}
        for rid in ctl.regions:
            counts[ctl.region_state(rid)] += 1
        for state, n in counts.items():
            ctl.metrics.regions.labels(state).set(n)
        now = ctl.clock()
        up = sum(1 for n in ctl.nodes.values() if ctl._node_up(n, now))
        ctl.metrics.nodes.labels("true").set(up)
        ctl.metrics.nodes.labels("false").set(len(ctl.nodes) - up)
        ctl.metrics.frozen.set(1 if snap.frozen else 0)


def _health_from_drains(ctl: Controller) -> HealthState:
    """After a restart or takeover: automatic drains in the store stay drained until they recover."""
    state = initial_state(sorted(ctl.regions))
    for rid, d in ctl.drains.items():
        if d.kind == "auto" and rid in state.regions:
            state.regions[rid] = RegionHealthState(
                state="drained",
                auto_drained=True,
                bad_streak=0,
                good_streak=0,
                since=d.since,
                drained_at=d.since,
                reason=d.reason,
            )
    return state


def _dt(epoch: float) -> Any:
    from meshctl.service.controller import ts

    return ts(epoch)
