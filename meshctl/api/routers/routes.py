"""Links, routes and placement: answered from memory."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.routing import Route

from meshctl.api.deps import Ctl, Reader, bearer
from meshctl.api.params import RegionPath, RegionQuery, parse_bool
from meshctl.api.problems import AUTH, problem_responses, service_error_response
from meshctl.api.responses import json_answer
from meshctl.service.controller import Controller
from meshctl.service.errors import Forbidden, Invalid, ServiceError
from meshctl.wire import schemas as s

router = APIRouter(prefix="/v1", tags=["routes"])

ETAG_HEADERS: dict[str, Any] = {
    "ETag": {"description": 'The route generation as an entity tag, `"g<generation>"`', "schema": {"type": "string"}},
}


LINKS_ETAG_HEADERS: dict[str, Any] = {
    "ETag": {
        "description": "A weak entity tag of the measurements and which of them are fresh (ages aside)",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/links",
    response_model=s.LinksOut,
    responses={
        200: {"headers": LINKS_ETAG_HEADERS},
        304: {"description": "Unchanged: If-None-Match names the current ETag", "headers": LINKS_ETAG_HEADERS},
        **problem_responses(*AUTH, 422),
    },
)
async def links(
    ctl: Ctl,
    _: Reader,
    request: Request,
    if_none_match: Annotated[str | None, Header(description="An ETag from an earlier answer")] = None,
) -> Response:
    """The measured links between regions, with their age and whether they are fresh.

    `If-None-Match` with the ETag of an earlier answer gets 304 while the measurements and
    their freshness are the same (ages aside: each answer's `age_s` is as of its `generated_at`).
    Answers are gzipped for clients that accept it.
    """
    tag = ctl.links_etag()
    headers = {"ETag": f"W/{tag}"}
    if s.etag_matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return json_answer(ctl.links_json(), request, headers)


@router.get(
    "/routes",
    response_model=s.RouteTableOut,
    responses={
        200: {"headers": ETAG_HEADERS},
        304: {"description": "Unchanged: If-None-Match names the current ETag", "headers": ETAG_HEADERS},
        **problem_responses(*AUTH, 422),
    },
)
async def routes(
    ctl: Ctl,
    _: Reader,
    request: Request,
    if_none_match: Annotated[str | None, Header(description="An ETag from an earlier answer")] = None,
    wait: Annotated[
        float,
        Query(ge=0, le=60, description="Long poll: with If-None-Match, hold up to this many seconds for a change"),
    ] = 0,
) -> Response:
    """The whole route table with its generation; `If-None-Match` and `wait` make it a long poll.
    Gzipped for clients that accept it.

    When If-None-Match names the current ETag and `wait` > 0, the answer waits until the
    generation changes (200 with the new table) or `wait` runs out (304).
    """
    generation = ctl.snapshot.generation
    if wait > 0 and s.etag_matches(if_none_match, s.routes_etag(generation)):
        await ctl.wait_changed(lambda: ctl.snapshot.generation != generation, wait)
    etag = s.routes_etag(ctl.snapshot.generation)
    if s.etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return json_answer(ctl.route_table_encoded(), request, {"ETag": etag})


@router.get(
    "/routes/{src}/{dst}",
    response_model=s.RouteExplained | s.RouteOut,
    responses={
        200: {
            "headers": {
                **ETAG_HEADERS,
                "X-Mesh-Generation": {"description": "The route generation", "schema": {"type": "integer"}},
            }
        },
        **problem_responses(*AUTH, 404, 422),
    },
)
async def route(
    src: RegionPath,
    dst: RegionPath,
    request: Request,
    explain: Annotated[bool, Query(description="Add the candidates and why this path")] = False,
) -> Response:
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
        explain = request.query_params.get("explain")
        want_explain = False if explain is None else parse_bool(explain)
        if want_explain is None:
            raise Invalid("explain: give true or false", field="explain")
        generation = ctl.snapshot.generation
        headers = {"ETag": s.routes_etag(generation), "X-Mesh-Generation": str(generation)}
        body = ctl.explain(src, dst).model_dump_json().encode() if want_explain else ctl.route_json(src, dst)
    except ServiceError as exc:
        return service_error_response(exc)
    return Response(body, media_type="application/json", headers=headers)


fast_route = Route("/v1/routes/{src}/{dst}", _fast_route, methods=["GET"], include_in_schema=False)


@router.get("/placement", response_model=s.PlacementOut, responses=problem_responses(*AUTH, 404, 422, 503))
async def placement(
    ctl: Ctl,
    _: Reader,
    near: RegionQuery = None,
    lat: Annotated[float | None, Query(ge=-90, le=90, description="With lon: place near this point")] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
) -> s.PlacementOut:
    """Best healthy region for a client near a region id or a lat/lon (give one of the two)."""
    return ctl.placement(near, lat, lon)
