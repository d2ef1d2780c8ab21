"""How meshctl/api/ui/land.svg was made (kept for provenance; not a test, not run by one).

Input: `land-110m.json` of the npm package world-atlas 2.0.2 (TopoJSON of Natural Earth's
1:110m land, public domain; the package is ISC): `npm pack world-atlas@2.0.2`. Output: one SVG
path in an equirectangular projection (viewBox 0 0 360 180, x = lon + 180, y = 90 - lat),
coordinates rounded to 0.1 degree, rings that cross the antimeridian unwrapped and drawn
again shifted by 360 degrees (the viewBox clips them).

    python tests/ui/make_land_svg.py package/land-110m.json meshctl/api/ui/land.svg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Point = tuple[float, float]


def decode_arcs(topo: dict[str, Any]) -> list[list[Point]]:
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    arcs: list[list[Point]] = []
    for arc in topo["arcs"]:
        x = y = 0
        pts: list[Point] = []
        for dx, dy in arc:
            x += dx
            y += dy
            pts.append((x * sx + tx, y * sy + ty))
        arcs.append(pts)
    return arcs


def ring(arcs: list[list[Point]], indexes: list[int]) -> list[Point]:
    out: list[Point] = []
    for i in indexes:
        pts = arcs[i] if i >= 0 else arcs[~i][::-1]
        out.extend(pts if not out else pts[1:])
    return out


def unwrap(points: list[Point]) -> list[Point]:
    out: list[Point] = []
    shift = 0.0
    for lon, lat in points:
        if out and abs(lon + shift - out[-1][0]) > 180:
            shift += 360 if out[-1][0] > lon + shift else -360
        out.append((lon + shift, lat))
    return out


def path(points: list[Point], offset: float) -> str | None:
    seg: list[Point] = []
    for lon, lat in points:
        p = (round(lon + offset + 180, 1), round(90 - lat, 1))
        if not seg or p != seg[-1]:
            seg.append(p)
    return "M" + " ".join(f"{x:g},{y:g}" for x, y in seg) + "Z" if len(seg) >= 3 else None


def land_svg(topo: dict[str, Any]) -> str:
    arcs = decode_arcs(topo)
    polygons: list[list[list[int]]] = []
    for g in topo["objects"]["land"]["geometries"]:
        polygons.extend([g["arcs"]] if g["type"] == "Polygon" else g["arcs"])
    d: list[str] = []
    for polygon in polygons:
        for indexes in polygon:
            pts = unwrap(ring(arcs, indexes))
            xs = [p[0] for p in pts]
            offsets = [0.0] + ([-360.0] if max(xs) > 180 else []) + ([360.0] if min(xs) < -180 else [])
            d.extend(p for off in offsets if (p := path(pts, off)))
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 180" preserveAspectRatio="none">'
        "<!-- land: Natural Earth 1:110m (public domain), via world-atlas 2.0.2 (ISC); equirectangular -->"
        '<path fill="#dfe4ea" stroke="#b8c0cc" stroke-width="0.15" d="' + "".join(d) + '"/></svg>\n'
    )


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.write_text(land_svg(json.loads(source.read_text())))
