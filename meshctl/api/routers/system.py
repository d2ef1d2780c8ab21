"""Liveness, metrics and the one-screen status."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from meshctl.api.deps import Ctl, Reader
from meshctl.api.problems import AUTH, problem_responses
from meshctl.api.responses import json_answer
from meshctl.wire import schemas as s

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=s.HealthOut)
async def healthz(ctl: Ctl) -> s.HealthOut:
    """Liveness: always 200 while the process serves; says whether the database answers."""
    return s.HealthOut(
        ok=True,
        store="up" if ctl.store_ok else "down",
        leader=ctl.is_leader,
        replica_id=ctl.settings.replica_id,
        generation=ctl.snapshot.generation,
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format", "content": {"text/plain": {}}}},
)
async def metrics(ctl: Ctl) -> Response:
    """Prometheus metrics (text exposition format 0.0.4); no token needed, like /healthz."""
    return Response(await ctl.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/status", response_model=s.StatusOut, responses=problem_responses(*AUTH))
async def status(ctl: Ctl, _: Reader, request: Request) -> Response:
    """The one-screen status: generation, regions by state, nodes, leader, replicas, alerts
    (gzipped for clients that accept it: the dashboard asks every 3 s)."""
    return json_answer(ctl.status().model_dump_json().encode(), request)
