"""Links, routes and placement: answered from memory."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Route

from meshctl.api import schemas as s
from meshctl.api.deps import Ctl, Reader, bearer
from meshctl.service.controller import Controller, Forbidden, ServiceError

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
async def route(src: str, dst: str, request: Request, explain: bool = False) -> Response:
    """The path from src to dst; `?explain=true` adds the candidates and why this one.

    Served by `fast_route` (matched first); this declaration documents it in OpenAPI.
    """
    return await _fast_route(request)


async def _fast_route(request: Request) -> Response:
    """`GET /v1/routes/{src}/{dst}` without dependency injection: the 10k-requests/s path."""
    ctl: Controller = request.app.state.controller
    try:
        who = await ctl.authenticate(bearer(request))
        if not who.allows("reader"):
            raise Forbidden("this needs the reader scope")
        src, dst = request.path_params["src"], request.path_params["dst"]
        generation = ctl.snapshot.generation
        headers = {"ETag": f'"g{generation}"', "X-Mesh-Generation": str(generation)}
        if request.query_params.get("explain", "false").lower() in ("1", "true", "yes"):
            body = ctl.explain(src, dst).model_dump_json().encode()
        else:
            body = ctl.route_json(src, dst)
    except ServiceError as exc:
        extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status, headers=extra)
    return Response(body, media_type="application/json", headers=headers)


fast_route = Route("/v1/routes/{src}/{dst}", _fast_route, methods=["GET"], include_in_schema=False)


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
