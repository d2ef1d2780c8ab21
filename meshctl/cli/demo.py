"""`meshctl lab demo`: the mesh measures itself, routes through relays, drains a dead region.

Each step talks to the lab's controller over its REST API, as any `meshctl` command would,
and prints what it saw with the time it took.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from meshctl.cli import output
from meshctl.cli.common import to_data
from meshctl.lab import lab
from meshctl.lab.demo import converge, event_time, latest_event_id, wait_event

if TYPE_CHECKING:
    from meshctl.client import Client


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
    console.print(output.status_view(to_data(client.status())))
    console.rule("meshctl matrix")
    links = to_data(client.links())["links"]
    console.print(output.matrix_view(links, list(state.topo().regions), width=console.width))
    routes = client.route_table().routes
    relayed = [r for r in routes if r.reachable and len(r.path) > 2]
    console.rule(f"routes: {len(relayed)} of {len(routes)} region pairs go through a relay region")
    for r in relayed[:2]:
        console.print(output.explain_view(to_data(client.explain(r.src, r.dst))))


def outage(client: Client, state: lab.LabState, console: Console, say: Callable[[str], None]) -> None:
    victim = next(iter(state.topo().regions))
    hold = float(lab.CONTROLLER_ENV["MESH_HOLD_S"])
    through = [r for r in client.route_table().routes if victim in r.path[1:-1]]
    console.rule(f"outage: {victim} blackholed (every path and its reports)")
    since = latest_event_id(client)
    t_fault = lab.fault(state, victim, "blackhole")["applied_at"]
    drain = wait_event(client, since, "drain", victim, 30)
    say(f"{victim} drained {event_time(drain) - t_fault:.1f} s after the fault: {drain.reason}")
    place = client.placement(near=victim)
    say(f"new sessions near {victim} now go to {place.region}: {place.reason}")
    still = [r for r in client.route_table().routes if victim in r.path[1:-1]]
    say(f"routes relayed through {victim}: {len(through)} before, {len(still)} now")
    console.rule(f"heal: {victim} comes back after {hold:.0f} s of hold time and good windows")
    t_heal = lab.heal(state)["applied_at"]
    undrain = wait_event(client, drain.id, "undrain", victim, 90)
    say(f"{victim} back {event_time(undrain) - t_heal:.1f} s after the heal: {undrain.reason}")
