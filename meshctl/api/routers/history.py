"""Link history: a region pair's rollups (1-minute buckets for a day, 1-hour for 30 days)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator

from meshctl.api.deps import Ctl, Reader
from meshctl.api.params import RegionPath
from meshctl.api.problems import AUTH, problem_responses
from meshctl.service import history
from meshctl.wire import schemas as s

router = APIRouter(prefix="/v1", tags=["routes"])

HistorySince = Annotated[
    str,
    AfterValidator(history.check_since),
    Query(
        max_length=40,
        description="From when: a duration back from now (`15m`, `24h`, `7d`, `2w`) or an ISO 8601 time",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "pattern": history.DURATION_PATTERN},
                {"type": "string", "format": "date-time"},
            ]
        },
    ),
]
HistoryStep = Annotated[
    Literal["1m", "1h", "auto"],
    Query(description="Bucket size: 1m (kept a day), 1h (kept 30 days), or auto (1m up to a day back, else 1h)"),
]


@router.get(
    "/links/{src}/{dst}/history",
    response_model=s.LinkHistoryOut,
    responses=problem_responses(*AUTH, 404, 422),
)
async def link_history(
    src: RegionPath, dst: RegionPath, ctl: Ctl, _: Reader, since: HistorySince = "24h", step: HistoryStep = "auto"
) -> s.LinkHistoryOut:
    """RTT (min, p50, p90, max), loss and jitter of one directed link over time, from the store.

    Minute buckets hold percentiles of the link's window medians; hour buckets are rolled up from
    the minutes (p50 of the minute p50s, p90 of the minute p90s). Any replica answers.
    """
    return await history.history_out(ctl, src, dst, since, step)
