"""Probe reports from nodes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.routing import Route

from meshctl.api import schemas as s
from meshctl.api.deps import bearer
from meshctl.service.controller import Controller, Forbidden

router = APIRouter(tags=["reports"])


@router.post(
    "/v1/reports",
    response_model=s.ReportAck,
    status_code=202,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": s.ReportIn.model_json_schema()}}}},
)
async def post_report(request: Request) -> Response:
    """One window of a node's probe statistics; acknowledged only once durably written.

    Sent with the node's own credential; a window (seq) already accepted is answered with 409.
    """
    # served by `fast_route` (matched first); this declaration documents it in OpenAPI
    return await _post_report(request)


async def _post_report(request: Request) -> Response:
    """`POST /v1/reports` without dependency injection: the 1,000-reports/s path.

    Auth comes from the controller's in-memory token cache; the body is decoded once by msgspec
    (pydantic's ReportIn answers for anything msgspec does not take) and stored as the text it
    came as. Errors are raised to the app's handlers, so they read exactly as on any route.
    """
    ctl: Controller = request.app.state.controller
    who = await ctl.authenticate(bearer(request))
    if not who.allows("node"):
        raise Forbidden(f"this needs the node scope; the token has scope {who.scope}")
    raw = await request.body()
    try:
        report = s.parse_report(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from exc
    ack = await ctl.ingest(who, report, raw.decode())
    return Response(ack.model_dump_json(), status_code=202, media_type="application/json")


fast_route = Route("/v1/reports", _post_report, methods=["POST"], include_in_schema=False)
