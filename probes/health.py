"""The node's health for the media server and the cloud's load balancers: `GET /healthz`.

200 while the node takes new sessions; 503, with the reason in a JSON body, when

- the node is drained (`meshctl node drain`), or its region is (by an operator or automatically),
  as the controller last said in the node's peer list (`self_state`, learnt by long poll), or
- the agent has not reached the controller for longer than the grace (`--controller-grace`,
  default 300 s; 0 turns this off): its requests have failed for that long with no answer in
  between (counted from the first failure: a long poll held open is not silence; a cut path is
  seen within a report's timeout, 3 s).

Fail static: within the grace a controller that is down changes nothing; the last drain state
the agent heard (kept on disk with the peer list) stands. The grace is long enough to ride out a
controller restart or a replica takeover (seconds) and a database outage, and short enough that
a node cut off from the control plane for minutes, likely cut off from more, leaves the load
balancer. Standard library only (asyncio streams): the agent must stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("meshctl.agent")
DEFAULT_CONTROLLER_GRACE_S = 300.0
MAX_REQUEST = 8192


@dataclass(frozen=True)
class DrainState:
    """What the controller last said about this node (its peer list's `self_state`)."""

    drained: bool = False
    scope: str | None = None  # "node" | "region"
    reason: str | None = None
    since: str | None = None

    @classmethod
    def of(cls, self_state: dict[str, Any] | None) -> DrainState:
        if not self_state:
            return cls()
        return cls(
            drained=bool(self_state.get("drained")),
            scope=self_state.get("scope"),
            reason=self_state.get("reason"),
            since=self_state.get("since"),
        )


class Health:
    """The node's health verdict: the controller's word on drains, and when it was last heard from."""

    def __init__(
        self, controller_grace_s: float = DEFAULT_CONTROLLER_GRACE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.controller_grace_s = controller_grace_s
        self.clock = clock
        self.drain = DrainState()
        self.last_contact = clock()
        # when requests started failing, since the last answer (None: not failing). Counted from the
        # first failure, not the last answer: a long poll held open for 25 s is not silence.
        self.failing_since: float | None = None
        self.node_id: str | None = None
        self.region: str | None = None

    def contact(self) -> None:
        """The controller answered (a peer list, a 304, an accepted report)."""
        self.last_contact = self.clock()
        self.failing_since = None

    def unreachable(self) -> None:
        """A request to the controller failed (no answer, or 5xx from what is in front of it)."""
        if self.failing_since is None:
            self.failing_since = self.clock()

    def verdict(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of `GET /healthz` now."""
        now = self.clock()
        failing = 0.0 if self.failing_since is None else now - self.failing_since
        body: dict[str, Any] = {
            "node_id": self.node_id,
            "region": self.region,
            "controller_last_heard_s": round(now - self.last_contact, 3),
            "controller_failing_s": round(failing, 3),
        }
        if self.drain.drained:
            scope = self.drain.scope or "node"
            return 503, {
                **body,
                "status": "drained",
                "scope": scope,
                "reason": self.drain.reason,
                "since": self.drain.since,
            }
        if self.failing_since is not None and self.controller_grace_s > 0 and failing > self.controller_grace_s:
            return 503, {
                **body,
                "status": "controller_unreachable",
                "reason": f"no answer from the controller for {failing:.0f} s (grace {self.controller_grace_s:g} s)",
            }
        return 200, {**body, "status": "active"}


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT ([v6]:PORT too; an empty host is 0.0.0.0); ValueError if malformed."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{listen!r} is not HOST:PORT (e.g. 0.0.0.0:9901)")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port_text)


class HealthServer:
    """`GET /healthz` (and HEAD) on one address; anything else is 404 or 405."""

    def __init__(self, health: Health, listen: str) -> None:
        self.health = health
        self.host, self.port = parse_listen(listen)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; a clear HealthListenError when the address is taken or not ours."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            why = "already in use (another agent on this node?)" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise HealthListenError(
                f"health-listen {self.host}:{self.port}: {why}; give another with --health-listen"
            ) from exc
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]  # the real one when 0 was asked
        log.info("/healthz on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            if len(head) > MAX_REQUEST:
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if path != "/healthz":
                status, body = 404, {"status": "not_found", "reason": "only /healthz is served here"}
            elif method not in ("GET", "HEAD"):
                status, body = 405, {"status": "method_not_allowed", "reason": "GET or HEAD"}
            else:
                status, body = self.health.verdict()
            data = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            headers = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nConnection: close\r\n"
                + ("Allow: GET, HEAD\r\n" if status == 405 else "")
                + "\r\n"
            )
            writer.write(headers.encode() + (b"" if method == "HEAD" else data))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class HealthListenError(RuntimeError):
    """The health address cannot be listened on (taken, or not an address of this node)."""
