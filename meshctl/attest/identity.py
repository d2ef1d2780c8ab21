"""`Identity`: what a verified cloud document proves about a node (signed claims only)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meshctl.attest.errors import Malformed, WrongCloud

CLOCK_SKEW_S = 60.0


@dataclass(frozen=True)
class Identity:
    """A node's cloud identity, every field taken from signed claims.

    `account` is the AWS account id, GCP project id or Azure subscription id. `cloud_region` and `zone` are
    None when the document does not sign them (Azure: see meshctl.attest.azure). `issued_at` is when the
    cloud signed the document (AWS: the instance's launch, `pendingTime`, the only time AWS signs).
    `service_account` (GCP email) and `resource_group` (Azure; None from the attested document) are None when
    unknown; `tags` holds only signed tags (none of today's three documents sign any). `extra` keeps the other
    signed claims (instance type, image, project number, vmId, sku...) as strings, for events and display.
    """

    cloud: str
    account: str
    instance_id: str
    cloud_region: str | None
    zone: str | None
    issued_at: datetime
    service_account: str | None = None
    resource_group: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def default_region(self) -> str | None:
        """`<cloud>:<cloud-region>`, or None when the cloud region is not signed."""
        return f"{self.cloud}:{self.cloud_region}" if self.cloud_region else None


def utc(now: datetime) -> datetime:
    """`now` as an aware UTC datetime (naive values are taken as UTC)."""
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"{what} is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object")
    return value


def b64decode(text: str, what: str) -> bytes:
    """Standard base64, tolerating whitespace and PEM armour lines."""
    lines = [ln for ln in text.strip().splitlines() if not ln.startswith("-----")]
    try:
        return base64.b64decode("".join("".join(lines).split()), validate=True)
    except (binascii.Error, ValueError):
        raise Malformed(f"{what} is not base64") from None


def sniff_cloud(document: str, signature: str = "") -> str | None:
    """Which cloud's format `document`/`signature` look like: 'aws', 'gcp', 'azure' or None.

    Only used to name a WrongCloud mistake precisely; never to admit anything.
    """
    text = (document or signature or "").strip()
    parts = text.split(".")
    if len(parts) == 3 and text.startswith("eyJ"):
        return "gcp"
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if isinstance(obj, dict):
            if obj.get("encoding") == "pkcs7" or "vmId" in obj:
                return "azure"
            if "accountId" in obj and "instanceId" in obj:
                return "aws"
        return None
    try:
        raw = b64decode(text, "signature")
    except Malformed:
        return None
    if b"vmId" in raw and b"subscriptionId" in raw:
        return "azure"
    if b"accountId" in raw and b"instanceId" in raw:
        return "aws"
    return None


def refuse_other_cloud(expected: str, document: str, signature: str = "") -> None:
    """Raise WrongCloud when the input is recognisably another cloud's document."""
    seen = sniff_cloud(document, signature)
    if seen is not None and seen != expected:
        raise WrongCloud(f"this is a {seen} identity document, sent as {expected}")
