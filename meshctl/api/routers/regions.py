"""Regions and drains."""

from __future__ import annotations

from fastapi import APIRouter, Response

from meshctl.api.deps import Admin, Ctl, Operator, Reader
from meshctl.api.params import RegionPath
from meshctl.api.problems import AUTH, BODY, problem_responses
from meshctl.wire import schemas as s

router = APIRouter(prefix="/v1/regions", tags=["regions"])


@router.get("", response_model=list[s.RegionOut], responses=problem_responses(*AUTH))
async def list_regions(ctl: Ctl, _: Reader) -> list[s.RegionOut]:
    """Every region with its state, drain and health."""
    return [ctl.region_out(r) for r in sorted(ctl.regions.values(), key=lambda r: r.id)]


@router.get("/{region_id}", response_model=s.RegionOut, responses=problem_responses(*AUTH, 404, 422))
async def get_region(region_id: RegionPath, ctl: Ctl, _: Reader) -> s.RegionOut:
    return ctl.region_out(ctl.get_region(region_id))


@router.put(
    "/{region_id}",
    response_model=s.RegionOut,
    responses={201: {"model": s.RegionOut, "description": "Created"}, **problem_responses(*AUTH, *BODY, 503)},
)
async def put_region(region_id: RegionPath, body: s.RegionIn, ctl: Ctl, _: Admin, response: Response) -> s.RegionOut:
    """Add a region (201) or update one (200)."""
    out, created = await ctl.put_region(region_id, body)
    response.status_code = 201 if created else 200
    return out


@router.post(
    "/{region_id}/drain",
    response_model=s.RegionOut | s.DrainPreview,
    responses=problem_responses(*AUTH, 404, *BODY, 503),
)
async def drain(
    region_id: RegionPath, body: s.DrainRequest, ctl: Ctl, who: Operator, dry_run: bool = False
) -> s.RegionOut | s.DrainPreview:
    """Drain a region (no new sessions, no transit); `?dry_run=true` shows what would change."""
    if dry_run:
        return ctl.drain_preview(region_id)
    return await ctl.drain(region_id, body.reason, who.name)


@router.delete("/{region_id}/drain", response_model=s.RegionOut, responses=problem_responses(*AUTH, 404, 409, 422, 503))
async def undrain(region_id: RegionPath, ctl: Ctl, who: Operator) -> s.RegionOut:
    """Lift a manual drain (409 if the region is not drained)."""
    return await ctl.undrain(region_id, who.name)
