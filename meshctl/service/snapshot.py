"""The snapshot route and link queries are answered from: a frozen value, built whole and replaced.

The leader computes one per tick; a new generation is published (as the JSON body below) only when
routes, drains or region states change. Followers and every start-up adopt the newest published one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import numpy as np

from meshctl.core.links import LinkTable, RegionLink
from meshctl.core.routing import RouteTable


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Routes, links and region states of one moment. Never mutated: `with_generation` copies.

    The arrays are not copied on the way in: whoever builds a snapshot hands them over.
    """

    generation: int = 0
    computed_at: float | None = None
    table: RouteTable | None = None
    cost: np.ndarray | None = None
    rtt: np.ndarray | None = None
    drained: frozenset[str] = frozenset()
    links: Mapping[tuple[str, str], RegionLink] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: bool = False
    alerts: tuple[str, ...] = ()

    def with_generation(self, generation: int) -> Snapshot:
        return replace(self, generation=generation)

    def knows(self, src: str, dst: str) -> bool:
        """Both ends are regions of the route table."""
        return self.table is not None and src in self.table.index and dst in self.table.index


def to_body(snap: Snapshot) -> dict[str, Any]:
    """Serialise a snapshot for publication (JSON: inf becomes null)."""
    assert snap.table is not None and snap.cost is not None and snap.rtt is not None
    t = snap.table
    return {
        "regions": list(t.regions),
        "cost": _flat(snap.cost),
        "rtt": _flat(snap.rtt),
        "best_cost": _flat(t.cost),
        "best_rtt": _flat(t.rtt),
        "relays": t.relays.astype(int).ravel().tolist(),
        "drained": sorted(snap.drained),
        "links": _link_bodies(LinkTable.of(snap.links)),
        "states": snap.states,
        "health": snap.health,
        "frozen": snap.frozen,
        "alerts": list(snap.alerts),
    }


class _LinkBody(msgspec.Struct):
    """One published link (the store's JSON encoder, msgspec, writes it as an object)."""

    src: str
    dst: str
    rtt_p50_ms: float | None
    rtt_p90_ms: float | None
    jitter_ms: float | None
    loss_percent: float
    updated_at: float
    samples: int


def _link_bodies(table: LinkTable) -> list[_LinkBody]:
    """The links for publication, read from the columns (no RegionLink is made): RTTs and jitter
    rounded to 1 us, None where infinite or NaN."""
    names = table.names
    measured = [_rounded(table.column(k), 3) for k in (LinkTable.P50, LinkTable.P90, LinkTable.JITTER)]
    return list(
        map(
            _LinkBody,
            map(names.__getitem__, table.src.tolist()),
            map(names.__getitem__, table.dst.tolist()),
            *measured,
            table.column(LinkTable.LOSS).tolist(),
            table.column(LinkTable.UPDATED_AT).tolist(),
            table.column(LinkTable.SAMPLES).astype(np.int64).tolist(),
        )
    )


def from_body(generation: int, computed_at: float, body: dict[str, Any]) -> Snapshot:
    """A snapshot from a published body (the inverse of `to_body`)."""
    regions = tuple(body["regions"])
    r = len(regions)
    relays = np.asarray(body["relays"], dtype=np.int32).reshape(r, r, 2) if r else np.zeros((0, 0, 2), np.int32)
    table = RouteTable(
        regions=regions,
        index={x: i for i, x in enumerate(regions)},
        cost=_matrix(body["best_cost"], r),
        rtt=_matrix(body["best_rtt"], r),
        relays=relays,
    )
    return Snapshot(
        generation=generation,
        computed_at=computed_at,
        table=table,
        cost=_matrix(body["cost"], r),
        rtt=_matrix(body["rtt"], r),
        drained=frozenset(body.get("drained", [])),
        links={(lk["src"], lk["dst"]): _link(lk) for lk in body.get("links", [])},
        states=dict(body.get("states", {})),
        health=dict(body.get("health", {})),
        frozen=bool(body.get("frozen", False)),
        alerts=tuple(body.get("alerts", [])),
    )


def _link(body: dict[str, Any]) -> RegionLink:
    """A published link; RTTs and jitter published as null (infinite or NaN) come back infinite."""
    unknown = {k: math.inf for k in ("rtt_p50_ms", "rtt_p90_ms", "jitter_ms") if body.get(k) is None}
    return RegionLink(**{**body, **unknown})


def _flat(m: np.ndarray) -> list[float | None]:
    """Row-major values rounded to 0.1 µs; None where infinite or NaN (JSON has neither)."""
    return _rounded(m.ravel(), 4)


def _rounded(values: np.ndarray, decimals: int) -> list[float | None]:
    vals = np.round(values.astype(float), decimals)
    out: list[float | None] = vals.tolist()
    for k in np.flatnonzero(~np.isfinite(vals)).tolist():
        out[k] = None
    return out


def _matrix(values: list[float | None], r: int) -> np.ndarray:
    arr = np.array([math.inf if v is None else v for v in values], dtype=np.float64)
    return arr.reshape(r, r) if r else np.zeros((0, 0))
