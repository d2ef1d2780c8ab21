"""Region ids: `<cloud>:<cloud-region>`, the one key used everywhere."""

from __future__ import annotations

import math
import re

REGION_ID_PATTERN = r"^([a-z][a-z0-9]*):([a-z0-9][a-z0-9-]*)$"
_REGION_ID = re.compile(REGION_ID_PATTERN)


class InvalidRegionId(ValueError):
    """A string that is not `<cloud>:<cloud-region>`."""


def parse_region_id(region_id: str) -> tuple[str, str]:
    """Split `aws:us-east-1` into ("aws", "us-east-1"); any cloud name is accepted."""
    m = _REGION_ID.match(region_id) if isinstance(region_id, str) and len(region_id) <= 64 else None
    if m is None:
        raise InvalidRegionId(
            f"{region_id!r} is not a region id: expected <cloud>:<cloud-region> in lower case, e.g. aws:us-east-1"
        )
    return m.group(1), m.group(2)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))
