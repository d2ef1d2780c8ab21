"""What every cloud module gives: a component for one media region, and its known regions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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
        shared: Any = None,
    ) -> pulumi.ComponentResource: ...


def no_check(settings: StackSettings) -> None:
    """A cloud without settings of its own to check."""


def nothing_shared(settings: StackSettings) -> None:
    """A cloud whose regions share no resource."""


@dataclass(frozen=True)
class CloudProvider:
    """A cloud's module: adding a provider means one new module that exports one of these.

    `check` refuses settings this cloud cannot take (StackConfigError) before any resource;
    `shared` creates what the stack's regions share (e.g. GCP's global network) and its result
    is passed to every region's component as `shared`.
    """

    name: str
    regions: frozenset[str]
    component: MediaRegionFactory
    check: Callable[[StackSettings], None] = no_check
    shared: Callable[[StackSettings], Any] = nothing_shared
