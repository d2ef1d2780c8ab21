"""GCP: the metadata server's instance identity token (`format=full`), an RS256 JWT signed by Google.

The agent asks `/computeMetadata/v1/instance/service-accounts/default/identity?audience=<controller
URL>&format=full` (header `Metadata-Flavor: Google`). Google signs project, zone and instance id under
`google.compute_engine`; the keys are Google's JWKS (`https://www.googleapis.com/oauth2/v3/certs`), which
the operator saves into the trust directory (no network at join time). A token lives one hour; we accept
it only within `max_age_s` of its `iat`, with `skew_s` for clocks.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from meshctl.attest.errors import (
    ClockSkew,
    Expired,
    Malformed,
    NotConfigured,
    NotYetValid,
    SignatureInvalid,
    UnknownKey,
    WrongAudience,
)
from meshctl.attest.identity import CLOCK_SKEW_S, Identity, json_object, refuse_other_cloud, utc
from meshctl.attest.trust import GcpTrust

MAX_AGE_S = 600.0


def _part(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Malformed(f"GCP token: the {what} is not base64url") from None


def _when(claims: dict[str, Any], key: str) -> datetime | None:
    value = claims.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed(f"GCP token: {key} is not a number")
    return datetime.fromtimestamp(value, tz=UTC)


def zone_region(zone: str) -> str:
    """`europe-west1-b` -> `europe-west1`."""
    head, sep, _ = zone.rpartition("-")
    if not sep or not head:
        raise Malformed(f"GCP token: zone {zone!r} is not <region>-<letter>")
    return head


def verify_gcp(
    token: str,
    trust: GcpTrust | None,
    audience: str,
    now: datetime,
    max_age_s: float = MAX_AGE_S,
    *,
    skew_s: float = CLOCK_SKEW_S,
) -> Identity:
    """Verify a GCP identity token for `audience`; return the instance's identity."""
    refuse_other_cloud("gcp", token)
    if trust is None or not trust.keys:
        raise NotConfigured("no GCP keys are configured (MESH_ATTEST_TRUST_DIR/gcp/jwks.json)")
    parts = (token or "").strip().split(".")
    if len(parts) != 3:
        raise Malformed("GCP token: not a JWT (header.payload.signature)")
    header = json_object(_part(parts[0], "header"), "GCP token header")
    claims = json_object(_part(parts[1], "payload"), "GCP token payload")
    if header.get("alg") != "RS256":
        raise SignatureInvalid(f"GCP token: algorithm {header.get('alg')!r} is not RS256")
    key = trust.keys.get(str(header.get("kid")))
    if key is None:
        raise UnknownKey(f"GCP token: key id {header.get('kid')!r} is not in the configured JWKS (refresh it?)")
    try:
        key.verify(_part(parts[2], "signature"), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureInvalid("GCP token: the signature does not verify: forged or altered") from None
    if claims.get("iss") not in trust.issuers:
        raise WrongAudience(f"GCP token: issuer {claims.get('iss')!r} is not Google")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise WrongAudience(f"GCP token: audience {aud!r} is not this controller ({audience})")
    now, skew = utc(now), timedelta(seconds=skew_s)
    exp, iat, nbf = _when(claims, "exp"), _when(claims, "iat"), _when(claims, "nbf")
    if exp is None or iat is None:
        raise Malformed("GCP token: exp or iat missing")
    if now > exp + skew:
        raise Expired(f"GCP token: expired at {exp:%Y-%m-%dT%H:%M:%SZ}")
    if iat > now + skew:
        raise ClockSkew(f"GCP token: issued {(iat - now).total_seconds():.0f} s in the future: check the clocks")
    if nbf is not None and nbf > now + skew:
        raise NotYetValid(f"GCP token: not valid before {nbf:%Y-%m-%dT%H:%M:%SZ}")
    if now - iat > timedelta(seconds=max_age_s) + skew:
        raise Expired(f"GCP token: issued {(now - iat).total_seconds():.0f} s ago, over {max_age_s:.0f} s: stale")
    ce = (claims.get("google") or {}).get("compute_engine") if isinstance(claims.get("google"), dict) else None
    if not isinstance(ce, dict):
        raise Malformed("GCP token: no google.compute_engine claims: request the token with format=full")
    for k in ("project_id", "zone", "instance_id"):
        if not isinstance(ce.get(k), str) or not ce[k]:
            raise Malformed(f"GCP token: google.compute_engine.{k} missing")
    extra = {k: str(ce[k]) for k in ("project_number", "instance_name", "instance_creation_timestamp") if k in ce}
    if isinstance(ce.get("license_id"), list):
        extra["license_id"] = ",".join(str(x) for x in ce["license_id"])
    if claims.get("sub"):
        extra["service_account_id"] = str(claims["sub"])
    email = claims.get("email") if isinstance(claims.get("email"), str) else None
    return Identity(
        cloud="gcp",
        account=ce["project_id"],
        instance_id=ce["instance_id"],
        cloud_region=zone_region(ce["zone"]),
        zone=ce["zone"],
        issued_at=iat,
        service_account=email,
        extra=extra,
    )
