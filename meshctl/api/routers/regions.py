"""Regions and drains."""

from __future__ import annotations

from fastapi import APIRouter, Response

from meshctl.api import schemas as s
from meshctl.api.deps import Admin, Ctl, Operator, Reader

router = APIRouter(prefix="/v1/regions", tags=["regions"])


@router.get("", response_model=list[s.RegionOut])
async def list_regions(ctl: Ctl, _: Reader) -> list[s.RegionOut]:
    return [ctl.region_out(r) for r in sorted(ctl.regions.values(), key=lambda r: r.id)]


@router.get("/{region_id}", response_model=s.RegionOut)
async def get_region(region_id: str, ctl: Ctl, _: Reader) -> s.RegionOut:
    return ctl.region_out(ctl.get_region(region_id))


@router.put("/{region_id}", response_model=s.RegionOut)
async def put_region(region_id: str, body: s.RegionIn, ctl: Ctl, _: Admin, response: Response) -> s.RegionOut:
    out, created = await ctl.put_region(region_id, body)
    response.status_code = 201 if created else 200
    return out


@router.post("/{region_id}/drain", response_model=s.RegionOut | s.DrainPreview)
async def drain(
    region_id: str, body: s.DrainRequest, ctl: Ctl, who: Operator, dry_run: bool = False
) -> s.RegionOut | s.DrainPreview:
    """Drain a region (no new sessions, no transit); `?dry_run=true` shows what would change."""
    if dry_run:
        return ctl.drain_preview(region_id)
    return await ctl.drain(region_id, body.reason, who.name)


@router.delete("/{region_id}/drain", response_model=s.RegionOut)
async def undrain(region_id: str, ctl: Ctl, who: Operator) -> s.RegionOut:
    return await ctl.undrain(region_id, who.name)
