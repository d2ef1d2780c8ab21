"""Events: drains, undrains, freezes, joins, route changes; with `since` and a long poll."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from meshctl.api.deps import Ctl, Reader
from meshctl.api.params import RegionQuery, Since
from meshctl.api.problems import AUTH, problem_responses
from meshctl.wire import schemas as s

router = APIRouter(prefix="/v1", tags=["events"])


@router.get("/events", response_model=list[s.EventOut], responses=problem_responses(*AUTH, 422, 503))
async def events(
    ctl: Ctl,
    _: Reader,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[float, Query(ge=0, le=30, description="Long poll: wait up to this many seconds for one")] = 0,
    region: RegionQuery = None,
    kind: Annotated[s.EventKind | None, Query()] = None,
) -> list[s.EventOut]:
    """Events after `since` (an event id or an ISO time; empty: from the start), oldest first."""
    return await ctl.events(since, limit, wait, region, kind)
