"""API tokens and join tokens (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from meshctl.api import schemas as s
from meshctl.api.deps import Admin, Ctl

router = APIRouter(tags=["tokens"])


@router.post("/v1/tokens", response_model=s.TokenCreated, status_code=201)
async def create_token(body: s.TokenCreate, ctl: Ctl, _: Admin) -> s.TokenCreated:
    """Create an API token; the secret is in this response only (stored hashed)."""
    return await ctl.create_token(body)


@router.get("/v1/tokens", response_model=list[s.TokenOut])
async def list_tokens(ctl: Ctl, _: Admin) -> list[s.TokenOut]:
    return await ctl.list_tokens()


@router.delete("/v1/tokens/{token_id}", response_model=s.TokenOut)
async def revoke_token(token_id: str, ctl: Ctl, _: Admin) -> s.TokenOut:
    return await ctl.revoke_token(token_id)


@router.post("/v1/join-tokens", response_model=s.JoinTokenOut, status_code=201)
async def create_join_token(body: s.JoinTokenCreate, ctl: Ctl, _: Admin) -> s.JoinTokenOut:
    """A join token for one region, expiring, with limited uses; shown once."""
    return await ctl.create_join_token(body)
