"""The Pulumi program: validate the stack's config, then one MediaRegion per configured region."""

from __future__ import annotations

import os
import sys

import pulumi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from meshstack import cloudinit, registry
from meshstack.model import CONFIG_NAMESPACE, StackConfigError, validate


def main() -> None:
    config = pulumi.Config(CONFIG_NAMESPACE)
    raw = config.get_object("mesh")
    cloud = raw.get("cloud") if isinstance(raw, dict) else None
    settings = validate(raw, registry.known_regions(str(cloud)))
    assert settings.controller_url is not None
    provider = registry.provider(settings.cloud)
    provider.check(settings)  # the cloud's own rules, still before any resource
    if settings.agent_wheel_url is None:
        pulumi.log.warn(
            f"{CONFIG_NAMESPACE}:mesh.agentWheelUrl is not set: nodes will boot without the agent "
            "(cloud-init fails with a message saying so)"
        )
    shared = provider.shared(settings)
    pools = []
    for spec in settings.regions:
        # no secret in the user data: the node joins by its cloud identity (attested join)
        user_data = pulumi.Output.from_input(
            cloudinit.render(
                settings.controller_url or "",
                spec.region,
                settings.agent_wheel_url,
                settings.agent_wheel_sha256,
                wheelhouse_url=settings.agent_wheelhouse_url,
                wheelhouse_sha256=settings.agent_wheelhouse_sha256,
            )
        )
        component = provider.component(
            f"{settings.cloud}-{spec.region.split(':', 1)[1]}", settings, spec, user_data, shared=shared
        )
        pools.extend(component.pools)  # type: ignore[attr-defined]
    pulumi.export("pools", pools)
    pulumi.export("mesh", {"name": settings.name, "environment": settings.environment, "cloud": settings.cloud})


try:
    main()
except StackConfigError as exc:
    raise pulumi.RunError(str(exc)) from None
