"""AWS: the EC2 instance identity document and its `/rsa2048` signature (from IMDSv2).

Which signature: IMDS offers three. `/signature` is RSA with a 1024-bit key (the global certificate is
RSA-1024 with a SHA-1 self-signature), `/pkcs7` is DSA over SHA-1; `/rsa2048` is a PKCS#7 SignedData,
RSA-2048 over SHA-256, the strongest AWS offers, and its PKCS#7 shares the parser Azure needs anyway. So the
agent sends `document` (`/latest/dynamic/instance-identity/document`) and `signature`
(`/latest/dynamic/instance-identity/rsa2048`), and the operator configures AWS's *RSA-2048* certificates.

The certificates are AWS's self-signed per-region keys, used as pinned keys: their validity dates are not
checked (AWS's own recipe uses `-noverify`; some have passed their notAfter and still sign). The identity is
read from the signed content; the `document` sent alongside must say the same.

Freshness: AWS signs no issue time, only `pendingTime` (the instance's launch), and the document stays the
same for the instance's life. Replay is bounded by the caller's one-join-per-instance-id rule and, for fleets
that join at boot, by `max_age_s` on `pendingTime`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from meshctl.attest import cms
from meshctl.attest.errors import ClockSkew, Expired, Malformed, NotConfigured, SignatureInvalid, UnknownKey
from meshctl.attest.identity import (
    CLOCK_SKEW_S,
    Identity,
    b64decode,
    json_object,
    refuse_other_cloud,
    utc,
)
from meshctl.attest.trust import AwsTrust

_EXTRA = ("instanceType", "imageId", "architecture", "version", "privateIp", "kernelId", "ramdiskId")


def _time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise Malformed(f"AWS document: {what} missing")
    try:
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise Malformed(f"AWS document: {what} {value!r} is not a time") from None


def verify_aws(
    document: str,
    signature: str,
    trust: AwsTrust | None,
    now: datetime,
    *,
    max_age_s: float | None = None,
    skew_s: float = CLOCK_SKEW_S,
) -> Identity:
    """Verify an instance identity document against its `/rsa2048` PKCS#7 signature; return the identity."""
    refuse_other_cloud("aws", document, signature)
    if trust is None or not trust.certs:
        raise NotConfigured("no AWS trust roots are configured (MESH_ATTEST_TRUST_DIR/aws/<region>.pem)")
    if not signature or not signature.strip():
        raise Malformed("AWS: the signature is empty: send /latest/dynamic/instance-identity/rsa2048")
    sd = cms.parse_signed_data(b64decode(signature, "AWS rsa2048 signature"))
    signer = sd.signers[0]
    match = next((c for c in trust.certs if signer.names(c.certificate)), None)
    if match is None:
        raise UnknownKey(f"AWS: signed by a certificate that is not configured ({signer.describe()})")
    cms.verify_signer(sd, signer, match.certificate)
    claims = json_object(sd.content, "the signed AWS document")
    if document and document.strip() and json_object(document, "the AWS document") != claims:
        raise SignatureInvalid("AWS: the document differs from the one AWS signed")
    for key in ("accountId", "instanceId", "region"):
        if not isinstance(claims.get(key), str) or not claims[key]:
            raise Malformed(f"AWS document: {key} missing")
    region = claims["region"]
    if match.region is not None and match.region != region:
        raise SignatureInvalid(f"AWS: signed with the {match.region} certificate but says region {region}")
    now = utc(now)
    launched = _time(claims.get("pendingTime"), "pendingTime")
    if launched > now + timedelta(seconds=skew_s):
        raise ClockSkew(f"AWS: pendingTime {launched:%Y-%m-%dT%H:%M:%SZ} is in the future: check the clocks")
    if max_age_s is not None and now - launched > timedelta(seconds=max_age_s):
        raise Expired(
            f"AWS: the instance launched {(now - launched).total_seconds():.0f} s ago, over {max_age_s:.0f} s"
        )
    zone = claims.get("availabilityZone")
    return Identity(
        cloud="aws",
        account=claims["accountId"],
        instance_id=claims["instanceId"],
        cloud_region=region,
        zone=zone if isinstance(zone, str) and zone else None,
        issued_at=launched,
        extra={k: str(claims[k]) for k in _EXTRA if claims.get(k) is not None},
    )
