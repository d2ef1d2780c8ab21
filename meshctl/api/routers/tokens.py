"""API tokens and join tokens (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from meshctl.api.deps import Admin, Ctl
from meshctl.api.problems import AUTH, BODY, problem_responses
from meshctl.wire import schemas as s

router = APIRouter(tags=["tokens"])


@router.post(
    "/v1/tokens", response_model=s.TokenCreated, status_code=201, responses=problem_responses(*AUTH, *BODY, 503)
)
async def create_token(body: s.TokenCreate, ctl: Ctl, _: Admin) -> s.TokenCreated:
    """Create an API token; the secret is in this response only (stored hashed)."""
    return await ctl.create_token(body)


@router.get("/v1/tokens", response_model=list[s.TokenOut], responses=problem_responses(*AUTH, 503))
async def list_tokens(ctl: Ctl, _: Admin) -> list[s.TokenOut]:
    """Every token (never its secret)."""
    return await ctl.list_tokens()


@router.delete("/v1/tokens/{token_id}", response_model=s.TokenOut, responses=problem_responses(*AUTH, 404, 422, 503))
async def revoke_token(token_id: Annotated[str, Path(max_length=64)], ctl: Ctl, _: Admin) -> s.TokenOut:
    """Revoke a token: it is refused from now on."""
    return await ctl.revoke_token(token_id)


@router.post(
    "/v1/join-tokens",
    response_model=s.JoinTokenOut,
    status_code=201,
    responses=problem_responses(*AUTH, 404, *BODY, 503),
)
async def create_join_token(body: s.JoinTokenCreate, ctl: Ctl, _: Admin) -> s.JoinTokenOut:
    """A join token for one region, expiring, with limited uses; shown once."""
    return await ctl.create_join_token(body)
