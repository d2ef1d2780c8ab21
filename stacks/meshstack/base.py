"""What every cloud module gives: a component for one media region, and its known regions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pulumi

from meshstack.model import RegionSpec, StackSettings


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
    ) -> pulumi.ComponentResource: ...


@dataclass(frozen=True)
class CloudProvider:
    """A cloud's module: adding a provider means one new module that exports one of these."""

    name: str
    regions: frozenset[str]
    component: MediaRegionFactory
