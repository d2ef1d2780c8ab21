"""Parse the Skyplane inter-region RTT table (CSV text in, {(src, dst): avg RTT ms} out)."""

from __future__ import annotations

import csv
import io
import re

_ZONE = re.compile(r"^(gcp:[a-z0-9-]+?\d)-[a-z]$")


def region_of(name: str) -> str:
    """GCP rows name a zone (gcp:us-east4-a): strip the zone letter to get the region id."""
    m = _ZONE.match(name)
    return m.group(1) if m else name


def skyplane_samples(text: str) -> dict[tuple[str, str], list[float]]:
    """Every measured average RTT per directed region pair, PREMIUM tier rows only."""
    samples: dict[tuple[str, str], list[float]] = {}
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        if row.get("src_tier") != "PREMIUM" or row.get("dst_tier") != "PREMIUM":
            continue
        src, dst = region_of(row["src_region"]), region_of(row["dst_region"])
        if src == dst:
            continue
        samples.setdefault((src, dst), []).append(float(row["avg_rtt"]))
    return samples


def parse_skyplane_csv(text: str) -> dict[tuple[str, str], float]:
    """Average RTT per directed region pair, PREMIUM tier rows only, duplicates averaged."""
    return {k: sum(v) / len(v) for k, v in skyplane_samples(text).items()}
