"""`meshctl lab demo`: the mesh measures itself, routes through relays, drains a dead region.

Each step talks to the lab's controller over its REST API, as any `meshctl` command would,
and prints what it saw with the time it took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from meshctl.cli import output
from meshctl.cli.client import Client
from meshctl.lab import lab


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def latest_event_id(client: Client) -> int:
    newest = client.events(limit=1)
    return int(newest[-1]["id"]) if newest else 0


def wait_event(client: Client, since: int, kind: str, region: str, timeout: float) -> dict[str, Any]:
    """The first event of this kind for this region after event `since` (long polls the API)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in client.events(since=str(since), limit=500, wait=min(5.0, max(0.1, deadline - time.monotonic()))):
            since = max(since, int(e["id"]))
            if e["kind"] == kind and e.get("region") == region:
                return dict(e)
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


def run(
    lab_dir: Path | None, topology_path: Path | None, keep: bool, say: Callable[[str], None], console: Console
) -> None:
    state = lab.up(topology_path, lab_dir, say=say)
    try:
        took = converge(state, say)
        say(f"converged: every region pair measured within 10% (or 2 ms) of its real-world RTT in {took:.1f} s")
        with state.client() as client:
            show_mesh(client, state, console)
            outage(client, state, console, say)
    finally:
        if keep:
            say(
                "the lab keeps running: try `meshctl status`, `meshctl matrix`, `meshctl lab fault ...`; "
                "`meshctl lab down` removes it"
            )
        else:
            lab.down(lab_dir, say=say)


def show_mesh(client: Client, state: lab.LabState, console: Console) -> None:
    console.rule("meshctl status")
    console.print(output.status_view(client.status()))
    console.rule("meshctl matrix")
    console.print(output.matrix_view(client.links()["links"], list(state.topo().regions), width=console.width))
    routes = client.routes()["routes"]
    relayed = [r for r in routes if r["reachable"] and len(r["path"]) > 2]
    console.rule(f"routes: {len(relayed)} of {len(routes)} region pairs go through a relay region")
    for r in relayed[:2]:
        console.print(output.explain_view(client.route(r["src"], r["dst"], explain=True)))


def outage(client: Client, state: lab.LabState, console: Console, say: Callable[[str], None]) -> None:
    victim = next(iter(state.topo().regions))
    hold = float(lab.CONTROLLER_ENV["MESH_HOLD_S"])
    through = [r for r in client.routes()["routes"] if victim in r["path"][1:-1]]
    console.rule(f"outage: {victim} blackholed (every path and its reports)")
    since = latest_event_id(client)
    t_fault = lab.fault(state, victim, "blackhole")["applied_at"]
    drain = wait_event(client, since, "drain", victim, 30)
    say(f"{victim} drained {event_time(drain) - t_fault:.1f} s after the fault: {drain['reason']}")
    place = client.placement(victim, None, None)
    say(f"new sessions near {victim} now go to {place['region']}: {place['reason']}")
    still = [r for r in client.routes()["routes"] if victim in r["path"][1:-1]]
    say(f"routes relayed through {victim}: {len(through)} before, {len(still)} now")
    console.rule(f"heal: {victim} comes back after {hold:.0f} s of hold time and good windows")
    since = int(drain["id"])
    t_heal = lab.heal(state)["applied_at"]
    undrain = wait_event(client, since, "undrain", victim, 90)
    say(f"{victim} back {event_time(undrain) - t_heal:.1f} s after the heal: {undrain['reason']}")
