"""Report ingestion: check a node's report, refuse a window already accepted, write it durably
(group commit), then fold it into the link book.

Clocks: each report tells how far the node's clock is from ours. With `sent_at` (the node's
clock when it sent the report, the `X-Mesh-Sent-At` header) the offset is `sent_at - received`;
without it, a window that ends after we received it shows a clock running ahead by at least
`window end - received`, and a window that ended within the tolerance before shows a clock in
step (a window that ended longer ago is ambiguous: spooled, or a slow clock; the last offset
stands). Beyond `clock_tolerance_s` the window is moved into our time by the offset (not refused
as "in the future", not judged stale), and a `clock_skew` event marks each crossing; beyond
`clock_max_offset_s` the clock is broken, not skewed, and the window is judged as sent (a window
far in the future is refused). The offset is noted only once the report is accepted. Silence is
judged by when we received reports, so a node's clock never drains its region.

The hot path of the controller (1,000+ reports/s): per report it allocates no model but the
acknowledgement, and loops in Python over the peers only to name the first bad one. What is stored
is the columns the fold uses (store/reports.py packs them, ~2.5 KiB at 298 peers), so reports
other replicas accepted come back from the store as the same columns and are folded the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from meshctl.core.links import LinkBook
from meshctl.service import report_codec as codec
from meshctl.service.auth import Principal
from meshctl.service.batch import BatchWriter
from meshctl.service.errors import Conflict, Forbidden, Invalid, Missing, Unavailable
from meshctl.service.metrics import Metrics
from meshctl.service.state import Db, MeshState
from meshctl.settings import Settings
from meshctl.store.db import Store
from meshctl.store.reports import Window
from meshctl.store.values import Node, StoredReport
from meshctl.wire import schemas as s

RECENT_SEQS = 4096  # windows per node remembered in memory; older duplicates are caught by the store


class Ingest:
    """Reports of one replica: seq de-duplication, the batch writer and the link book."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        db: Db,
        state: MeshState,
        metrics: Metrics,
        clock: Callable[[], float],
        writer_id: str,
        refresh: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._db = db
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self.linkbook = LinkBook(loss_smoothing=settings.loss_smoothing, smoothing_horizon_s=settings.stale_after_s)
        self._recent: dict[str, tuple[deque[int], set[int]]] = {}
        self._pending: dict[str, set[int]] = {}
        self._peer_lists: dict[str, tuple[int, list[str]]] = {}  # node -> (nodes_forgotten, peers found valid)
        self._writer = BatchWriter(self._write, gather_s=settings.report_commit_gather_s)
        self._writer_id = writer_id  # how this process signs the reports it stores
        self._refresh = refresh  # reload nodes from the store (peers that joined elsewhere)
        self._refreshing: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    def forget_node(self, node_id: str) -> None:
        self.linkbook.forget_node(node_id)
        self._recent.pop(node_id, None)
        self._peer_lists.pop(node_id, None)
        if self._state.clock_offsets.pop(node_id, None) is not None:
            self._metrics.clock_offset.remove(node_id)
        self._state.skewed.discard(node_id)

    async def _write(self, windows: list[Window]) -> list[bool]:
        return await self._db(self._store.insert_reports, windows, self._writer_id)

    # --- a node's report -----------------------------------------------------------------

    async def ingest(self, who: Principal, report: codec.ReportColumns, sent_at: float | None = None) -> s.ReportAck:
        """Check, write durably (group commit), then fold into the link book.

        What is stored is the window's columns (`PeerColumns.matrix`), its window_start in our
        time (moved by the node's clock offset when beyond tolerance) and length.
        `sent_at`: the node's clock when it sent the report, if it said.
        """
        reject = self._metrics.reports_rejected
        if who.kind != "node":
            reject.labels("not_a_node").inc()
            raise Forbidden("reports are sent with a node credential")
        if report.node_id != who.id:
            reject.labels("other_node").inc()
            raise Forbidden(f"node_id: this credential belongs to {who.id}, not {report.node_id}", field="node_id")
        state = self._state
        node = state.nodes.get(who.id)
        if node is None:
            raise Missing(f"unknown node {who.id!r}", field="node_id")
        now = self._clock()
        start = report.window_start
        measured = self._measure_clock(start + report.window_s, now, sent_at)
        offset = measured if measured is not None else state.clock_offsets.get(node.id, 0.0)
        if self._settings.clock_tolerance_s < abs(offset) <= self._settings.clock_max_offset_s:
            start -= offset  # the window in our time: not "in the future", not stale
        if start > now + self._settings.report_max_future_s:
            reject.labels("future").inc()
            raise Invalid("window_start: is in the future", field="window_start")
        if start + report.window_s < now - self._settings.report_max_age_s:
            reject.labels("too_old").inc()
            raise Invalid("window_start: older than the controller keeps", field="window_start")
        peers = report.peers
        ids = self._checked_peers(node.id, peers.ids)
        if ids is None:
            unique = set(peers.ids)
            if who.id in unique or len(unique) != len(peers.ids) or not all(map(state.nodes.__contains__, unique)):
                if who.id not in unique and len(unique) == len(peers.ids):
                    await self._reload_nodes()  # peers that joined through another replica a moment ago
                self._reject_peers(who.id, peers.ids)
            ids = [state.nodes[p].id for p in peers.ids]
            self._peer_lists[node.id] = (state.nodes_forgotten, ids)
        peers = dataclasses.replace(peers, ids=ids)
        seq = report.seq
        recent, recent_set = self._recent.setdefault(node.id, (deque(), set()))
        pending = self._pending.setdefault(node.id, set())
        if seq in recent_set or seq in pending:
            reject.labels("duplicate").inc()
            raise Conflict(f"seq: window {seq} of {node.id} was already accepted", field="seq")
        pending.add(seq)
        try:
            written = await self._writer.submit(Window(node.id, seq, start, now, report.window_s, ids, peers.matrix()))
        except Exception as exc:
            reject.labels("store").inc()
            raise Unavailable("the database is unreachable; the report was not stored, retry later") from exc
        finally:
            pending.discard(seq)
        if not written:
            reject.labels("duplicate").inc()
            raise Conflict(f"seq: window {seq} of {node.id} was already accepted", field="seq")
        recent.append(seq)
        recent_set.add(seq)
        if len(recent) > RECENT_SEQS:
            recent_set.discard(recent.popleft())
        if measured is not None:
            await self._note_clock(node, measured, now)
        c = state.counters.get(node.id)
        if c is not None:  # (None only if the node left while its report was being written)
            c.last_report_at = max(c.last_report_at or 0, now)
            c.last_seq = seq if c.last_seq is None else max(c.last_seq, seq)
            c.reports_accepted += 1
        self.record(node, peers, start + report.window_s, now)
        if report.reroutes:
            await self._note_reroutes(node, report, now)
        self._metrics.reports_ingested.inc()
        return s.ReportAck(node_id=node.id, seq=seq, accepted=True)

    def _checked_peers(self, node_id: str, ids: list[str]) -> list[str] | None:
        """The node's peer list as last found valid, when this report lists the same peers and no
        node has left since; else None (check them). That list holds the node ids' own string
        objects (`nodes`' keys): every lookup of them after (link book, store numbers) compares
        pointers, not 300 freshly decoded strings."""
        checked = self._peer_lists.get(node_id)
        if checked is not None and checked[0] == self._state.nodes_forgotten and checked[1] == ids:
            return checked[1]
        return None

    async def _note_reroutes(self, node: Node, report: codec.ReportColumns, now: float) -> None:
        """A node's local fast reroutes become one `reroute` event (the next table confirms or replaces them)."""
        moves = [f"{r.region} -> {r.to} ({r.reason})" for r in report.reroutes]
        reason = f"node {node.name} switched locally: " + "; ".join(moves[:5]) + ("; ..." if len(moves) > 5 else "")
        data = {"reroutes": [r.model_dump() for r in report.reroutes]}
        with contextlib.suppress(Exception):  # an event is not worth refusing the report for
            await self._db(self._store.add_event, now, "reroute", reason[:1000], node.region, node.id, data)
        self._metrics.events.labels("reroute").inc()

    async def _reload_nodes(self) -> None:
        """Reload nodes from the store; concurrent callers share one reload."""
        if self._refresh is None:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        try:
            await asyncio.shield(self._refreshing)
        except Exception:  # the store is away: the peers stay unknown, and the report is refused
            return

    def _measure_clock(self, window_end: float, now: float, sent_at: float | None) -> float | None:
        """The node's clock against ours, from one report (see the module's docstring); None
        when this report cannot tell."""
        if sent_at is not None:
            return sent_at - now
        if window_end > now:
            return window_end - now
        if now - window_end <= self._settings.clock_tolerance_s:
            return 0.0
        return None

    async def _note_clock(self, node: Node, measured: float, now: float) -> None:
        """Keep the offset (node field, metric); a crossing of the tolerance is a `clock_skew` event."""
        state, tolerance = self._state, self._settings.clock_tolerance_s
        state.clock_offsets[node.id] = measured
        self._metrics.clock_offset.labels(node.id).set(measured)
        skewed = abs(measured) > tolerance
        if skewed != (node.id in state.skewed):
            if skewed:
                state.skewed.add(node.id)
                reason = (
                    f"node {node.name} clock is {abs(measured):.1f} s {'ahead of' if measured > 0 else 'behind'} "
                    f"the controller's (tolerance {tolerance:g} s): its windows are re-timed"
                )
            else:
                state.skewed.discard(node.id)
                reason = f"node {node.name} clock is back within {tolerance:g} s of the controller's"
            data = {"offset_s": round(measured, 3), "tolerance_s": tolerance, "skewed": skewed}
            with contextlib.suppress(Exception):  # an event is not worth refusing the report for
                await self._db(self._store.add_event, now, "clock_skew", reason, node.region, node.id, data)
            self._metrics.events.labels("clock_skew").inc()

    def _reject_peers(self, node_id: str, peer_ids: list[str]) -> None:
        """Raise for the first bad peer: itself, listed twice, or not a node we know."""
        reject = self._metrics.reports_rejected
        seen = set()
        for i, peer in enumerate(peer_ids):
            field = f"peers[{i}].peer_node_id"
            if peer == node_id:
                reject.labels("bad_peer").inc()
                raise Invalid(f"{field}: a node does not probe itself", field=field)
            if peer in seen:
                reject.labels("bad_peer").inc()
                raise Invalid(f"{field}: listed twice", field=field)
            seen.add(peer)
            if peer not in self._state.nodes:
                reject.labels("bad_peer").inc()
                raise Invalid(f"{field}: unknown node {peer!r}", field=field)

    # --- folding into the link book ------------------------------------------------------

    def record(self, node: Node, peers: codec.PeerColumns, window_end: float, received: float) -> None:
        """Fold one report into the link book (also reports pulled from other replicas).

        Peers that are not (or no longer) known nodes, and those with nothing sent, are skipped.
        """
        at = min(window_end, received)
        last = self._state.region_last_report
        last[node.region] = max(last.get(node.region, 0), received)
        if not peers.ids:
            return
        sent, got = peers.sent, peers.received
        keep = sent > 0
        loss = np.divide(100.0 * (sent - np.minimum(got, sent)), sent, out=np.zeros_like(sent), where=keep)
        self.linkbook.record_report(
            node.id, node.region, peers.ids, self._state.region_of, peers.p50, peers.p90, peers.jitter, loss, at, keep
        )

    def record_stored(self, report: StoredReport, heard: bool = True) -> bool:
        """Fold a report another replica (or an earlier life of this one) accepted.

        `heard`: it counts as the node's latest sign of life. False for unknown nodes.
        """
        node = self._state.nodes.get(report.node_id)
        if node is None:
            return False
        if heard:
            c = self._state.counters_of(node.id)
            c.last_report_at = max(c.last_report_at or 0, report.received_at)
        peers = codec.PeerColumns.from_matrix(list(report.peer_ids), report.columns)
        self.record(node, peers, report.window_start + report.window_s, report.received_at)
        return True
