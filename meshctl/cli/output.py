"""Rendering for people (Rich tables that fit 80 columns) and for scripts (JSON, YAML).

Rich and PyYAML are imported inside the functions that use them: importing this module is
cheap, so `meshctl --help` and `-o json` never pay for them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

CLOUD_LETTER = {"aws": "a", "gcp": "g", "azure": "z"}
_DIRECTIONS = re.compile(r"(north|south|east|west|central)")
STATE_STYLE = {"drained": "bold red", "degraded": "yellow", "active": "green"}


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def abbreviate(region_id: str) -> str:
    """aws:us-east-1 -> a.ue1, gcp:europe-west1 -> g.ew1, azure:westeurope -> z.weu."""
    cloud, _, name = region_id.partition(":")
    letter = CLOUD_LETTER.get(cloud, cloud[:1])
    if "-" in name:
        parts = []
        for part in name.split("-"):
            m = re.match(r"([a-z]*)(\d*)$", part)
            word, digits = (m.group(1), m.group(2)) if m else (part, "")
            parts.append((word[:1] if word else "") + digits)
        short = "".join(parts)
    else:
        m = re.match(r"(.*?)(\d*)$", name)
        word, digits = (m.group(1), m.group(2)) if m else (name, "")
        chunks = [c for c in _DIRECTIONS.split(word) if c]
        short = "".join(c[:1] if _DIRECTIONS.fullmatch(c) else c[:2] for c in chunks) + digits
    return f"{letter}.{short}"


def abbreviations(region_ids: Sequence[str]) -> dict[str, str]:
    """Unique short names; a clash gets a number."""
    out: dict[str, str] = {}
    used: dict[str, int] = {}
    for rid in region_ids:
        short = abbreviate(rid)
        if short in used:
            used[short] += 1
            short = f"{short}{used[short]}"
        else:
            used[short] = 1
        out[rid] = short
    return out


def ago(iso: str | None) -> str:
    if not iso:
        return "-"
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    secs = (datetime.now(UTC) - then).total_seconds()
    if secs < 90:
        return f"{secs:.0f}s ago"
    if secs < 5400:
        return f"{secs / 60:.0f}m ago"
    if secs < 172800:
        return f"{secs / 3600:.0f}h ago"
    return f"{secs / 86400:.0f}d ago"


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", header_style="bold", expand=False, pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[x if isinstance(x, Text) else Text("-" if x is None else str(x)) for x in r])
    return t


def state_text(state: str) -> Text:
    from rich.text import Text

    return Text(state, style=STATE_STYLE.get(state, ""))


def status_view(st: dict[str, Any]) -> RenderableType:
    """One screen, read in five seconds: trouble first."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = []
    by = st["regions_by_state"]
    head = Text()
    head.append("mesh ", style="bold")
    head.append(f"generation {st['generation']}")
    age = st.get("recompute_age_s")
    head.append(f" · recomputed {age:.1f}s ago" if age is not None else " · not computed yet")
    head.append(f" · nodes {st['nodes_up']} up / {st['nodes_down']} down")
    if st.get("leader"):
        head.append(f" · leader {st['leader']}")
    parts.append(head)
    counts = Text("regions: ")
    for state in ("drained", "degraded", "active"):
        counts.append(f"{by.get(state, 0)} {state}", style=STATE_STYLE[state] if by.get(state) else "")
        counts.append("  ")
    parts.append(counts)
    if st.get("frozen"):
        parts.append(Text("FROZEN: reports from most regions stopped; draining nothing", style="bold red"))
    for alert in st.get("alerts", []):
        parts.append(Text(f"ALERT: {alert}", style="bold red"))
    rows = []
    for r in st["regions"]:
        drain = r.get("drain") or {}
        why = drain.get("reason") or (r.get("health") or {}).get("reason") if r["state"] != "active" else ""
        since = ago(drain.get("since")) if drain else ""
        kind = f" ({drain['kind']})" if drain else ""
        rows.append([r["id"], state_text(r["state"] + kind), f"{r['nodes_up']}/{r['nodes_total']}", since, why or ""])
    parts.append(table(None, ["region", "state", "nodes", "since", "why"], rows))
    replicas = st.get("replicas") or []
    if len(replicas) > 1:
        parts.append(
            table(
                None,
                ["replica", "leader", "generation", "lag"],
                [
                    [x["replica_id"], "yes" if x["is_leader"] else "", x["generation"], x["lag_generations"]]
                    for x in replicas
                ],
            )
        )
    return Group(*parts)


def _cell(link: dict[str, Any] | None) -> Text:
    from rich.text import Text

    if link is None:
        return Text("·", style="dim")
    rtt, loss = link["rtt_p50_ms"], link["loss_percent"]
    if rtt is None or rtt < 0:
        return Text("down", style="bold red")
    shown = f"{rtt:.0f}" if rtt >= 10 else f"{rtt:.1f}"
    style = "green" if rtt < 50 else "yellow" if rtt < 150 else "red"
    if not link.get("fresh", True):
        style = "dim"
    if loss >= 1:
        return Text(f"{shown}!", style="bold magenta")
    return Text(shown, style=style)


def matrix_view(links: list[dict[str, Any]], regions: Sequence[str] | None = None, width: int = 80) -> RenderableType:
    """The RTT matrix (p50 ms, rows = from, columns = to), grouped by cloud, paged to fit the width."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    ids = sorted(
        set(regions or []) | {x["src"] for x in links} | {x["dst"] for x in links},
        key=lambda r: (r.split(":", 1)[0], r),
    )
    short = abbreviations(ids)
    by_pair = {(x["src"], x["dst"]): x for x in links}
    label_w = max([len(s) for s in short.values()] + [len("from\\to")])
    cell_w = max([len(s) for s in short.values()] + [5])
    per_page = max(1, (width - label_w - 2) // (cell_w + 1))
    parts: list[RenderableType] = []
    for start in range(0, len(ids), per_page):
        cols = ids[start : start + per_page]
        t = Table(show_header=True, header_style="bold", box=None, pad_edge=False, padding=(0, 1, 0, 0))
        t.add_column("from\\to", justify="left", no_wrap=True, width=label_w)
        for c in cols:
            t.add_column(short[c], justify="right", no_wrap=True, width=cell_w)
        last_cloud = None
        for r in ids:
            cloud = r.split(":", 1)[0]
            if last_cloud is not None and cloud != last_cloud:
                t.add_section()
            last_cloud = cloud
            cells = [Text("-", style="dim") if r == c else _cell(by_pair.get((r, c))) for c in cols]
            t.add_row(Text(short[r], style="bold"), *cells)
        if len(ids) > per_page:
            parts.append(Text(f"columns {start + 1}-{start + len(cols)} of {len(ids)}", style="dim"))
        parts.append(t)
    legend = Text("p50 RTT ms: ", style="dim")
    legend.append("<50 ", style="green")
    legend.append("<150 ", style="yellow")
    legend.append(">=150 ", style="red")
    legend.append("N! loss>=1% ", style="bold magenta")
    legend.append("· no data", style="dim")
    parts.append(legend)
    keys = [f"{short[r]}={r}" for r in ids]
    lines: list[str] = []
    line = ""
    for k in keys:
        if len(line) + len(k) + 2 > width and line:
            lines.append(line)
            line = ""
        line += ("  " if line else "") + k
    if line:
        lines.append(line)
    parts.append(Text("\n".join(lines), style="dim"))
    return Group(*parts)


def explain_view(r: dict[str, Any]) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    head = Text()
    head.append(" -> ".join(r["path"]) if r["reachable"] else "unreachable", style="bold")
    if r["reachable"]:
        head.append(f"   est. RTT {r['rtt_ms']:.1f} ms, cost {r['cost']:.1f}, generation {r['generation']}")
    parts: list[RenderableType] = [head]
    if "reason" in r:
        parts.append(Text(f"why: {r['reason']}"))
        w = r["weights"]
        parts.append(
            Text(
                f"cost = rtt_p50 + {w['loss_weight']} x loss% + {w['jitter_weight']} x jitter, "
                f"+{w['relay_penalty_ms']} ms per relay; hysteresis {w['hysteresis_ratio']:.0%}",
                style="dim",
            )
        )
        rows = [
            [
                ("> " if c["chosen"] else "  ") + " -> ".join(c["path"]),
                "-" if c["cost"] is None else f"{c['cost']:.1f}",
                "-" if c["rtt_ms"] is None else f"{c['rtt_ms']:.1f}",
                "yes" if c["usable"] else "no",
                c.get("note") or "",
            ]
            for c in r["candidates"]
        ]
        parts.append(table("candidates", ["path", "cost", "rtt ms", "usable", "note"], rows))
    return Group(*parts)


def via(path: list[str] | None) -> str:
    """A path in few characters: 'direct', 'via gcp:us-east4', or 'unreachable'."""
    if not path:
        return "unreachable"
    return "direct" if len(path) <= 2 else "via " + ", ".join(path[1:-1])


def drain_preview_view(p: dict[str, Any]) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = [Text(f"dry run: {p['summary']} (nothing changed)", style="bold")]
    if p["routes_changed"]:
        parts.append(
            table(
                "routes that would move",
                ["from", "to", "now", "after"],
                [[c["src"], c["dst"], via(c["before"]), via(c["after"])] for c in p["routes_changed"]],
            )
        )
    if p["placements_changed"]:
        parts.append(
            table(
                "placements that would go elsewhere",
                ["clients near", "now", "after"],
                [[c["near"], c["before"] or "-", c["after"] or "none"] for c in p["placements_changed"]],
            )
        )
    return Group(*parts)


def console(stderr: bool = False, width: int | None = None) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int = 30) -> str:
    """Values as block characters, oldest first, squeezed into `width` columns (the largest value of
    each column, so a spike shows); a gap where there is no value."""
    if not values:
        return ""
    cols: list[float | None] = []
    per = max(1, -(-len(values) // width))
    for i in range(0, len(values), per):
        chunk = [v for v in values[i : i + per] if v is not None]
        cols.append(max(chunk) if chunk else None)
    present = [v for v in cols if v is not None]
    if not present:
        return " " * len(cols)
    lo, hi = min(present), max(present)
    span = hi - lo
    return "".join(" " if v is None else SPARKS[0 if span <= 0 else min(7, int((v - lo) / span * 8))] for v in cols)


def history_view(h: dict[str, Any]) -> RenderableType:
    """A link's history in four lines: each series' range, last value and sparkline."""
    points = h["points"]
    first = points[0]["at"][:16].replace("T", " ") if points else "-"
    last = points[-1]["at"][:16].replace("T", " ") if points else "-"
    title = f"{h['src']} -> {h['dst']}: {len(points)} buckets of {h['step']}, {first} .. {last} UTC"
    rows = []
    for name, key in (("rtt p50 ms", "rtt_p50_ms"), ("rtt p90 ms", "rtt_p90_ms"), ("loss %", "loss_percent"),
                      ("jitter ms", "jitter_ms")):  # fmt: skip
        series = [p[key] for p in points]
        present = [v for v in series if v is not None]
        fmt = "{:.1f}".format
        rows.append(
            [
                name,
                fmt(min(present)) if present else None,
                fmt(sorted(present)[len(present) // 2]) if present else None,
                fmt(max(present)) if present else None,
                fmt(present[-1]) if present else None,
                sparkline(series),
            ]
        )
    return table(title, ["series", "min", "median", "max", "last", "oldest .. newest"], rows)
