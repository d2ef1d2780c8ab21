"""Probe reports from nodes."""

from __future__ import annotations

from fastapi import APIRouter

from meshctl.api import schemas as s
from meshctl.api.deps import Ctl, Node

router = APIRouter(tags=["reports"])


@router.post("/v1/reports", response_model=s.ReportAck, status_code=202)
async def post_report(body: s.ReportIn, ctl: Ctl, who: Node) -> s.ReportAck:
    """One window of a node's probe statistics; acknowledged only once durably written."""
    return await ctl.ingest(who, body)
