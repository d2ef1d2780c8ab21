"""Events: drains, undrains, freezes, joins, route changes; with `since` and a long poll."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import TypeAdapter

from meshctl.api.deps import Ctl, Reader
from meshctl.api.params import RegionQuery, Since
from meshctl.api.problems import AUTH, problem_responses
from meshctl.api.responses import json_answer
from meshctl.wire import schemas as s

router = APIRouter(prefix="/v1", tags=["events"])
_EVENTS = TypeAdapter(list[s.EventOut])


@router.get("/events", response_model=list[s.EventOut], responses=problem_responses(*AUTH, 422, 503))
async def events(
    ctl: Ctl,
    _: Reader,
    request: Request,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[float, Query(ge=0, le=30, description="Long poll: wait up to this many seconds for one")] = 0,
    region: RegionQuery = None,
    kind: Annotated[s.EventKind | None, Query()] = None,
) -> Response:
    """Events after `since` (an event id or an ISO time; empty: from the start), oldest first.
    Gzipped for clients that accept it."""
    return json_answer(_EVENTS.dump_json(await ctl.events(since, limit, wait, region, kind)), request)
