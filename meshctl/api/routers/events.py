"""Events: drains, undrains, freezes, joins, route changes; with `since` and a long poll."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from meshctl.api import schemas as s
from meshctl.api.deps import Ctl, Reader

router = APIRouter(prefix="/v1", tags=["events"])


@router.get("/events", response_model=list[s.EventOut])
async def events(
    ctl: Ctl,
    _: Reader,
    since: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
    region: str | None = None,
    kind: str | None = None,
) -> list[s.EventOut]:
    """Events after `since` (an event id or an ISO time), oldest first; `wait` long-polls."""
    return await ctl.events(since, limit, wait, region, kind)
