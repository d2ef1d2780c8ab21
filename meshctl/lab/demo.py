"""The steps of `meshctl lab demo` that are not presentation: wait for events, wait for the mesh
to converge. What the demo prints lives with the CLI (`meshctl lab demo`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from meshctl.lab import lab
from meshctl.wire import schemas as s

if TYPE_CHECKING:
    from meshctl.client import Client


def event_time(event: s.EventOut | Mapping[str, Any]) -> float:
    """When an event happened (Unix time), from the model or its JSON object."""
    if isinstance(event, s.EventOut):
        return event.ts.timestamp()
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


def latest_event_id(client: Client) -> int:
    newest = client.events(limit=1)
    return newest[-1].id if newest else 0


def wait_event(client: Client, since: int, kind: str, region: str, timeout: float) -> s.EventOut:
    """The first event of this kind for this region after event `since` (long polls the API)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in client.events(since=since, limit=500, wait=min(5.0, max(0.1, deadline - time.monotonic()))):
            since = max(since, e.id)
            if e.kind == kind and e.region == region:
                return e
    raise lab.LabError(f"no {kind} event for {region} within {timeout:.0f} s")


def converge(state: lab.LabState, say: Callable[[str], None], timeout: float = 120.0) -> float:
    """Wait until every region pair is measured within 10% (or 2 ms) of the topology."""
    t0 = time.monotonic()
    last_said = 0.0
    while time.monotonic() - t0 < timeout:
        try:
            c = lab.converged(state)
        except Exception:  # the controller may still be starting its first table
            c = {"ok": False, "measured": 0, "pairs": 0, "off": []}
        if c["ok"]:
            return time.monotonic() - t0
        if time.monotonic() - last_said > 3:
            say(f"measuring: {c['measured']}/{c['pairs']} region pairs, {len(c['off'])} not yet within 10% or 2 ms")
            last_said = time.monotonic()
        time.sleep(0.5)
    raise lab.LabError(f"the mesh did not converge within {timeout:.0f} s: see `meshctl lab status`")
