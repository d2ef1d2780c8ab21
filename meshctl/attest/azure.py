"""Azure: the IMDS attested document, a PKCS#7 SignedData over JSON, with a nonce the controller gave out.

The agent gets a nonce (`GET /v1/join-nonce`, see meshctl.attest.nonce), asks
`/metadata/attested/document?api-version=2020-09-01&nonce=<nonce>` (header `Metadata: true`) and sends the
response (`{"encoding":"pkcs7","signature":"<base64>"}`, or only its `signature`). The content is JSON:
nonce, plan, timeStamp {createdOn, expiresOn} ("MM/DD/YY HH:MM:SS -0000"), vmId, subscriptionId, sku,
licenseType. The signer's certificate is carried inside (only the leaf); it must name a metadata domain
(`metadata.azure.com` or a subdomain, per Microsoft's validation guidance, checked on the SAN) and chain to
the configured roots through the configured intermediates (x509.verification, WebPKI rules for the CAs).
IMDS may answer from a cache with an *older* nonce: the agent should retry with a short pause when the
controller says NonceMismatch.

The Azure region cannot be learned from signed data offline. The attested document carries no location;
the signer's subdomain is not a documented claim; a Managed Identity token (`xms_mirid`) names the
subscription, resource group and VM but not the location; Vault's azure auth (`bound_locations`) and
SPIRE's azure_imds (`vm-location` selector) both ask Azure Resource Manager at login time, which needs
network and credentials at join time, and the issue rules that out. So the join policy decides it: an
Azure policy maps its subscriptions to ONE mesh region (`JoinPolicy.fixed_region`, required for Azure), and
a subscription may not appear in two Azure policies with different regions (`decide` refuses the node as
ambiguous). The region then follows from the signed `subscriptionId` alone, and a node that claims another
region is refused. The limit: one subscription per mesh region (the usual landing-zone layout; a Pulumi
stack per region can target its own subscription). `Identity.cloud_region` is None for Azure, and
`resource_group` stays None (it is not signed here; a later Managed Identity token could add it).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509 import verification as xv

from meshctl.attest import cms
from meshctl.attest.errors import (
    ClockSkew,
    Expired,
    Malformed,
    NonceMismatch,
    NotConfigured,
    UntrustedSigner,
)
from meshctl.attest.identity import CLOCK_SKEW_S, Identity, b64decode, json_object, refuse_other_cloud, utc
from meshctl.attest.nonce import NonceIssuer
from meshctl.attest.trust import AzureTrust

MAX_AGE_S = 600.0


def _time(stamps: object, key: str) -> datetime:
    value = stamps.get(key) if isinstance(stamps, dict) else None
    if not isinstance(value, str):
        raise Malformed(f"Azure document: timeStamp.{key} missing")
    try:
        return utc(datetime.strptime(value, "%m/%d/%y %H:%M:%S %z"))
    except ValueError:
        raise Malformed(f"Azure document: timeStamp.{key} {value!r} is not MM/DD/YY HH:MM:SS -0000") from None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def _check_chain(
    leaf: x509.Certificate, carried: tuple[x509.Certificate, ...], trust: AzureTrust, now: datetime
) -> str:
    names = _names(leaf)
    domain = next((n for n in names for d in trust.domains if n == d or n.endswith("." + d)), None)
    if domain is None:
        raise UntrustedSigner(
            f"Azure: the signer {names or '(unnamed)'} is not a metadata domain {list(trust.domains)}"
        )
    if not trust.roots:
        raise NotConfigured("no Azure root CAs are configured (MESH_ATTEST_TRUST_DIR/azure/roots/*.pem)")
    verifier = (
        xv.PolicyBuilder()
        .store(xv.Store(list(trust.roots)))
        .time(now.replace(tzinfo=None))
        .extension_policies(
            ca_policy=xv.ExtensionPolicy.webpki_defaults_ca(), ee_policy=xv.ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    intermediates = [*trust.intermediates, *(c for c in carried if c != leaf)]
    try:
        verifier.verify(leaf, intermediates)
    except xv.VerificationError as exc:
        raise UntrustedSigner(f"Azure: the signer certificate does not chain to a configured root ({exc})") from None
    return domain


def verify_azure(
    pkcs7_b64: str,
    trust: AzureTrust | None,
    expected_nonce: str | NonceIssuer,
    now: datetime,
    *,
    max_age_s: float = MAX_AGE_S,
    skew_s: float = CLOCK_SKEW_S,
) -> Identity:
    """Verify an attested document; `expected_nonce` is the exact nonce, or the issuer that checks its MAC."""
    refuse_other_cloud("azure", pkcs7_b64)
    if trust is None:
        raise NotConfigured("no Azure trust roots are configured (MESH_ATTEST_TRUST_DIR/azure)")
    text = (pkcs7_b64 or "").strip()
    if text.startswith("{"):
        outer = json_object(text, "the Azure attested document")
        if outer.get("encoding") != "pkcs7" or not isinstance(outer.get("signature"), str):
            raise Malformed('Azure: expected {"encoding": "pkcs7", "signature": ...}')
        text = outer["signature"]
    if not text:
        raise Malformed("Azure: the attested document is empty")
    sd = cms.parse_signed_data(b64decode(text, "Azure attested signature"))
    signer = sd.signers[0]
    leaf = next((c for c in sd.certificates if signer.names(c)), None)
    if leaf is None:
        raise UntrustedSigner(f"Azure: the signer's certificate is not carried in the document ({signer.describe()})")
    cms.verify_signer(sd, signer, leaf)
    now = utc(now)
    domain = _check_chain(leaf, sd.certificates, trust, now)
    claims = json_object(sd.content, "the signed Azure document")
    for key in ("vmId", "subscriptionId", "nonce"):
        if not isinstance(claims.get(key), str) or not claims[key]:
            raise Malformed(f"Azure document: {key} missing")
    nonce = claims["nonce"]
    if isinstance(expected_nonce, NonceIssuer):
        expected_nonce.check(nonce, now)
    elif not NonceIssuer.same(nonce, expected_nonce):
        raise NonceMismatch("Azure: the signed nonce is not the one given out (IMDS may have answered from cache)")
    created, expires = _time(claims.get("timeStamp"), "createdOn"), _time(claims.get("timeStamp"), "expiresOn")
    skew = timedelta(seconds=skew_s)
    if created > now + skew:
        raise ClockSkew(f"Azure: created {(created - now).total_seconds():.0f} s in the future: check the clocks")
    if now > expires + skew:
        raise Expired(f"Azure: the attested document expired at {expires:%Y-%m-%dT%H:%M:%SZ}")
    if now - created > timedelta(seconds=max_age_s) + skew:
        raise Expired(f"Azure: created {(now - created).total_seconds():.0f} s ago, over {max_age_s:.0f} s: stale")
    plan = claims["plan"] if isinstance(claims.get("plan"), dict) else {}
    extra = {k: str(claims[k]) for k in ("sku", "licenseType") if claims.get(k)}
    extra.update({f"plan_{k}": str(v) for k, v in plan.items() if v})
    extra["signer"] = domain
    return Identity(
        cloud="azure",
        account=claims["subscriptionId"],
        instance_id=claims["vmId"],
        cloud_region=None,
        zone=None,
        issued_at=created,
        extra=extra,
    )
