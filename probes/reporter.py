"""Delivery of the spooled windows to the controller: it never drops a window it could still deliver.

Each answer to `POST /v1/reports`, and what happens to the window:

- 202: delivered.
- 409: the controller already has it (an earlier answer was lost): counted, not a loss.
- 401, 403, 404, or 410 without the node-removed type: kept and retried with back-off; one
  credential check (GET of its own peers) and one log line per episode (a replica behind a load
  balancer may not know the credential yet).
- 408, 429, 5xx, no answer: kept and retried with back-off (at least `Retry-After`, capped);
  one log line per episode.
- 422 about `window_start` (a clock problem): kept for one more try, then dropped (reason
  `clock`); one log line: the node's clock is likely off.
- 422 about `peers` while they were sent as columns: a controller older than the columns; the
  window goes again at once with its peers as a list of objects, and so do all after it.
- 400, 413, any other 422: dropped (reasons `invalid`, `too_large`), one log line each.

A window's peers are spooled as a list of objects and sent as columns (an object of lists, one
element per peer): the same report in a third of the bytes, and a third of the controller's
decoding (`meshctl.wire.schemas.ReportIn`).
- **410 with problem type `urn:meshctl:problem:node-removed`**: the window stays on disk and the
  agent stops with one line (`NodeRemoved`).

The node-removed contract (for the controller): once a node has been removed, any request made
with its credential (reports, peers, key) is answered `410 Gone`, `Content-Type:
application/problem+json`, body `{"type": "urn:meshctl:problem:node-removed", "title": "Node
removed", "status": 410, "detail": "node <id> was removed", ...}`. Nothing else stops an agent:
a 401 or 403 may come from a replica that does not know the credential yet.

Metrics (in the agent's registry): `mesh_agent_reports_delivered`, `mesh_agent_reports_dropped{reason}`
(only what can never be delivered: `spool_bound`, `invalid`, `too_large`, `clock`),
`mesh_agent_reports_already_delivered`, `mesh_agent_report_retries{reason}` and the spool's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from probes.problem import describe, is_clock_refusal, is_node_removed, refuses_peer_columns, retry_after
from probes.spool import Spool

log = logging.getLogger("meshctl.agent")
# a report is small and acknowledged after one group commit: a slow answer means a cut path
REPORT_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is capped: the spool's age bound is the real limit
AUTH_TROUBLE = (401, 403, 404, 410)  # the credential or node not known (yet) where the request landed
DROP_REASONS = {400: "invalid", 413: "too_large", 422: "invalid"}  # refused for its content: no retry helps

# what one delivery attempt means for the pass over the spool
_NEXT = "next"  # delivered or dropped: go on with the next window
_KEPT = "kept"  # kept for a later pass, go on with the next window
_STOP = "stop"  # kept; stop this pass and back off


class NodeRemoved(RuntimeError):
    """The controller said this node was removed (410, problem type node-removed): the agent stops."""


class Reporter:
    """Delivers one agent's spool in order; `wake()` when a window was spooled.

    `http` and `credential` are read at each use (the agent makes its client after it starts and
    may join meanwhile); `sleep` is every back-off wait (tests replace it).
    """

    def __init__(
        self,
        spool: Spool,
        registry: CollectorRegistry,
        http: Callable[[], httpx.AsyncClient | None],
        credential: Callable[[], dict[str, Any]],
        sleep: Callable[[float], Awaitable[None]],
        window_s: float,
        credential_file: Path,
    ) -> None:
        self.spool = spool
        self._http = http
        self._credential = credential
        self._sleep = sleep
        self.window_s = window_s
        self.credential_file = credential_file
        self.retry_base_s = 0.5  # the first back-off
        self._wake = asyncio.Event()
        self._trouble: str | None = None  # the current trouble (logged once), None when fine
        self._trouble_retries = 0
        self._clock_kept: set[int] = set()  # windows refused once for their time, kept for one more try
        self.peers_as_columns = True  # until a controller older than the columns refuses them
        self.on_contact: Callable[[], None] | None = None  # the controller answered (probes.health)
        self.on_unreachable: Callable[[], None] | None = None  # no answer, or a 5xx
        self.m_reports = Counter("mesh_agent_reports_delivered", "Windows the controller accepted", registry=registry)
        self.m_report_drops = Counter(
            "mesh_agent_reports_dropped",
            "Windows dropped: spool_bound (the spool's size or age bound), invalid or too_large (refused for"
            " their content), clock (refused twice for their time)",
            ["reason"],
            registry=registry,
        )
        self.m_already = Counter(
            "mesh_agent_reports_already_delivered",
            "Windows the controller already had (409: an earlier answer was lost); not a loss",
            registry=registry,
        )
        self.m_retries = Counter(
            "mesh_agent_report_retries",
            "Delivery attempts kept for a retry: unreachable, unavailable (5xx, 408), throttled (429),"
            " auth (401, 403, 404, 410), clock, unexpected",
            ["reason"],
            registry=registry,
        )
        self.m_spooled = Gauge("mesh_agent_reports_spooled", "Windows waiting in the spool", registry=registry)
        self.m_clock_offset = Gauge(
            "mesh_agent_clock_offset_seconds",
            "This node's clock minus the controller's, as the controller measured it (X-Mesh-Clock-Offset-S)",
            registry=registry,
        )

    @property
    def http(self) -> httpx.AsyncClient:
        client = self._http()
        assert client is not None, "the agent's HTTP client is made before the reporter runs"
        return client

    def spooled(self, dropped_by_bound: int) -> None:
        """A window was put in the spool (and the spool's bound dropped `dropped_by_bound` old ones)."""
        if dropped_by_bound:  # the spool's size or age bound (controller away too long)
            self.m_report_drops.labels("spool_bound").inc(dropped_by_bound)
        self.m_spooled.set(len(self.spool))
        self._wake.set()

    async def run(self) -> None:
        """Deliver spooled windows in order; back off with jitter while they cannot be delivered.

        What each answer does is in the module's docstring; `NodeRemoved` ends it (and the agent).
        """
        backoff = self.retry_base_s
        while True:
            self._wake.clear()
            verdict, wait = _NEXT, 0.0
            for seq, report in self.spool:
                outcome, asked = await self._deliver(seq, report)
                if outcome != _NEXT:
                    verdict, wait = outcome, max(wait, asked)
                if outcome == _STOP:
                    break
            self.m_spooled.set(len(self.spool))
            if verdict == _NEXT:
                backoff = self.retry_base_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.window_s)
            else:
                await self._sleep(max(backoff * (0.5 + random.random()), min(wait, MAX_RETRY_AFTER_S)))
                backoff = min(backoff * 2, max(1.0, self.window_s))  # back within a window or so of an outage

    async def _deliver(self, seq: int, report: dict[str, Any]) -> tuple[str, float]:
        """One attempt to deliver one window: (what it means for this pass, seconds the controller asked to wait)."""
        token = self._credential()["node_token"]
        try:
            # X-Mesh-Sent-At lets the controller measure this node's clock offset (and keep a skewed
            # node's windows in its own time instead of refusing them)
            headers = {"Authorization": f"Bearer {token}", "X-Mesh-Sent-At": f"{time.time():.3f}"}
            body = with_peer_columns(report) if self.peers_as_columns else report
            r = await self.http.post("/v1/reports", json=body, headers=headers, timeout=REPORT_TIMEOUT)
        except httpx.HTTPError as exc:
            if self.on_unreachable is not None:
                self.on_unreachable()
            self._retry("unreachable", f"controller unreachable ({type(exc).__name__})")
            return _STOP, 0.0
        status = r.status_code
        hook = self.on_contact if status < 500 else self.on_unreachable
        if hook is not None:
            hook()
        offset = r.headers.get("x-mesh-clock-offset-s")
        with contextlib.suppress(ValueError):
            if offset is not None:
                self.m_clock_offset.set(float(offset))
        if status in (202, 409):
            self.spool.done(seq)
            self._clock_kept.discard(seq)
            (self.m_reports if status == 202 else self.m_already).inc()
            self._delivered()
            return _NEXT, 0.0
        if is_node_removed(r):
            raise NodeRemoved(self.removed_line(r))
        if status in AUTH_TROUBLE:
            if self._trouble != "auth":
                check = await self.check_credential()
                self._retry("auth", f"report {seq} refused ({status}): {describe(r)}; {check}")
            else:
                self._retry("auth", "")
            return _STOP, 0.0
        if status in (408, 429) or status >= 500:
            reason = "throttled" if status == 429 else "unavailable"
            self._retry(reason, f"report {seq} not taken ({status}): {describe(r)}")
            return _STOP, retry_after(r) or 0.0
        if self.peers_as_columns and body is not report and refuses_peer_columns(r):
            self.peers_as_columns = False
            log.info("the controller takes a report's peers only as a list (%s): sending them so", describe(r))
            return await self._deliver(seq, report)
        if is_clock_refusal(r):
            if seq not in self._clock_kept:
                self._clock_kept.add(seq)
                self._retry(
                    "clock",
                    f"report {seq} refused for its time ({describe(r)}): this node's clock is likely off"
                    " (check NTP); each such window is kept for one more try",
                )
                return _KEPT, 0.0
            self._clock_kept.discard(seq)
            return self._drop(seq, r, "clock"), 0.0
        if status in DROP_REASONS:
            return self._drop(seq, r, DROP_REASONS[status]), 0.0
        self._retry("unexpected", f"report {seq}: unexpected answer ({status}): {describe(r)}")
        return _STOP, 0.0

    def _drop(self, seq: int, r: httpx.Response, reason: str) -> str:
        log.warning("report %d refused (%d): %s; dropped", seq, r.status_code, describe(r))
        self.spool.done(seq)
        self.m_report_drops.labels(reason).inc()
        return _NEXT

    def _retry(self, reason: str, line: str) -> None:
        """Count a kept window; log `line` only when this kind of trouble starts (not per retry)."""
        self.m_retries.labels(reason).inc()
        self._trouble_retries += 1
        if reason != self._trouble:
            self._trouble = reason
            (log.info if reason in ("unreachable", "unavailable", "throttled") else log.warning)(
                "%s; kept in the spool (%d windows), retrying with back-off", line, len(self.spool)
            )

    def _delivered(self) -> None:
        if self._trouble is not None:
            log.info("reports delivered again (after %d retries: %s)", self._trouble_retries, self._trouble)
        self._trouble, self._trouble_retries = None, 0

    async def check_credential(self) -> str:
        """Ask for the node's own peers with its credential: says (in words) whether the credential is good.

        Raises `NodeRemoved` when the controller answers that the node was removed.
        """
        cred = self._credential()
        try:
            r = await self.http.get(
                f"/v1/nodes/{cred['node_id']}/peers",
                headers={"Authorization": f"Bearer {cred['node_token']}"},
                timeout=REPORT_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            return f"credential check: controller unreachable ({type(exc).__name__})"
        if is_node_removed(r):
            raise NodeRemoved(self.removed_line(r))
        if r.status_code in (200, 304):
            return "credential check: accepted (the replica that refused it may not know it yet)"
        return f"credential check: refused too ({r.status_code}: {describe(r)})"

    def removed_line(self, r: httpx.Response) -> str:
        """The one line the agent stops with when the controller says its node was removed."""
        node_id = self._credential()["node_id"]
        return (
            f"node {node_id} was removed from the mesh ({describe(r)}); stopping"
            f" ({len(self.spool)} windows left in {self.spool.dir});"
            f" remove {self.credential_file} to join again"
        )


def with_peer_columns(report: dict[str, Any]) -> dict[str, Any]:
    """The report with its peers as columns: each field a list with one element per peer (null
    where a peer's entry left the field out). A report without a list of peers is sent as it is."""
    peers = report.get("peers")
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        return report
    fields = dict.fromkeys(["peer_node_id", "sent", "received", *(k for p in peers for k in p)])
    return {**report, "peers": {k: [p.get(k) for p in peers] for k in fields}}
