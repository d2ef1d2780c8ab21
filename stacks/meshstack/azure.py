"""Azure: a resource group, a virtual network, an NSG (WireGuard, media, SSH from admins only),
Standard static public IPs and Linux VMs with cloud-init in custom_data."""

from __future__ import annotations

import base64

import pulumi
from pulumi_azure_native import compute, network, resources

from meshstack.base import CloudProvider
from meshstack.model import RegionSpec, StackSettings, firewall_rules, node_name, tags

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
    ) -> None:
        super().__init__("meshctl:azure:MediaRegion", name, None, opts)
        location = spec.region.split(":", 1)[1]
        t = tags(settings, spec.region)
        child = pulumi.ResourceOptions(parent=self)
        rg = resources.ResourceGroup(f"{name}-rg", location=location, tags=t, opts=child)
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
            f"{name}-nsg", resource_group_name=rg.name, location=location, security_rules=rules, tags=t, opts=child
        )
        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=rg.name,
            location=location,
            address_space=network.AddressSpaceArgs(address_prefixes=["10.64.0.0/16"]),
            tags=t,
            opts=child,
        )
        subnet = network.Subnet(
            f"{name}-subnet",
            resource_group_name=rg.name,
            virtual_network_name=vnet.name,
            address_prefix="10.64.1.0/24",
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
            opts=child,
        )
        image = (spec.image or settings.image).split(":")
        if len(image) != 4:
            raise ValueError("meshctl-stacks:mesh.image: Azure images are publisher:offer:sku:version")
        self.nodes = []
        for i in range(spec.nodes):
            node = node_name(settings, spec.region, i)
            ip = network.PublicIPAddress(
                f"{node}-ip",
                resource_group_name=rg.name,
                location=location,
                sku=network.PublicIPAddressSkuArgs(name="Standard"),
                public_ip_allocation_method="Static",
                tags=t,
                opts=child,
            )
            nic = network.NetworkInterface(
                f"{node}-nic",
                resource_group_name=rg.name,
                location=location,
                tags=t,
                network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
                ip_configurations=[
                    network.NetworkInterfaceIPConfigurationArgs(
                        name="primary",
                        subnet=network.SubnetArgs(id=subnet.id),
                        public_ip_address=network.PublicIPAddressArgs(id=ip.id),
                    )
                ],
                opts=child,
            )
            ssh = (
                compute.SshConfigurationArgs(
                    public_keys=[
                        compute.SshPublicKeyArgs(
                            path="/home/meshadmin/.ssh/authorized_keys", key_data=settings.admin_ssh_key
                        )
                    ]
                )
                if settings.admin_ssh_key
                else None
            )
            compute.VirtualMachine(
                node,
                resource_group_name=rg.name,
                location=location,
                tags=t,
                hardware_profile=compute.HardwareProfileArgs(vm_size=spec.instance_type or settings.instance_type),
                network_profile=compute.NetworkProfileArgs(
                    network_interfaces=[compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True)]
                ),
                os_profile=compute.OSProfileArgs(
                    computer_name=node[:63],
                    admin_username="meshadmin",
                    custom_data=user_data.apply(_custom_data),
                    linux_configuration=compute.LinuxConfigurationArgs(disable_password_authentication=True, ssh=ssh),
                ),
                storage_profile=compute.StorageProfileArgs(
                    image_reference=compute.ImageReferenceArgs(
                        publisher=image[0], offer=image[1], sku=image[2], version=image[3]
                    ),
                    os_disk=compute.OSDiskArgs(
                        create_option="FromImage",
                        managed_disk=compute.ManagedDiskParametersArgs(storage_account_type="Premium_LRS"),
                    ),
                ),
                opts=child,
            )
            self.nodes.append({"name": node, "region": spec.region, "public_ip": ip.ip_address})
        self.register_outputs({"nodes": self.nodes})


PROVIDER = CloudProvider(name="azure", regions=REGIONS, component=AzureMediaRegion)
