"""cloud-init user data: install WireGuard and the agent, write its config, start its unit.

The join token is in the user data, which anyone who may describe the instance can read: it
must be short-lived, single-region and limited in uses (`meshctl join-tokens create
--region R --ttl 900 --uses N`). The rendered text is only ever handled as a Pulumi secret.
"""

from __future__ import annotations

import yaml

AGENT_UNIT = """[Unit]
Description=meshctl probe agent (WireGuard overlay, STAMP probes, reports)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/opt/meshctl/bin/meshctl agent run --config /etc/meshctl/agent.yaml
Restart=always
RestartSec=2
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths=/var/lib/meshctl /run/wireguard /var/run/wireguard
StateDirectory=meshctl
StateDirectoryMode=0700
AmbientCapabilities=CAP_NET_ADMIN
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE

[Install]
WantedBy=multi-user.target
"""


def render(
    controller_url: str, region_id: str, join_token: str, agent_package: str = "meshctl", interface: str = "mesh0"
) -> str:
    """The #cloud-config document for one node."""
    agent_config = {
        "controller": controller_url,
        "region": region_id,
        "join_token": join_token,
        "endpoint": "auto",  # the agent asks the cloud's metadata service for its public IP
        "interface": interface,
        "state_dir": "/var/lib/meshctl",
    }
    doc = {
        "package_update": True,
        "packages": ["wireguard-tools", "python3-venv", "nftables"],
        "write_files": [
            {
                "path": "/etc/meshctl/agent.yaml",
                "permissions": "0600",
                "owner": "root:root",
                "content": yaml.safe_dump(agent_config, sort_keys=True),
            },
            {"path": "/etc/systemd/system/meshctl-agent.service", "permissions": "0644", "content": AGENT_UNIT},
        ],
        "runcmd": [
            ["python3", "-m", "venv", "/opt/meshctl"],
            ["/opt/meshctl/bin/pip", "install", "--quiet", agent_package],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "meshctl-agent.service"],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)
