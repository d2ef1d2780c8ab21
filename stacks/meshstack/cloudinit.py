"""cloud-init user data: install WireGuard and the agent, write its config, start its unit.

The agent comes from the wheel the stack names (`agentWheelUrl`), its dependencies from the
wheelhouse tarball it names (`agentWheelhouseUrl`, built by `make agent-wheel`); each is used
only if its sha256 matches (`agentWheelSha256`, `agentWheelhouseSha256`), and pip installs with
`--require-hashes --no-index`: every file it installs is pinned by hash, nothing is resolved by
name on a public index (`meshctl` there is another project). Without them the boot fails with a
clear message in /var/log/cloud-init-output.log and `cloud-init status`.

No secret travels in the user data (anyone who may describe the instance can read it): it
holds only the controller's URL and the mesh region, and the node joins by its cloud identity
(`join: attested`: the document its cloud signs, checked by the controller against its trust
roots and a join policy; see README.md).
"""

from __future__ import annotations

import base64
import gzip
import shlex
from pathlib import Path

import yaml

INSTALLER = "/usr/local/sbin/meshctl-install-agent"
# AWS: claims a free Elastic IP of the node's pool before the agent starts (claim_address.py)
ADDRESS_CLAIMER = "/usr/local/sbin/meshctl-claim-address"
# ReadWritePaths entries that may not exist are prefixed with '-' (else the unit fails with
# 226/NAMESPACE); /run/wireguard exists only with wireguard-go, not with kernel WireGuard.
AGENT_UNIT = """[Unit]
Description=meshctl probe agent (WireGuard overlay, STAMP probes, reports)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/opt/meshctl/bin/meshctl-agent run --config /etc/meshctl/agent.yaml
Restart=always
RestartSec=2
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
ReadWritePaths=-/var/lib/meshctl -/run/wireguard -/var/run/wireguard
StateDirectory=meshctl
StateDirectoryMode=0700
AmbientCapabilities=CAP_NET_ADMIN
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE

[Install]
WantedBy=multi-user.target
"""

INSTALL_SCRIPT = """#!/bin/sh
# Install the meshctl agent from the wheel and the wheelhouse the stack names, each only if its
# sha256 matches, with pip in hash-checking mode and no index; then start it.
set -eu
WHEEL_URL={url}
WHEEL_SHA256={sha256}
WHEELHOUSE_URL={wheelhouse_url}
WHEELHOUSE_SHA256={wheelhouse_sha256}
PREFIX=${{MESHCTL_PREFIX:-/opt/meshctl}}
fail() {{
  echo "meshctl-install-agent: $*" >&2
  logger -t meshctl-install-agent "$*" 2>/dev/null || true
  exit 1
}}
[ -n "$WHEEL_URL" ] && [ -n "$WHEEL_SHA256" ] || fail "no agent wheel: set meshctl-stacks:mesh.agentWheelUrl \\
and agentWheelSha256 in the stack config (the name meshctl on the public index is another project)"
[ -n "$WHEELHOUSE_URL" ] && [ -n "$WHEELHOUSE_SHA256" ] || fail "no agent wheelhouse: set \\
meshctl-stacks:mesh.agentWheelhouseUrl and agentWheelhouseSha256 (make agent-wheel builds it)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "python3 is older than 3.11: use Ubuntu 24.04"
dir=$(mktemp -d)
wheel="$dir/${{WHEEL_URL##*/}}"
curl -fsSL --proto '=https' --retry 5 -o "$wheel" "$WHEEL_URL" || fail "cannot download $WHEEL_URL"
echo "$WHEEL_SHA256  $wheel" | sha256sum -c --status - || fail "sha256 mismatch for $WHEEL_URL: not installed"
curl -fsSL --proto '=https' --retry 5 -o "$dir/wheelhouse.tar.gz" "$WHEELHOUSE_URL" \\
  || fail "cannot download $WHEELHOUSE_URL"
echo "$WHEELHOUSE_SHA256  $dir/wheelhouse.tar.gz" | sha256sum -c --status - \\
  || fail "sha256 mismatch for $WHEELHOUSE_URL: not installed"
tar -xzf "$dir/wheelhouse.tar.gz" -C "$dir" wheelhouse || fail "$WHEELHOUSE_URL is not a wheelhouse tarball"
req="$dir/wheelhouse/requirements-agent.txt"
# the agent wheel itself, pinned by the hash just checked (every line of a hash-checked install needs one)
printf 'meshctl[agent] @ file://%s --hash=sha256:%s\\n' "$wheel" "$WHEEL_SHA256" >> "$req"
python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --no-input --disable-pip-version-check --no-index --require-hashes \\
  --find-links "$dir/wheelhouse" -r "$req" || fail "pip could not install the agent from $WHEELHOUSE_URL"
rm -rf "$dir"
systemctl daemon-reload
systemctl enable --now meshctl-agent.service
"""


def render(
    controller_url: str,
    region_id: str,
    wheel_url: str | None = None,
    wheel_sha256: str | None = None,
    interface: str = "mesh0",
    wheelhouse_url: str | None = None,
    wheelhouse_sha256: str | None = None,
    address_pool: str | None = None,
) -> str:
    """The #cloud-config document for one node.

    With `address_pool` (AWS, staticAddresses), the node first claims a free Elastic IP tagged
    `meshctl-pool=<address_pool>` (`claim_address.py`, run before the agent is installed; it never
    fails the boot).
    """
    agent_config = {
        "controller": controller_url,
        "region": region_id,
        "join": "attested",
        "endpoint": "auto",  # the agent asks the cloud's metadata service for its public IP
        "interface": interface,
        "state_dir": "/var/lib/meshctl",
    }
    installer = INSTALL_SCRIPT.format(
        url=shlex.quote(wheel_url or ""),
        sha256=shlex.quote(wheel_sha256 or ""),
        wheelhouse_url=shlex.quote(wheelhouse_url or ""),
        wheelhouse_sha256=shlex.quote(wheelhouse_sha256 or ""),
    )
    files: list[dict[str, str]] = [
        {
            "path": "/etc/meshctl/agent.yaml",
            "permissions": "0600",
            "owner": "root:root",
            "content": yaml.safe_dump(agent_config, sort_keys=True),
        },
        {"path": "/etc/systemd/system/meshctl-agent.service", "permissions": "0644", "content": AGENT_UNIT},
        {"path": INSTALLER, "permissions": "0755", "owner": "root:root", "content": installer},
    ]
    # the installer is one script, `set -e`: a failed download or hash check stops before the unit is enabled
    commands: list[list[str]] = [[INSTALLER]]
    if address_pool is not None:
        # compressed: EC2 takes at most 16 KB of user data (cloud-init's write_files decodes it)
        source = (Path(__file__).parent / "claim_address.py").read_bytes()
        packed = base64.b64encode(gzip.compress(source, 9, mtime=0)).decode()
        files.append(
            {
                "path": ADDRESS_CLAIMER,
                "permissions": "0755",
                "owner": "root:root",
                "encoding": "gz+b64",
                "content": packed,
            }
        )
        commands.insert(0, [ADDRESS_CLAIMER, "--pool", address_pool])  # exits 0 whatever happens
    doc = {
        "package_update": True,
        "packages": ["wireguard-tools", "python3-venv", "nftables", "curl", "ca-certificates"],
        "write_files": files,
        "runcmd": commands,
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)
