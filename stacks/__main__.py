"""The Pulumi program: validate the stack's config, then one MediaRegion per configured region."""

from __future__ import annotations

import os
import sys
from typing import Any

import pulumi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from meshstack import cloudinit, registry
from meshstack.model import (
    CONFIG_NAMESPACE,
    SHARED_OUTPUTS,
    StackConfigError,
    StackSettings,
    pool_name,
    validate,
    with_shared,
)


def user_data(settings: StackSettings, region_id: str, address_pool: str | None = None) -> str:
    """One node's cloud-init. No secret in it: the node joins by its cloud identity (attested join).

    `address_pool`: the pool whose free static address the node claims at boot (AWS Elastic IPs).
    """
    assert settings.controller_url is not None
    return cloudinit.render(
        settings.controller_url,
        region_id,
        settings.agent_wheel_url,
        settings.agent_wheel_sha256,
        wheelhouse_url=settings.agent_wheelhouse_url,
        wheelhouse_sha256=settings.agent_wheelhouse_sha256,
        address_pool=address_pool,
    )


def warn_without_agent(settings: StackSettings) -> StackSettings:
    if settings.agent_wheel_url is None:
        pulumi.log.warn(
            f"{CONFIG_NAMESPACE}:mesh.agentWheelUrl is not set: nodes will boot without the agent "
            "(cloud-init fails with a message saying so)"
        )
    return settings


def from_shared_stack(raw: dict[str, Any], known: dict[str, frozenset[str]], name: str) -> pulumi.Output[StackSettings]:
    """The settings completed by the shared stack's outputs (controller URL, agent artifacts)."""
    ref = pulumi.StackReference(f"shared-{name.replace('/', '-')}", stack_name=name)
    outputs = pulumi.Output.all(*(ref.get_output(k) for k in SHARED_OUTPUTS))

    def complete(values: list[Any]) -> StackSettings:
        try:
            return warn_without_agent(with_shared(raw, dict(zip(SHARED_OUTPUTS, values, strict=True)), known))
        except StackConfigError as exc:
            raise pulumi.RunError(str(exc)) from None

    return outputs.apply(complete)


def main() -> None:
    config = pulumi.Config(CONFIG_NAMESPACE)
    raw = config.get_object("mesh")
    cloud = raw.get("cloud") if isinstance(raw, dict) else None
    known = registry.known_regions(str(cloud))
    settings = validate(raw, known)
    provider = registry.provider(settings.cloud)
    provider.check(settings)  # the cloud's own rules, still before any resource
    if settings.network_stack is not None and provider.network is None:
        raise StackConfigError(
            f"{CONFIG_NAMESPACE}:mesh.networkStack: {settings.cloud} stacks make their networks themselves "
            "(its module has no network step; stacks/README.md)"
        )
    if settings.shared_stack is not None:
        assert isinstance(raw, dict)
        node_settings = from_shared_stack(raw, known, settings.shared_stack)
    else:
        node_settings = pulumi.Output.from_input(warn_without_agent(settings))
    shared = provider.shared(settings)
    pools = []
    for spec in settings.regions:
        claims = provider.claims_addresses and settings.static_addresses
        pool = pool_name(settings, spec.region) if claims else None
        component = provider.component(
            f"{settings.cloud}-{spec.region.split(':', 1)[1]}",
            settings,
            spec,
            node_settings.apply(lambda s, region=spec.region, pool=pool: user_data(s, region, pool)),
            shared=shared,
        )
        pools.extend(component.pools)  # type: ignore[attr-defined]
    pulumi.export("pools", pools)
    pulumi.export("mesh", {"name": settings.name, "environment": settings.environment, "cloud": settings.cloud})
    pulumi.export("controllerUrl", node_settings.apply(lambda s: s.controller_url))


try:
    main()
except StackConfigError as exc:
    raise pulumi.RunError(str(exc)) from None
