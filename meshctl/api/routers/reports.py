"""Probe reports from nodes."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.routing import Route

from meshctl.api.deps import bearer
from meshctl.api.problems import AUTH, BODY, problem_responses
from meshctl.service import report_codec as codec
from meshctl.service.controller import Controller
from meshctl.service.errors import Forbidden
from meshctl.wire import schemas as s

router = APIRouter(tags=["reports"])


@router.post(
    "/v1/reports",
    response_model=s.ReportAck,
    status_code=202,
    responses=problem_responses(*AUTH, 409, *BODY, 503),
)
async def post_report(body: s.ReportIn, request: Request) -> Response:
    """One window of a node's probe statistics; acknowledged only once durably written.

    Sent with the node's own credential; a window (seq) already accepted is answered with 409.
    A node may send `X-Mesh-Sent-At` (its clock, epoch seconds); the answer carries
    `X-Mesh-Clock-Offset-S` (its clock minus the controller's) once an offset is known, and a
    window from a clock off by more than the tolerance is kept in the controller's time.
    """
    # served by `fast_route` (matched first); this declaration documents it in OpenAPI (`body`
    # is declared for the schema only: the fast route decodes the raw body itself)
    return await _post_report(request)


async def _post_report(request: Request) -> Response:
    """`POST /v1/reports` without dependency injection: the 1,000-reports/s path.

    Auth comes from the controller's in-memory token cache; the body is decoded once by msgspec
    (pydantic's ReportIn answers for anything msgspec does not take); its columns are stored
    (packed: meshctl/store/reports.py), not the text. Errors are raised to the app's handlers,
    so they read exactly as on any route.
    """
    ctl: Controller = request.app.state.controller
    who = await ctl.authenticate(bearer(request))
    if not who.allows("node"):
        raise Forbidden(f"this needs the node scope; the token has scope {who.scope}")
    raw = await request.body()
    try:
        report = codec.parse_report(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from exc
    ack = await ctl.ingest(who, report, sent_at=_sent_at(request))
    offset = ctl.clock_offset(who.id)
    headers = None if offset is None else {CLOCK_OFFSET_HEADER: f"{offset:.3f}"}
    return Response(ack.model_dump_json(), status_code=202, media_type="application/json", headers=headers)


SENT_AT_HEADER = "X-Mesh-Sent-At"  # the node's clock (epoch seconds) when it sent the report
CLOCK_OFFSET_HEADER = "X-Mesh-Clock-Offset-S"  # the node's clock minus the controller's, as measured


def _sent_at(request: Request) -> float | None:
    """The node's send time, if it said and it is a finite number (anything else is ignored)."""
    value = request.headers.get(SENT_AT_HEADER)
    try:
        sent = float(value) if value is not None else None
    except ValueError:
        return None
    return sent if sent is not None and math.isfinite(sent) else None


fast_route = Route("/v1/reports", _post_report, methods=["POST"], include_in_schema=False)
