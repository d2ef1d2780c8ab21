"""Probe reports from nodes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from meshctl.api import schemas as s
from meshctl.api.deps import Ctl, Node

router = APIRouter(tags=["reports"])


@router.post(
    "/v1/reports",
    response_model=s.ReportAck,
    status_code=202,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": s.ReportIn.model_json_schema()}}}},
)
async def post_report(request: Request, ctl: Ctl, who: Node) -> s.ReportAck:
    """One window of a node's probe statistics; acknowledged only once durably written.

    The body is parsed once, in pydantic's Rust core, and stored as the text it came as.
    """
    raw = await request.body()
    try:
        report = s.ReportIn.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        raise RequestValidationError(errors) from exc
    return await ctl.ingest(who, report, raw.decode())
