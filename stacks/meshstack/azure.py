"""Azure: a resource group, a virtual network, an NSG (WireGuard, media, SSH from admins only; one
address family per rule), and per region a node pool: a Flexible VM scale set over zones 1-3
(Canonical's Ubuntu 24.04 LTS image for the size's architecture, SSH key only, the NSG on the
NIC configuration, a Standard public IP per VM from a protected prefix, OS disk, NIC and IP
deleted with the VM, cloud-init in custom_data), an optional spot share above a regular base
(priority mix), rolling upgrades gated by the Application Health extension, automatic repairs,
and an autoscale setting when minNodes/maxNodes differ from nodes. With mesh.networkStack the
VNet's subnet and the public IP prefix are a network stack's (`networks`: what one makes); the
resource group, NSG and scale set stay here."""

from __future__ import annotations

import base64
import functools
import importlib
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
from pulumi_azure_native import compute, network, resources

from meshstack.base import CloudProvider, from_network_stack, network_outputs
from meshstack.model import (
    CONFIG_NAMESPACE,
    NetworkRegion,
    NetworkSettings,
    RegionSpec,
    StackConfigError,
    StackSettings,
    firewall_rules,
    pool_bounds,
    pool_name,
    tags,
)

# Canonical's image reference for Ubuntu 24.04 LTS (Python 3.12): sku server (gen2) or server-arm64
UBUNTU_PUBLISHER, UBUNTU_OFFER = "Canonical", "ubuntu-24_04-lts"
ADMIN_USER = "meshadmin"
SSH_KEY = re.compile(r"^(ssh-rsa|ssh-ed25519) [A-Za-z0-9+/]+=*( \S.*)?$")

REGIONS = frozenset(
    {
        "eastus",
        "eastus2",
        "westus",
        "westus2",
        "westus3",
        "centralus",
        "northcentralus",
        "southcentralus",
        "canadacentral",
        "brazilsouth",
        "northeurope",
        "westeurope",
        "uksouth",
        "francecentral",
        "germanywestcentral",
        "switzerlandnorth",
        "norwayeast",
        "swedencentral",
        "polandcentral",
        "italynorth",
        "uaenorth",
        "qatarcentral",
        "southafricanorth",
        "centralindia",
        "eastasia",
        "southeastasia",
        "japaneast",
        "japanwest",
        "koreacentral",
        "australiaeast",
        "australiasoutheast",
    }
)
CUSTOM_DATA_LIMIT = 65_535
ZONES = ("1", "2", "3")
# regions of REGIONS without availability zones: a pool there could not span two zones
NO_ZONES = frozenset({"westus", "northcentralus", "australiasoutheast"})
HEALTH_PORT = 9464  # the agent's /metrics on 127.0.0.1 (the Application Health extension probes locally)
COMPUTER_NAME_PREFIX = 58  # Linux host names: 64 characters, the scale set appends 6
MIN_PREFIX_LENGTH = 28  # Azure's largest public IP prefix without a quota request: /28 (16 addresses)


def architecture(vm_size: str) -> Literal["amd64", "arm64"]:
    """Arm64 (Ampere, Cobalt) sizes carry a 'p' among their feature letters: Standard_D4ps_v5, _B2pls_v2."""
    m = re.match(r"^Standard_[A-Z]+\d+([a-z]*)_v\d+$", vm_size)
    return "arm64" if m and "p" in m.group(1) else "amd64"


def image_reference(settings: StackSettings, spec: RegionSpec, vm_size: str) -> compute.ImageReferenceArgs:
    explicit = spec.image or settings.image
    if explicit is None:
        sku = "server-arm64" if architecture(vm_size) == "arm64" else "server"
        return compute.ImageReferenceArgs(publisher=UBUNTU_PUBLISHER, offer=UBUNTU_OFFER, sku=sku, version="latest")
    parts = explicit.split(":")
    if len(parts) != 4:
        raise StackConfigError(f"{CONFIG_NAMESPACE}:mesh.image: Azure images are publisher:offer:sku:version")
    return compute.ImageReferenceArgs(publisher=parts[0], offer=parts[1], sku=parts[2], version=parts[3])


def check(settings: StackSettings) -> None:
    """A Linux VM with passwords disabled needs an SSH key: Azure refuses it otherwise."""
    key = settings.admin_ssh_public_key
    where = f"{CONFIG_NAMESPACE}:mesh.adminSshPublicKey"
    if not key:
        raise StackConfigError(
            f"{where}: missing; Azure VMs have passwords disabled and need an SSH public key "
            "(ssh-ed25519 or ssh-rsa, one line, e.g. the content of ~/.ssh/id_ed25519.pub)"
        )
    if not SSH_KEY.match(key.strip()):
        raise StackConfigError(f"{where}: not an OpenSSH public key line (ssh-ed25519 AAAA... or ssh-rsa AAAA...)")
    for i, spec in enumerate(settings.regions):
        if spec.region.split(":", 1)[1] in NO_ZONES:
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.regions[{i}].region: {spec.region} has no availability zones; "
                "a node pool spans at least two"
            )
        if settings.static_addresses and pool_bounds(spec)[1] > 2 ** (32 - MIN_PREFIX_LENGTH):
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.regions[{i}].maxNodes: at most {2 ** (32 - MIN_PREFIX_LENGTH)} nodes "
                "take their addresses from one public IP prefix (staticAddresses)"
            )
        if (spec.image or settings.image or "a:b:c:d").count(":") != 3:
            raise StackConfigError(
                f"{CONFIG_NAMESPACE}:mesh.regions[{i}].image: Azure images are publisher:offer:sku:version"
            )


@functools.cache
def takes_tags(type_token: str) -> bool:
    """Whether an azure-native resource type has a `tags` input, read from the SDK's own signature."""
    _, module, cls = type_token.split(":")
    resource = getattr(importlib.import_module(f"pulumi_azure_native.{module}"), cls)
    return "tags" in inspect.signature(resource._internal_init).parameters


def tag_transform(required: dict[str, str]) -> pulumi.ResourceTransform:
    """Azure has no provider default tags: this transform gives `required` to every azure-native
    resource that takes tags (a resource's own tags win on a clash), so no resource threads them."""

    def transform(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
        if not args.type_.startswith("azure-native:") or not takes_tags(args.type_):
            return None
        props = dict(args.props)
        own = props.get("tags")
        if isinstance(own, pulumi.Output):
            props["tags"] = own.apply(lambda o: {**required, **(o or {})})
        else:
            props["tags"] = {**required, **(own if isinstance(own, dict) else {})}
        return pulumi.ResourceTransformResult(props=props, opts=args.opts)

    return transform


def _custom_data(text: str) -> str:
    encoded = base64.b64encode(text.encode()).decode()
    if len(encoded) > CUSTOM_DATA_LIMIT:
        raise ValueError(f"cloud-init is {len(encoded)} bytes in base64; Azure takes at most {CUSTOM_DATA_LIMIT}")
    return encoded


class AzureMediaRegion(pulumi.ComponentResource):
    """One Azure region's media nodes with their network and firewall."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        spec: RegionSpec,
        user_data: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
        shared: Any = None,
    ) -> None:
        super().__init__("meshctl:azure:MediaRegion", name, None, opts)
        check(settings)
        location = spec.region.split(":", 1)[1]
        # every resource of the region that takes tags gets the required ones (Azure: no default tags)
        tagged = [tag_transform(tags(settings, spec.region))]
        child = pulumi.ResourceOptions(parent=self, transforms=tagged)
        rg = resources.ResourceGroup(f"{name}-rg", location=location, opts=child)
        rules = []
        for priority, rule in enumerate(firewall_rules(settings), start=100):
            ports = str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}-{rule.to_port}"
            rules.append(
                network.SecurityRuleArgs(
                    name=rule.name,
                    priority=priority,
                    direction="Inbound",
                    access="Allow",
                    protocol=rule.protocol.capitalize(),
                    source_address_prefixes=list(rule.sources),
                    source_port_range="*",
                    destination_address_prefix="*",
                    destination_port_range=ports,
                    description=rule.description,
                )
            )
        # Azure's default rules deny all other inbound traffic from the internet (priority 65500)
        nsg = network.NetworkSecurityGroup(
            f"{name}-nsg", resource_group_name=rg.name, location=location, security_rules=rules, opts=child
        )
        pool = pool_name(settings, spec.region)
        low, high = pool_bounds(spec)
        if shared is not None:  # the environment's network stack owns the subnet and the address prefix
            stack = str(settings.network_stack)
            wanted = high if settings.static_addresses else 0
            entry = shared.apply(lambda n: from_network_stack(n, spec.region, pool, stack, wanted, prefix_size))
            subnet_id: pulumi.Input[str] = entry.apply(lambda e: str(e["subnetId"]))
            prefix_id: pulumi.Input[str] | None = None
            if settings.static_addresses:
                prefix_id = entry.apply(lambda e: str(e["prefixId"]))
        else:
            made = region_network(
                name, location, rg.name, high if settings.static_addresses else 0, self, tagged, nsg.id
            )
            subnet_id, prefix_id = made.subnet_id, made.prefix_id
        vm_size = spec.instance_type or settings.instance_type
        image = image_reference(settings, spec, vm_size)
        ssh = compute.SshConfigurationArgs(
            public_keys=[
                compute.SshPublicKeyArgs(
                    path=f"/home/{ADMIN_USER}/.ssh/authorized_keys",
                    key_data=(settings.admin_ssh_public_key or "").strip(),
                )
            ]
        )
        public_ip = compute.VirtualMachineScaleSetPublicIPAddressConfigurationArgs(
            name="public",
            sku=compute.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
            delete_option="Delete",
        )
        if prefix_id is not None:  # the nodes' addresses come from the region's protected prefix: a known range
            public_ip.public_ip_prefix = compute.SubResourceArgs(id=prefix_id)
        spot = spec.spot_percent > 0
        vmss = compute.VirtualMachineScaleSet(
            f"{name}-vmss",
            vm_scale_set_name=pool,
            resource_group_name=rg.name,
            location=location,
            orchestration_mode="Flexible",
            platform_fault_domain_count=1,  # spread by zones
            zones=list(ZONES),
            zone_balance=True,
            sku=compute.SkuArgs(name=vm_size, tier="Standard", capacity=spec.nodes),
            priority_mix_policy=compute.PriorityMixPolicyArgs(
                base_regular_priority_count=spec.on_demand_base,
                regular_priority_percentage_above_base=100 - spec.spot_percent,
            )
            if spot
            else None,
            # rolling replacement when the model changes; the Application Health extension tells
            # Azure a node is up (the agent's /metrics on 127.0.0.1), automatic repairs heal it
            upgrade_policy=compute.UpgradePolicyArgs(
                mode=compute.UpgradeMode.ROLLING,
                rolling_upgrade_policy=compute.RollingUpgradePolicyArgs(
                    max_batch_instance_percent=34,
                    max_unhealthy_instance_percent=34,
                    max_unhealthy_upgraded_instance_percent=34,
                    pause_time_between_batches="PT0S",
                    max_surge=True,
                ),
            ),
            automatic_repairs_policy=compute.AutomaticRepairsPolicyArgs(enabled=True, grace_period="PT30M"),
            virtual_machine_profile=compute.VirtualMachineScaleSetVMProfileArgs(
                priority="Spot" if spot else None,
                eviction_policy="Delete" if spot else None,
                billing_profile=compute.BillingProfileArgs(max_price=-1) if spot else None,
                os_profile=compute.VirtualMachineScaleSetOSProfileArgs(
                    computer_name_prefix=pool[:COMPUTER_NAME_PREFIX],
                    admin_username=ADMIN_USER,
                    custom_data=user_data.apply(_custom_data),
                    linux_configuration=compute.LinuxConfigurationArgs(disable_password_authentication=True, ssh=ssh),
                ),
                storage_profile=compute.VirtualMachineScaleSetStorageProfileArgs(
                    image_reference=image,
                    os_disk=compute.VirtualMachineScaleSetOSDiskArgs(
                        create_option="FromImage",
                        delete_option="Delete",
                        managed_disk=compute.VirtualMachineScaleSetManagedDiskParametersArgs(
                            storage_account_type="Premium_LRS"
                        ),
                    ),
                ),
                network_profile=compute.VirtualMachineScaleSetNetworkProfileArgs(
                    network_api_version="2020-11-01",  # Flexible: the scale set creates each VM's NIC
                    network_interface_configurations=[
                        compute.VirtualMachineScaleSetNetworkConfigurationArgs(
                            name="nic",
                            primary=True,
                            delete_option="Delete",
                            network_security_group=compute.SubResourceArgs(id=nsg.id),
                            ip_configurations=[
                                compute.VirtualMachineScaleSetIPConfigurationArgs(
                                    name="primary",
                                    primary=True,
                                    subnet=compute.ApiEntityReferenceArgs(id=subnet_id),
                                    public_ip_address_configuration=public_ip,
                                )
                            ],
                        )
                    ],
                ),
                extension_profile=compute.VirtualMachineScaleSetExtensionProfileArgs(
                    extensions=[
                        compute.VirtualMachineScaleSetExtensionArgs(
                            name="health",
                            publisher="Microsoft.ManagedServices",
                            type="ApplicationHealthLinux",
                            type_handler_version="2.0",
                            auto_upgrade_minor_version=True,
                            settings={"protocol": "http", "port": HEALTH_PORT, "requestPath": "/metrics"},
                        )
                    ]
                ),
            ),
            opts=child,
        )
        if (low, high) != (spec.nodes, spec.nodes):
            from pulumi_azure_native import monitor  # only when the pool scales (import costs ~1 s)

            def cpu_rule(
                operator: monitor.ComparisonOperationType, threshold: float, direction: monitor.ScaleDirection
            ) -> monitor.ScaleRuleArgs:
                return monitor.ScaleRuleArgs(
                    metric_trigger=monitor.MetricTriggerArgs(
                        metric_name="Percentage CPU",
                        metric_resource_uri=vmss.id,
                        operator=operator,
                        statistic=monitor.MetricStatisticType.AVERAGE,
                        threshold=threshold,
                        time_aggregation=monitor.TimeAggregationType.AVERAGE,
                        time_grain="PT1M",
                        time_window="PT10M",
                    ),
                    scale_action=monitor.ScaleActionArgs(
                        direction=direction, type=monitor.ScaleType.CHANGE_COUNT, value="1", cooldown="PT5M"
                    ),
                )

            monitor.AutoscaleSetting(
                f"{name}-autoscale",
                resource_group_name=rg.name,
                location=location,
                target_resource_uri=vmss.id,
                enabled=True,
                profiles=[
                    monitor.AutoscaleProfileArgs(
                        name="cpu",
                        capacity=monitor.ScaleCapacityArgs(
                            minimum=str(low), maximum=str(high), default=str(spec.nodes)
                        ),
                        rules=[
                            cpu_rule(monitor.ComparisonOperationType.GREATER_THAN, 60, monitor.ScaleDirection.INCREASE),
                            cpu_rule(monitor.ComparisonOperationType.LESS_THAN, 20, monitor.ScaleDirection.DECREASE),
                        ],
                    )
                ],
                opts=child,
            )
        self.pools = [
            {
                "region": spec.region,
                "pool": vmss.name,
                "minNodes": low,
                "maxNodes": high,
                "nodes": spec.nodes,
                "spotPercent": spec.spot_percent,
                "zones": list(ZONES),
            }
        ]
        self.register_outputs({"pools": self.pools})


def prefix_length(addresses: int) -> int:
    """The smallest public IP prefix (/31 .. /28) with room for `addresses` nodes."""
    return max(MIN_PREFIX_LENGTH, 32 - max(1, math.ceil(math.log2(max(addresses, 1)))))


def prefix_size(entry: dict[str, Any]) -> int:
    """How many addresses a network stack's region entry holds: its public IP prefix's (0: none)."""
    return 2 ** (32 - int(entry["prefixLength"])) if entry.get("prefixId") else 0


@dataclass(frozen=True)
class RegionNetwork:
    """What a region's scale set runs in: made by its node stack, or read from a network stack."""

    subnet_id: pulumi.Input[str]
    prefix_id: pulumi.Input[str] | None  # the public IP prefix the nodes' addresses come from
    vnet_id: pulumi.Input[str] | None = None
    ip_prefix: pulumi.Input[str] | None = None  # the prefix's range (e.g. 203.0.113.16/29)


def region_network(
    name: str,
    location: str,
    resource_group: pulumi.Input[str],
    addresses: int,
    parent: pulumi.Resource,
    tagged: list[pulumi.ResourceTransform],
    nsg_id: pulumi.Input[str] | None = None,
) -> RegionNetwork:
    """A VNet (protected) with one subnet (with `nsg_id`, the NSG on the subnet too) and, for
    `addresses` > 0, a protected Standard public IP prefix with room for them (zone-redundant)."""
    kept = pulumi.ResourceOptions(parent=parent, transforms=tagged, protect=True)  # `pulumi state unprotect`
    vnet = network.VirtualNetwork(
        f"{name}-vnet",
        resource_group_name=resource_group,
        location=location,
        address_space=network.AddressSpaceArgs(address_prefixes=["10.64.0.0/16"]),
        opts=kept,
    )
    subnet = network.Subnet(
        f"{name}-subnet",
        resource_group_name=resource_group,
        virtual_network_name=vnet.name,
        address_prefix="10.64.1.0/24",
        network_security_group=network.NetworkSecurityGroupArgs(id=nsg_id) if nsg_id is not None else None,
        opts=pulumi.ResourceOptions(parent=parent, transforms=tagged),
    )
    if not addresses:
        return RegionNetwork(subnet.id, None, vnet.id)
    prefix = network.PublicIPPrefix(
        f"{name}-ip-prefix",
        resource_group_name=resource_group,
        location=location,
        prefix_length=prefix_length(addresses),
        public_ip_address_version="IPv4",
        sku=network.PublicIPPrefixSkuArgs(name="Standard", tier="Regional"),
        zones=list(ZONES),
        opts=kept,
    )
    return RegionNetwork(subnet.id, prefix.id, vnet.id, prefix.ip_prefix)


class AzureNetworkRegion(pulumi.ComponentResource):
    """In a network stack: one region's resource group, VNet, subnet and public IP prefix, named and
    tagged as the node stack of the same mesh name and environment names its own. No NSG: its rules
    follow the node stack's ports and admins, and the node stack puts it on the NIC configuration."""

    def __init__(self, net: NetworkSettings, spec: NetworkRegion, opts: pulumi.ResourceOptions | None = None) -> None:
        location = spec.region.split(":", 1)[1]
        name = f"azure-{location}"
        super().__init__("meshctl:azure:NetworkRegion", name, None, opts)
        tagged = [tag_transform(tags(net, spec.region))]
        # protected with the rest (`networks`): deleting a resource group deletes everything in it
        rg = resources.ResourceGroup(
            f"{name}-rg", location=location, opts=pulumi.ResourceOptions(parent=self, transforms=tagged)
        )
        made = region_network(name, location, rg.name, spec.addresses, self, tagged)
        self.outputs = {
            "resourceGroup": rg.name,
            "location": location,
            "vnetId": made.vnet_id,
            "subnetId": made.subnet_id,
            "prefixId": made.prefix_id,
            "prefixLength": prefix_length(spec.addresses) if spec.addresses else 0,
            "ipPrefix": made.ip_prefix,
            "pool": pool_name(net, spec.region),
        }
        self.register_outputs(self.outputs)


def networks(net: NetworkSettings) -> dict[str, Any]:
    """A network stack's `networks` output: region id -> resourceGroup, location, vnetId, subnetId,
    prefixId, prefixLength, ipPrefix (the nodes' addresses' range), pool (mesh name and environment)."""
    most = 2 ** (32 - MIN_PREFIX_LENGTH)
    for i, spec in enumerate(net.regions):
        where = f"meshctl-shared:network.regions[{i}]"
        if spec.region.split(":", 1)[1] in NO_ZONES:
            raise StackConfigError(f"{where}.region: {spec.region} has no availability zones; a node pool spans two")
        if spec.addresses > most:
            raise StackConfigError(
                f"{where}.addresses: one public IP prefix holds at most {most} addresses (/{MIN_PREFIX_LENGTH})"
            )
    kept = pulumi.ResourceOptions(protect=True)  # every resource of a network stack (children inherit it)
    return {spec.region: AzureNetworkRegion(net, spec, kept).outputs for spec in net.regions}


PROVIDER = CloudProvider(
    name="azure", regions=REGIONS, component=AzureMediaRegion, check=check, shared=network_outputs, network=networks
)
