"""What the dashboard needs beyond the resource routers: the event stream and "who am I".

`GET /v1/events/stream` is Server-Sent Events (`text/event-stream`): one `id:`/`data:` block
per event (the same JSON as `GET /v1/events`), a comment line every `KEEPALIVE_S` so proxies
keep the connection, and `retry:` for the reconnect delay. A client that reconnects sends the
last id it saw as `Last-Event-ID` (or `?since=`) and gets what it missed, then the new ones;
without either it gets only events from now on. It reads the controller's public `events`
long poll, as `GET /v1/events?wait=` does, so any replica can serve it.

`GET /v1/whoami` says what the caller's token may do, so a page shows the drain buttons only
to an operator (the API refuses a reader anyway).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from meshctl.api.deps import Ctl, Reader
from meshctl.api.params import EVENT_ID_PATTERN, RegionQuery
from meshctl.api.problems import AUTH, problem_responses
from meshctl.service.controller import Controller
from meshctl.wire import schemas as s

router = APIRouter(prefix="/v1", tags=["events"])

KEEPALIVE_S = 15.0
RETRY_MS = 2000
BATCH = 500


class WhoAmI(BaseModel):
    """The caller as the controller sees it (never the secret)."""

    kind: Literal["token", "node"]
    name: str
    scope: str
    can_drain: bool
    can_admin: bool


@router.get("/whoami", response_model=WhoAmI, tags=["tokens"], responses=problem_responses(*AUTH))
async def whoami(who: Reader) -> WhoAmI:
    """The name and scope of the caller's API token, and what it may change (403 for a node)."""
    return WhoAmI(
        kind=who.kind, name=who.name, scope=who.scope, can_drain=who.allows("operator"), can_admin=who.allows("admin")
    )


def sse(event: s.EventOut) -> bytes:
    """One event as an SSE block (its JSON holds no newline, so one `data:` line)."""
    return f"id: {event.id}\ndata: {event.model_dump_json()}\n\n".encode()


async def _latest_id(ctl: Controller, region: str | None, kind: str | None) -> int:
    newest = await ctl.events(None, 1, 0, region, kind)  # no `since`: the newest, oldest first
    return newest[-1].id if newest else 0


async def _events(
    request: Request, ctl: Controller, since: int | None, region: str | None, kind: str | None
) -> AsyncIterator[bytes]:
    last = await _latest_id(ctl, region, kind) if since is None else since
    yield f"retry: {RETRY_MS}\n: connected after event {last}\n\n".encode()  # from here on, nothing is missed
    while not await request.is_disconnected():
        found = await ctl.events(str(last), BATCH, KEEPALIVE_S, region, kind)
        if not found:
            yield b": keep-alive\n\n"
            continue
        for event in found:
            yield sse(event)
            last = event.id


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Server-Sent Events, one per event", "content": {"text/event-stream": {}}},
        **problem_responses(*AUTH, 422),
    },
)
async def stream(
    request: Request,
    ctl: Ctl,
    _: Reader,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", pattern=EVENT_ID_PATTERN, description="Resume after this event id (reconnect)"),
    ] = None,
    since: Annotated[
        str | None, Query(pattern=EVENT_ID_PATTERN, description="Start after this event id (empty: from now on)")
    ] = None,
    region: RegionQuery = None,
    kind: Annotated[s.EventKind | None, Query()] = None,
) -> StreamingResponse:
    """Events as Server-Sent Events, live; `Last-Event-ID` (or `since`) resumes after an id."""
    start = last_event_id or since
    return StreamingResponse(
        _events(request, ctl, int(start) if start else None, region, kind),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
