"""`--endpoint auto`: the node's public IP from its cloud's instance metadata service."""

from __future__ import annotations

import ipaddress

import httpx

METADATA = "http://169.254.169.254"


def _aws(client: httpx.Client) -> str:
    token = client.put(f"{METADATA}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token.raise_for_status()
    r = client.get(f"{METADATA}/latest/meta-data/public-ipv4", headers={"X-aws-ec2-metadata-token": token.text})
    r.raise_for_status()
    return r.text


def _gcp(client: httpx.Client) -> str:
    r = client.get(
        "http://metadata.google.internal/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip",
        headers={"Metadata-Flavor": "Google"},
    )
    r.raise_for_status()
    return r.text


def _azure(client: httpx.Client) -> str:
    r = client.get(
        f"{METADATA}/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress",
        params={"api-version": "2021-02-01", "format": "text"},
        headers={"Metadata": "true"},
    )
    r.raise_for_status()
    return r.text


LOOKUPS = {"aws": _aws, "gcp": _gcp, "azure": _azure}


def public_endpoint(region: str, listen_port: int, transport: httpx.BaseTransport | None = None) -> str:
    """ip:port for this node, asking the metadata service of the region's cloud."""
    cloud = region.split(":", 1)[0]
    lookup = LOOKUPS.get(cloud)
    if lookup is None:
        raise RuntimeError(f"--endpoint auto knows aws, gcp and azure, not {cloud!r}: give --endpoint IP:PORT")
    with httpx.Client(timeout=3, transport=transport) as client:
        try:
            ip = lookup(client).strip()
            ipaddress.ip_address(ip)
        except (httpx.HTTPError, ValueError) as exc:
            raise RuntimeError(f"--endpoint auto: the {cloud} metadata service gave no public IP ({exc})") from exc
    return f"{ip}:{listen_port}"
