"""Links, routes and placement: answered from memory."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from meshctl.api import schemas as s
from meshctl.api.deps import Ctl, Reader

router = APIRouter(prefix="/v1", tags=["routes"])


@router.get("/links", response_model=s.LinksOut)
async def links(ctl: Ctl, _: Reader) -> s.LinksOut:
    return ctl.links_out()


def _etag(ctl: Ctl) -> str:
    return f'"g{ctl.snapshot.generation}"'


@router.get("/routes", response_model=s.RouteTableOut)
async def routes(
    ctl: Ctl, _: Reader, response: Response, if_none_match: Annotated[str | None, Header()] = None
) -> s.RouteTableOut | Response:
    etag = _etag(ctl)
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return ctl.route_table_out()


@router.get("/routes/{src}/{dst}", response_model=s.RouteExplained | s.RouteOut)
async def route(src: str, dst: str, ctl: Ctl, _: Reader, explain: bool = False) -> Response:
    """The path from src to dst; `?explain=true` adds the candidates and why this one."""
    headers = {"ETag": _etag(ctl), "X-Mesh-Generation": str(ctl.snapshot.generation)}
    if explain:
        return Response(ctl.explain(src, dst).model_dump_json(), media_type="application/json", headers=headers)
    return Response(ctl.route_json(src, dst), media_type="application/json", headers=headers)


@router.get("/placement", response_model=s.PlacementOut)
async def placement(
    ctl: Ctl,
    _: Reader,
    near: str | None = None,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
) -> s.PlacementOut:
    """Best healthy region for a client near a region id or a lat/lon."""
    return ctl.placement(near, lat, lon)
