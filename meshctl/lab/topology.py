"""Lab topologies: which regions, how many nodes each, and the RTT between every region pair.

A topology is a YAML file (the default one ships with the package):

    name: three-metros
    source: where the RTTs come from
    regions:                      # region id -> nodes in it (1 to 4)
      aws:us-east-1: {nodes: 2}
      gcp:us-east4: {nodes: 1}
    rtt_ms:                       # every region pair once, round-trip milliseconds
      - [aws:us-east-1, gcp:us-east4, 2.9]

Parsing and validation are pure; every error names the key that is wrong. `from_skyplane`
builds a topology from the Skyplane RTT table, which is how the default file was made:

    python -m meshctl.lab.topology ../shared/data/cloud-rtt-skyplane.csv aws:us-east-1 ... > topo.yaml
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meshctl.core.regions import InvalidRegionId, parse_region_id
from meshctl.core.rttdata import skyplane_samples

MAX_NODES_PER_REGION = 4
MAX_NODES = 40  # each node is a wireguard-go and a Python agent: keep a 2-core machine breathing


class TopologyError(ValueError):
    """A topology file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Topology:
    name: str
    source: str
    regions: dict[str, int]  # region id -> node count, in file order
    rtt_ms: dict[tuple[str, str], float]  # both orders of every pair

    def rtt(self, a: str, b: str) -> float:
        return 0.0 if a == b else self.rtt_ms[(a, b)]

    def node_regions(self) -> list[str]:
        """One entry per node, regions in file order: the lab's node i lives in entry i."""
        return [r for r, n in self.regions.items() for _ in range(n)]


def parse(data: Any, where: str = "topology") -> Topology:
    """Check a loaded YAML document and build the topology."""
    if not isinstance(data, dict):
        raise TopologyError(f"{where}: expected a mapping with 'regions' and 'rtt_ms'")
    unknown = set(data) - {"name", "source", "regions", "rtt_ms"}
    if unknown:
        raise TopologyError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: name, source, regions, rtt_ms)")
    raw_regions = data.get("regions")
    if not isinstance(raw_regions, dict) or len(raw_regions) < 2:
        raise TopologyError(f"{where}: regions: expected a mapping of at least 2 region ids to {{nodes: N}}")
    regions: dict[str, int] = {}
    for rid, spec in raw_regions.items():
        key = f"{where}: regions.{rid}"
        try:
            parse_region_id(str(rid))
        except InvalidRegionId as exc:
            raise TopologyError(f"{key}: {exc}") from exc
        nodes = (spec or {}).get("nodes", 1) if isinstance(spec, dict | None) else spec
        if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES_PER_REGION:
            raise TopologyError(f"{key}.nodes: must be a whole number from 1 to {MAX_NODES_PER_REGION}, got {nodes!r}")
        regions[str(rid)] = nodes
    total = sum(regions.values())
    if total > MAX_NODES:
        raise TopologyError(f"{where}: regions: {total} nodes in all; the lab runs at most {MAX_NODES} on one machine")
    raw_rtt = data.get("rtt_ms")
    if not isinstance(raw_rtt, list):
        raise TopologyError(f"{where}: rtt_ms: expected a list of [region, region, milliseconds]")
    rtt: dict[tuple[str, str], float] = {}
    for i, row in enumerate(raw_rtt):
        key = f"{where}: rtt_ms[{i}]"
        if not isinstance(row, list) or len(row) != 3:
            raise TopologyError(f"{key}: expected [region, region, milliseconds], got {row!r}")
        a, b, ms = str(row[0]), str(row[1]), row[2]
        for rid in (a, b):
            if rid not in regions:
                raise TopologyError(f"{key}: {rid!r} is not in regions")
        if a == b:
            raise TopologyError(f"{key}: a region pair needs two different regions, got {a!r} twice")
        if (a, b) in rtt:
            raise TopologyError(f"{key}: the pair {a} {b} is listed twice")
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms) or not 0 < ms <= 2000:
            raise TopologyError(f"{key}: RTT must be a number of milliseconds in (0, 2000], got {ms!r}")
        rtt[(a, b)] = rtt[(b, a)] = float(ms)
    for a, b in itertools.combinations(regions, 2):
        if (a, b) not in rtt:
            raise TopologyError(f"{where}: rtt_ms: no RTT for the pair {a} {b} (every pair is needed)")
    return Topology(str(data.get("name", "unnamed")), str(data.get("source", "")), regions, rtt)


def load_topology(path: Path | None = None) -> Topology:
    """Read a topology file; without a path, the default topology that ships with meshctl."""
    if path is None:
        text = resources.files("meshctl.lab").joinpath("default-topology.yaml").read_text()
        where = "default topology"
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise TopologyError(f"{path}: cannot read: {exc.strerror}") from exc
        where = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    return parse(data, where)


def dump(topo: Topology, header: str = "") -> str:
    """The topology as YAML, pairs in region order, with an optional comment header."""
    order = list(topo.regions)
    rows = [f"  - [{a}, {b}, {topo.rtt(a, b):.1f}]" for a, b in itertools.combinations(order, 2)]
    lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []
    source = yaml.safe_dump(topo.source, width=10**6, default_style="'").strip()  # quoted: no "..." end marker
    lines += [f"name: {topo.name}", f"source: {source}", "regions:"]
    lines += [f"  {r}: {{nodes: {n}}}" for r, n in topo.regions.items()]
    lines += ["rtt_ms:", *rows]
    return "\n".join(lines) + "\n"


def from_skyplane(csv_text: str, regions: dict[str, int], name: str, source: str) -> Topology:
    """RTT per pair: the median of the measured average RTT in both directions, PREMIUM tier."""
    measured = skyplane_samples(csv_text)
    rtt_rows = []
    for a, b in itertools.combinations(regions, 2):
        got = measured.get((a, b), []) + measured.get((b, a), [])
        if not got:
            raise TopologyError(f"the RTT table has no PREMIUM measurement between {a} and {b}")
        rtt_rows.append([a, b, round(statistics.median(got), 1)])
    return parse(
        {"name": name, "source": source, "regions": {r: {"nodes": n} for r, n in regions.items()}, "rtt_ms": rtt_rows}
    )


def main(argv: list[str] | None = None) -> None:
    """Print a topology built from a Skyplane CSV: CSV REGION[=NODES] ..."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        sys.exit("usage: python -m meshctl.lab.topology SKYPLANE_CSV REGION[=NODES] REGION[=NODES] ...")
    regions = {r.split("=")[0]: int(r.split("=")[1]) if "=" in r else 1 for r in args[1:]}
    source = (
        "Skyplane project (github.com/skyplane-project/skyplane, Apache-2.0), profiles/latency.csv, April 2022: "
        "ping between VMs in each region; RTT = median of avg_rtt over both directions, PREMIUM tier"
    )
    topo = from_skyplane(Path(args[0]).read_text(), regions, "custom", source)
    print(dump(topo), end="")


if __name__ == "__main__":
    main()
