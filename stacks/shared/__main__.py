"""An environment's shared stacks: what its node stacks read through a `pulumi.StackReference`
instead of repeating or owning it.

- Cloud-neutral (e.g. `dev`, a node stack's `mesh.sharedStack`): one output per config key of
  the same name (`meshctl-shared:<key>`): `controllerUrl`, `agentWheelUrl`, `agentWheelSha256`,
  `agentWheelhouseUrl`, `agentWheelhouseSha256` (a release sets them once for every cloud). The
  node stacks validate what they read as they validate their own config, and fail naming this
  stack and the output when one is missing or wrong.
- A network stack of one cloud (e.g. `dev-aws`, a node stack's `mesh.networkStack`), with a
  structured `meshctl-shared:network` config (name, environment, cloud, regions with their
  address pools' sizes): the regions' protected networks and address pools, exported as
  `networks` (region id -> the ids its node stacks use: AWS vpcId, subnetIds, addresses; GCP
  networkId, subnetworkId, project; Azure subnetId, prefixId, prefixLength; and every cloud's `pool`,
  the node stacks' pool name). One cloud per stack, so that one provider's outage or credentials
  never block another's. stacks/README.md says what each cloud's holds and what stays in the node
  stacks.

A stack may be both; it must be at least one (controllerUrl or network).
"""

from __future__ import annotations

import os
import sys

import pulumi

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from meshstack import registry
from meshstack.model import SHARED_OUTPUTS, StackConfigError, validate_network


def main() -> None:
    config = pulumi.Config("meshctl-shared")
    raw = config.get_object("network")
    if raw is not None:
        cloud = raw.get("cloud") if isinstance(raw, dict) else None
        net = validate_network(raw, registry.known_regions(str(cloud)))
        make = registry.provider(net.cloud).network
        if make is None:
            raise StackConfigError(
                f"meshctl-shared:network.cloud: {net.cloud} node stacks make their networks themselves "
                "(its module has no network step; stacks/README.md)"
            )
        pulumi.export("networks", make(net))
    url = config.get("controllerUrl") if raw is not None else config.require("controllerUrl")
    if url is not None:
        pulumi.export("controllerUrl", url)
    for key in SHARED_OUTPUTS[1:]:
        value = config.get(key)
        if value is not None:
            pulumi.export(key, value)


try:
    main()
except StackConfigError as exc:
    raise pulumi.RunError(str(exc)) from None
