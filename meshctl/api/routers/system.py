"""Liveness, metrics and the one-screen status."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshctl.api import schemas as s
from meshctl.api.deps import Ctl, Reader

router = APIRouter()


@router.get("/healthz", tags=["system"])
async def healthz(ctl: Ctl) -> dict[str, object]:
    """Liveness: always 200 while the process serves; says whether the database answers."""
    return {
        "ok": True,
        "store": "up" if ctl.store_ok else "down",
        "leader": ctl.is_leader,
        "replica_id": ctl.settings.replica_id,
        "generation": ctl.snapshot.generation,
    }


@router.get("/metrics", tags=["system"])
async def metrics(ctl: Ctl) -> Response:
    return Response(generate_latest(ctl.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/status", response_model=s.StatusOut, tags=["system"])
async def status(ctl: Ctl, _: Reader) -> s.StatusOut:
    return ctl.status()
