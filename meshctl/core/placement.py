"""Placement: the best healthy region for a client near a region or a point."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from meshctl.core.regions import haversine_km
from meshctl.core.routing import RouteTable


class RegionLike(Protocol):
    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...
    @property
    def metro(self) -> str | None: ...
    @property
    def cloud(self) -> str: ...


class NoHealthyRegion(LookupError):
    """Every region is drained or degraded."""


class UnknownRegion(KeyError):
    """`near` names a region we do not know."""


@dataclass(frozen=True)
class PlacementCandidate:
    region: str
    state: str
    rtt_ms: float | None
    distance_km: float | None
    note: str | None = None


@dataclass(frozen=True)
class Placement:
    region: str
    reason: str
    rtt_ms: float | None
    distance_km: float | None
    alternatives: list[PlacementCandidate] = field(default_factory=list)


def _rtt(table: RouteTable | None, src: str, dst: str) -> float | None:
    if table is None or src not in table.index or dst not in table.index:
        return None
    v = float(table.rtt[table.index[src], table.index[dst]])
    return v if math.isfinite(v) else None


def place(
    regions: Mapping[str, RegionLike],
    states: Mapping[str, str],
    table: RouteTable | None,
    near: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    limit: int = 5,
    nodes_drained: Collection[str] = (),
) -> Placement:
    """Only active regions are chosen; ties break on the region id.

    `nodes_drained`: regions whose every node is drained (node drains): no node there takes a new
    session, so they are passed over as a drained region is (shown as drained, noted why).
    """
    if near is not None and near not in regions:
        raise UnknownRegion(near)
    all_drained = set(nodes_drained)
    states = {
        rid: "drained" if rid in all_drained and states.get(rid, "active") == "active" else states.get(rid, "active")
        for rid in regions
    }
    if near is None and (lat is None or lon is None):
        raise ValueError("give near or both lat and lon")
    origin_lat = regions[near].lat if near is not None else float(lat)  # type: ignore[arg-type]
    origin_lon = regions[near].lon if near is not None else float(lon)  # type: ignore[arg-type]

    def candidate(rid: str, note: str | None = None) -> PlacementCandidate:
        r = regions[rid]
        return PlacementCandidate(
            region=rid,
            state=states.get(rid, "active"),
            rtt_ms=_rtt(table, near, rid) if near is not None else None,
            distance_km=round(haversine_km(origin_lat, origin_lon, r.lat, r.lon), 1),
            note=note if note is not None or rid not in all_drained else "every node drained",
        )

    healthy = [rid for rid in regions if states.get(rid, "active") == "active"]
    if not healthy:
        raise NoHealthyRegion("every region is drained or degraded")

    def rank(c: PlacementCandidate) -> tuple[float, float, str]:
        rtt = c.rtt_ms if c.rtt_ms is not None else math.inf
        return (rtt, c.distance_km or 0.0, c.region)

    if near is not None:
        own_state = states.get(near, "active")
        if near in all_drained and own_state == "drained":
            own_state = "drained (every node)"
        if own_state == "active":
            chosen = candidate(near)
            reason = f"{near} is healthy"
        else:
            metro = regions[near].metro
            same_metro = [
                candidate(r, "same metro, other cloud")
                for r in healthy
                if metro and regions[r].metro == metro and regions[r].cloud != regions[near].cloud
            ] + [
                candidate(r, "same metro")
                for r in healthy
                if metro and regions[r].metro == metro and r != near and regions[r].cloud == regions[near].cloud
            ]
            if same_metro:
                chosen = min(same_metro, key=rank)
                reason = (
                    f"{near} is {own_state}; {chosen.region} is in the same metro ({metro}) on another cloud"
                    if (chosen.note == "same metro, other cloud")
                    else f"{near} is {own_state}; {chosen.region} is in the same metro ({metro})"
                )
            else:
                others = [candidate(r) for r in healthy]
                measured = [c for c in others if c.rtt_ms is not None]
                if measured:
                    chosen = min(measured, key=rank)
                    reason = (
                        f"{near} is {own_state}; {chosen.region} has the lowest measured RTT from it "
                        f"({chosen.rtt_ms:.1f} ms)"
                    )
                else:
                    chosen = min(others, key=lambda c: (c.distance_km or 0.0, c.region))
                    reason = (
                        f"{near} is {own_state}; {chosen.region} is the nearest healthy region "
                        f"({chosen.distance_km:.0f} km)"
                    )
    else:
        others = [candidate(r) for r in healthy]
        chosen = min(others, key=lambda c: (c.distance_km or 0.0, c.region))
        reason = f"{chosen.region} is the nearest healthy region ({chosen.distance_km:.0f} km)"

    alts = [candidate(r) for r in regions if r != chosen.region]
    alts.sort(key=lambda c: (c.state != "active", c.distance_km or 0.0, c.region))
    return Placement(
        region=chosen.region,
        reason=reason,
        rtt_ms=chosen.rtt_ms,
        distance_km=chosen.distance_km,
        alternatives=alts[:limit],
    )
