"""Join policies (admin): which cloud accounts may join by attestation, where they land; and join nonces."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from meshctl.api.deps import Admin, Ctl
from meshctl.api.problems import AUTH, BODY, problem_responses
from meshctl.wire import schemas as s

router = APIRouter(tags=["join"])

PolicyId = Annotated[str, Path(max_length=64, description="A join policy id, e.g. prod-aws")]


@router.post(
    "/v1/join-policies",
    response_model=s.JoinPolicyOut,
    status_code=201,
    responses=problem_responses(*AUTH, 409, *BODY, 503),
)
async def create_join_policy(body: s.JoinPolicyIn, ctl: Ctl, _: Admin) -> s.JoinPolicyOut:
    """Add a join policy. 409 when the id exists, or when it would put an Azure subscription in two regions."""
    return await ctl.attested.create_policy(body)


@router.get("/v1/join-policies", response_model=list[s.JoinPolicyOut], responses=problem_responses(*AUTH, 503))
async def list_join_policies(ctl: Ctl, _: Admin) -> list[s.JoinPolicyOut]:
    """Every join policy, in the order they are tried (by id)."""
    return await ctl.attested.policies()


@router.delete(
    "/v1/join-policies/{policy_id}", response_model=s.JoinPolicyOut, responses=problem_responses(*AUTH, 404, 422, 503)
)
async def delete_join_policy(policy_id: PolicyId, ctl: Ctl, _: Admin) -> s.JoinPolicyOut:
    """Delete a join policy: nodes it admitted stay; new ones are no longer admitted by it."""
    return await ctl.attested.delete_policy(policy_id)


@router.get("/v1/join-nonce", response_model=s.JoinNonceOut)
async def join_nonce(ctl: Ctl) -> s.JoinNonceOut:
    """A fresh nonce for an Azure attested document (no token: it proves nothing without a document Azure
    signed around it); single use, valid a few minutes."""
    return ctl.attested.nonce()
