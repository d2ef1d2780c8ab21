"""Join policies and the pure decision: may this verified identity join, and into which mesh region?

A policy names a cloud, the accounts (AWS account ids, GCP project ids, Azure subscription ids) it admits,
optional further conditions (GCP service accounts, Azure resource groups, tags: each must be a *signed*
claim, so a condition on a claim the document does not sign refuses rather than trusting the node), the
region mapping and a per-region cap.

Regions: `regions` maps cloud regions to mesh region ids; with `any_region` a cloud region not listed maps
to the default `<cloud>:<cloud-region>`; without it, only listed regions are admitted. Azure documents sign
no region, so an Azure policy must set `fixed_region` (see meshctl.attest.azure for why); every node it
admits lands there. `decide` tries the policies of the identity's cloud in id order and names the rule
that refused: cloud, account, service_account, resource_group, tags, region, ambiguous, claimed_region, cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshctl.attest.identity import Identity
from meshctl.core.regions import InvalidRegionId, parse_region_id

Rule = Literal[
    "cloud", "account", "service_account", "resource_group", "tags", "region", "ambiguous", "claimed_region", "cap"
]
UNSIGNED_REGION_CLOUDS = frozenset({"azure"})


class JoinPolicy(BaseModel):
    """Who may join by cloud identity, and where they land."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    cloud: str = Field(pattern=r"^[a-z][a-z0-9]*$")
    accounts: tuple[str, ...] = Field(min_length=1)
    service_accounts: tuple[str, ...] = ()
    resource_groups: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)
    regions: dict[str, str] = Field(default_factory=dict)
    any_region: bool = False
    fixed_region: str | None = None
    max_nodes_per_region: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> JoinPolicy:
        targets = list(self.regions.values()) + ([self.fixed_region] if self.fixed_region else [])
        for target in targets:
            try:
                cloud, _ = parse_region_id(target)
            except InvalidRegionId as exc:
                raise ValueError(str(exc)) from None
            if cloud != self.cloud:
                raise ValueError(
                    f"{target} is outside cloud {self.cloud}: a {self.cloud} policy maps to {self.cloud}:..."
                )
        if self.cloud in UNSIGNED_REGION_CLOUDS and not self.fixed_region:
            raise ValueError(f"{self.cloud} documents sign no region: set fixed_region (one mesh region per policy)")
        if self.fixed_region and (self.regions or self.any_region):
            raise ValueError("fixed_region excludes regions and any_region")
        if not (self.fixed_region or self.regions or self.any_region):
            raise ValueError("say where nodes land: regions, any_region or fixed_region")
        return self

    def mesh_region(self, identity: Identity) -> str | None:
        """The mesh region this policy puts `identity` in, or None when it does not map its region."""
        if self.fixed_region:
            return self.fixed_region
        if identity.cloud_region is None:
            return None
        if identity.cloud_region in self.regions:
            return self.regions[identity.cloud_region]
        return identity.default_region() if self.any_region else None


@dataclass(frozen=True)
class Admitted:
    region: str
    policy_id: str


@dataclass(frozen=True)
class Refused:
    """`rule` names the condition that failed; `reason` says it in one line (no secret, no document)."""

    rule: Rule
    reason: str
    policy_id: str | None = None


def _check(policy: JoinPolicy, identity: Identity) -> Refused | str:
    def no(rule: Rule, reason: str) -> Refused:
        return Refused(rule, f"policy {policy.id}: {reason}", policy.id)

    if policy.service_accounts and identity.service_account not in policy.service_accounts:
        return no("service_account", f"service account {identity.service_account or '(none signed)'} is not allowed")
    if policy.resource_groups and identity.resource_group not in policy.resource_groups:
        return no("resource_group", f"resource group {identity.resource_group or '(not signed)'} is not allowed")
    for key, value in policy.tags.items():
        if identity.tags.get(key) != value:
            got = identity.tags.get(key)
            return no("tags", f"tag {key}={value} required, {'got ' + got if got else 'not among the signed claims'}")
    region = policy.mesh_region(identity)
    if region is None:
        return no("region", f"{identity.cloud} region {identity.cloud_region} is not mapped to a mesh region")
    return region


def decide(
    identity: Identity,
    policies: Iterable[JoinPolicy],
    nodes_per_region: Mapping[str, int],
    claimed_region: str | None = None,
) -> Admitted | Refused:
    """Admit `identity` into one mesh region, or refuse naming the rule. Pure."""
    mine = sorted((p for p in policies if p.cloud == identity.cloud), key=lambda p: p.id)
    if not mine:
        return Refused("cloud", f"no join policy admits {identity.cloud} nodes")
    mine = [p for p in mine if identity.account in p.accounts]
    if not mine:
        return Refused("account", f"{identity.cloud} account {identity.account} is not in any join policy")
    results = [(p, _check(p, identity)) for p in mine]
    matches = [(p, r) for p, r in results if isinstance(r, str)]
    if not matches:
        first = results[0][1]
        assert isinstance(first, Refused)
        return first
    regions = sorted({r for _, r in matches})
    if len(regions) > 1:
        ids = ", ".join(p.id for p, _ in matches)
        return Refused("ambiguous", f"policies {ids} put this node in different regions ({', '.join(regions)})")
    policy, region = matches[0]
    if claimed_region is not None and claimed_region != region:
        return Refused(
            "claimed_region", f"the node says {claimed_region} but its signed identity puts it in {region}", policy.id
        )
    if policy.max_nodes_per_region is not None and nodes_per_region.get(region, 0) >= policy.max_nodes_per_region:
        return Refused(
            "cap", f"{region} has {policy.max_nodes_per_region} nodes, the most policy {policy.id} allows", policy.id
        )
    return Admitted(region, policy.id)


def conflicts(policy: JoinPolicy, existing: Iterable[JoinPolicy]) -> list[str]:
    """Why `policy` cannot be added next to `existing` (for the create endpoint): an account that would land
    in two different regions for a cloud whose documents sign no region."""
    if policy.fixed_region is None:
        return []
    out = []
    for other in existing:
        if other.id == policy.id or other.cloud != policy.cloud or other.fixed_region in (None, policy.fixed_region):
            continue
        shared = sorted(set(policy.accounts) & set(other.accounts))
        split_by_group = policy.resource_groups and other.resource_groups
        if shared and not (split_by_group and not set(policy.resource_groups) & set(other.resource_groups)):
            out.append(f"{', '.join(shared)} already lands in {other.fixed_region} by policy {other.id}")
    return out
