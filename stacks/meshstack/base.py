"""What every cloud module gives: a component for one media region, and its known regions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pulumi

from meshstack.model import CONFIG_NAMESPACE, NetworkSettings, RegionSpec, StackSettings


@dataclass(frozen=True)
class NodeOutput:
    name: str
    region: str
    public_ip: pulumi.Output[str]


class MediaRegionFactory(Protocol):
    def __call__(
        self,
        name: str,
        settings: StackSettings,
        spec: RegionSpec,
        user_data: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
        shared: Any = None,
    ) -> pulumi.ComponentResource: ...


def no_check(settings: StackSettings) -> None:
    """A cloud without settings of its own to check."""


def nothing_shared(settings: StackSettings) -> None:
    """A cloud whose regions share no resource."""


def network_outputs(settings: StackSettings) -> pulumi.Output[Any] | None:
    """The `networks` output of the network stack mesh.networkStack names (one StackReference per
    stack), or None when it names none (each region's component then makes its own network)."""
    if settings.network_stack is None:
        return None
    stack = settings.network_stack
    return pulumi.StackReference(f"network-{stack.replace('/', '-')}", stack_name=stack).get_output("networks")


def address_count(entry: dict[str, Any]) -> int:
    """How many static addresses a network stack's region entry holds (AWS: its Elastic IPs)."""
    return len(entry.get("addresses") or [])


def from_network_stack(
    networks: Any,
    region_id: str,
    pool: str,
    stack: str,
    wanted: int = 0,
    size: Callable[[dict[str, Any]], int] = address_count,
) -> dict[str, Any]:
    """The network stack's entry for `region_id`, checked: it exists, it was made for this stack's
    mesh name and environment (its `pool` is this stack's pool name), and its address pool holds
    `wanted` addresses (`size` counts them). Errors name the network stack (pulumi.RunError: they
    are raised while the reference's output resolves)."""
    where = f"{CONFIG_NAMESPACE}:mesh.networkStack"
    entry = networks.get(region_id) if isinstance(networks, dict) else None
    if not isinstance(entry, dict):
        raise pulumi.RunError(
            f"{where}: the network stack {stack} has no network for {region_id} (add the region to its "
            "meshctl-shared:network.regions and run `pulumi up` on it first)"
        )
    if entry.get("pool") != pool:
        raise pulumi.RunError(
            f"{where}: the network of {region_id} in {stack} is tagged {entry.get('pool')!r}, this stack's "
            f"pool is {pool!r} (the network stack's name and environment must be this stack's)"
        )
    have = size(entry)
    if wanted > have:
        raise pulumi.RunError(
            f"{where}: {stack} holds {have} addresses for {region_id}, maxNodes is {wanted} "
            "(raise its regions[i].addresses, or set mesh.staticAddresses: false)"
        )
    return entry


@dataclass(frozen=True)
class CloudProvider:
    """A cloud's module: adding a provider means one new module that exports one of these.

    `check` refuses settings this cloud cannot take (StackConfigError) before any resource;
    `shared` creates what the stack's regions share (e.g. GCP's global network) and its result
    is passed to every region's component as `shared`. `claims_addresses`: with
    `staticAddresses`, a node claims its static address itself at boot (AWS: a free Elastic IP of
    its region's pool, tagged with the pool's name), so its user data carries the claim step.
    `network`: creates, in a network stack (stacks/shared with a `network` config), the networks and
    address pools of the regions it lists and returns its `networks` output (region id -> ids);
    a cloud with one reads them through `mesh.networkStack` (its `shared` step does, from the
    settings) instead of making its own. None: the cloud's node stacks make their networks.
    """

    name: str
    regions: frozenset[str]
    component: MediaRegionFactory
    check: Callable[[StackSettings], None] = no_check
    shared: Callable[[StackSettings], Any] = nothing_shared
    claims_addresses: bool = False
    network: Callable[[NetworkSettings], dict[str, Any]] | None = None
