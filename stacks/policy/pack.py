"""The pack's policies (built here, started in __main__.py: constructing a PolicyPack serves gRPC)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rules


def _resource_policy(
    name: str, description: str, check: Callable[[str, Mapping[str, Any]], list[str]]
) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(args.resource_type, args.props):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


def _required_tags(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    provider = args.provider
    defaults = rules.provider_defaults(provider.resource_type, provider.props) if provider is not None else {}
    for message in rules.required_tags(args.resource_type, args.props, defaults):
        report_violation(message, None)


def _wireguard(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    collected = [(r.resource_type, r.props) for r in args.resources]
    for typ, props in collected:
        for message in rules.wireguard_port_open(typ, props, collected):
            report_violation(message, None)


POLICIES = [
    _resource_policy(
        "no-admin-ports-from-internet", "No SSH or RDP from the whole internet.", rules.no_admin_ports_from_internet
    ),
    _resource_policy(
        "gcp-firewall-explicit-sources",
        "A GCP ingress firewall names its sources (empty means 0.0.0.0/0).",
        rules.gcp_firewall_has_sources,
    ),
    ResourceValidationPolicy(
        name="required-tags",
        description="Every resource carries mesh, mesh-region and environment (its own or its provider's defaults).",
        validate=_required_tags,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    _resource_policy("pool-spans-zones", "A node pool spans at least two zones.", rules.pool_spans_zones),
    _resource_policy(
        "role-policy-scoped",
        "A node role changes nothing on every resource: writes are scoped by ARN and a condition.",
        rules.role_policy_scoped,
    ),
    _resource_policy("allowed-instance-types", "Instance types from the allow list only.", rules.allowed_instance_type),
    StackValidationPolicy(
        name="wireguard-port-open",
        description="UDP 51820 open inbound.",
        validate=_wireguard,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
]
