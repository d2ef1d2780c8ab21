"""Path and query parameters shared by the routers, with their checks visible in OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator

from meshctl.core.regions import REGION_ID_PATTERN

REGION_DOC = "A region id, `<cloud>:<cloud-region>` in lower case, e.g. aws:us-east-1"
RegionPath = Annotated[str, Path(pattern=REGION_ID_PATTERN, max_length=64, description=REGION_DOC)]
RegionQuery = Annotated[str | None, Query(pattern=REGION_ID_PATTERN, max_length=64, description=REGION_DOC)]

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def parse_bool(value: str) -> bool | None:
    """A query flag as pydantic reads one (`true`, `1`, `yes`, ... in any case); None if it is none."""
    low = value.lower()
    return True if low in _TRUE else False if low in _FALSE else None


EVENT_ID_PATTERN = r"^[0-9]{0,18}$"


def _since(value: str | None) -> str | None:
    """'' -> None (from the start); an event id as is; an ISO 8601 time in the form the service reads."""
    if not value:
        return None
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return value
    text = value.strip()
    if len(text) > 10 and text[10] in "tT ":
        text = text[:10] + "T" + text[11:]
    text = text.upper().replace("Z", "+00:00")
    if len(text) >= 19 and text[17:19] == "60":  # a leap second (RFC 3339 allows it): the second before
        text = text[:17] + "59" + text[19:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("give an event id, an ISO 8601 time, or nothing for the start") from None
    return parsed.isoformat()


Since = Annotated[
    str | None,
    AfterValidator(_since),
    Query(
        description="Only events after this: an event id, an ISO 8601 (RFC 3339) time, or empty for the start",
        json_schema_extra={
            "anyOf": [{"type": "string", "pattern": EVENT_ID_PATTERN}, {"type": "string", "format": "date-time"}]
        },
    ),
]
