"""Attested join, the verification core: each cloud's real document format, signed by keys made here.

A good document yields the identity its cloud signed; each bad one is refused with its own error class and
a one-line reason. Join policies: who is admitted, where they land, and which rule refused.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from pydantic import ValidationError

import meshctl.attest as attest
from meshctl.attest import (
    Admitted,
    ClockSkew,
    Expired,
    Identity,
    JoinPolicy,
    Malformed,
    NonceIssuer,
    NonceMismatch,
    NotConfigured,
    Refused,
    SignatureInvalid,
    UnknownKey,
    UntrustedSigner,
    WrongAudience,
    WrongCloud,
    conflicts,
    decide,
    load_trust,
    verify_aws,
    verify_azure,
    verify_gcp,
)
from meshctl.attest.testing import AwsSigner, AzureSigner, GcpSigner, write_trust_dir

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _now() -> None:
    """NOW is the time of the test, not of the import: the signers read the clock as they sign."""
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0)


AUD = "https://mesh.example.net"
SECRET = b"k" * 32


@pytest.fixture(scope="module")
def aws() -> AwsSigner:
    return AwsSigner("eu-west-1")


@pytest.fixture(scope="module")
def gcp() -> GcpSigner:
    return GcpSigner()


@pytest.fixture(scope="module")
def azure() -> AzureSigner:
    return AzureSigner()


def test_public_surface_is_exactly_all() -> None:
    assert all(hasattr(attest, name) for name in attest.__all__)
    assert sorted(attest.__all__) == sorted(set(attest.__all__))


# --- AWS: instance identity document + /rsa2048 PKCS#7 -------------------------------------------------


def test_aws_good_document_gives_the_signed_identity(aws: AwsSigner) -> None:
    doc, sig = aws.sign(aws.document(account="210987654321", instance_id="i-0aaa", pending=NOW - timedelta(minutes=2)))
    ident = verify_aws(doc, sig, aws.trust(), NOW)
    assert (ident.cloud, ident.account, ident.instance_id) == ("aws", "210987654321", "i-0aaa")
    assert (ident.cloud_region, ident.zone, ident.default_region()) == ("eu-west-1", "eu-west-1a", "aws:eu-west-1")
    assert ident.extra["instanceType"] == "c6in.large"
    assert NOW - ident.issued_at == timedelta(minutes=2)


def test_aws_forged_signature_is_refused(aws: AwsSigner) -> None:
    doc, sig = aws.sign(aws.document())
    blob = bytearray(base64.b64decode(sig))
    blob[-1] ^= 0x01  # the RSA signature is the last field
    with pytest.raises(SignatureInvalid, match="forged or altered"):
        verify_aws(doc, base64.b64encode(bytes(blob)).decode(), aws.trust(), NOW)


def test_aws_altered_document_is_refused(aws: AwsSigner) -> None:
    doc, sig = aws.sign(aws.document(account="111122223333"))
    with pytest.raises(SignatureInvalid, match="differs from the one AWS signed"):
        verify_aws(doc.replace("111122223333", "999988887777"), sig, aws.trust(), NOW)


def test_aws_altered_signed_content_is_refused(aws: AwsSigner) -> None:
    _, sig = aws.sign(aws.document(account="111122223333"))
    blob = base64.b64decode(sig).replace(b"111122223333", b"999988887777")
    with pytest.raises(SignatureInvalid, match="altered"):
        verify_aws("", base64.b64encode(blob).decode(), aws.trust(), NOW)


def test_aws_certificate_not_configured_is_unknown_key(aws: AwsSigner) -> None:
    other = AwsSigner("eu-west-1")
    doc, sig = other.sign(other.document())
    with pytest.raises(UnknownKey, match="not configured"):
        verify_aws(doc, sig, aws.trust(), NOW)


def test_aws_document_of_another_region_than_its_certificate_is_refused(aws: AwsSigner) -> None:
    doc, sig = aws.sign(aws.document(region="us-east-1"))
    with pytest.raises(SignatureInvalid, match="eu-west-1 certificate but says region us-east-1"):
        verify_aws(doc, sig, aws.trust(), NOW)
    assert verify_aws(doc, sig, aws.trust(bind_region=False), NOW).cloud_region == "us-east-1"


def test_aws_launch_time_freshness(aws: AwsSigner) -> None:
    doc, sig = aws.sign(aws.document(pending=NOW - timedelta(hours=3)))
    assert verify_aws(doc, sig, aws.trust(), NOW).account  # no max age by default: AWS signs no issue time
    with pytest.raises(Expired, match="launched 10800 s ago"):
        verify_aws(doc, sig, aws.trust(), NOW, max_age_s=3600)
    doc, sig = aws.sign(aws.document(pending=NOW + timedelta(minutes=5)))
    with pytest.raises(ClockSkew, match="in the future"):
        verify_aws(doc, sig, aws.trust(), NOW)


def test_aws_malformed_and_unconfigured(aws: AwsSigner) -> None:
    doc, sig = aws.sign(aws.document())
    with pytest.raises(Malformed, match="not base64"):
        verify_aws(doc, "%%% not base64 %%%", aws.trust(), NOW)
    with pytest.raises(Malformed, match="DER"):
        verify_aws(doc, base64.b64encode(b"\x30\x03\x02\x01").decode(), aws.trust(), NOW)
    with pytest.raises(Malformed, match="signature is empty"):
        verify_aws(doc, "", aws.trust(), NOW)
    with pytest.raises(NotConfigured):
        verify_aws(doc, sig, None, NOW)


def test_other_clouds_documents_sent_as_aws(gcp: GcpSigner, azure: AzureSigner) -> None:
    token = gcp.token(audience=AUD, now=NOW)
    with pytest.raises(WrongCloud, match="gcp identity document, sent as aws"):
        verify_aws(token, "", AwsSigner().trust(), NOW)
    with pytest.raises(WrongCloud, match="azure identity document, sent as aws"):
        verify_aws("", azure.attested("n0nce", now=NOW), AwsSigner().trust(), NOW)


# --- GCP: metadata identity token (RS256 JWT, format=full) -------------------------------------------------


def test_gcp_good_token_gives_the_signed_identity(gcp: GcpSigner) -> None:
    ident = verify_gcp(gcp.token(audience=AUD, now=NOW, zone="asia-southeast1-c"), gcp.trust(), AUD, NOW)
    assert (ident.cloud, ident.account, ident.instance_id) == ("gcp", "mesh-prod", "4340508760561261530")
    assert (ident.cloud_region, ident.zone) == ("asia-southeast1", "asia-southeast1-c")
    assert ident.service_account == "mesh-node@mesh-prod.iam.gserviceaccount.com"
    assert ident.extra["project_number"] == "716149158341"
    assert ident.issued_at == NOW


def test_gcp_wrong_audience_and_issuer(gcp: GcpSigner) -> None:
    with pytest.raises(WrongAudience, match=r"audience 'https://other\.example' is not this controller"):
        verify_gcp(gcp.token(audience="https://other.example", now=NOW), gcp.trust(), AUD, NOW)
    claims = gcp.claims(audience=AUD, now=NOW) | {"iss": "https://evil.example"}
    with pytest.raises(WrongAudience, match="issuer"):
        verify_gcp(gcp.encode(claims), gcp.trust(), AUD, NOW)


def test_gcp_expired_stale_and_future_tokens(gcp: GcpSigner) -> None:
    token = gcp.token(audience=AUD, now=NOW)
    with pytest.raises(Expired, match="expired at"):
        verify_gcp(token, gcp.trust(), AUD, NOW + timedelta(hours=2))
    with pytest.raises(Expired, match="1200 s ago, over 600 s: stale"):
        verify_gcp(token, gcp.trust(), AUD, NOW + timedelta(minutes=20))
    assert verify_gcp(token, gcp.trust(), AUD, NOW + timedelta(minutes=20), max_age_s=1800).account
    with pytest.raises(ClockSkew, match="in the future"):
        verify_gcp(token, gcp.trust(), AUD, NOW - timedelta(minutes=5))


def test_gcp_unknown_key_forged_and_altered(gcp: GcpSigner) -> None:
    claims = gcp.claims(audience=AUD, now=NOW)
    with pytest.raises(UnknownKey, match="not in the configured JWKS"):
        verify_gcp(gcp.encode(claims, kid="rotated-away"), gcp.trust(), AUD, NOW)
    forged = gcp.encode(claims, key=GcpSigner().key)  # right kid, wrong key
    with pytest.raises(SignatureInvalid, match="forged or altered"):
        verify_gcp(forged, gcp.trust(), AUD, NOW)
    head, _, sig = gcp.encode(claims).split(".")
    claims["google"]["compute_engine"]["project_id"] = "someone-else"
    _, body, _ = gcp.encode(claims).split(".")
    with pytest.raises(SignatureInvalid):
        verify_gcp(f"{head}.{body}.{sig}", gcp.trust(), AUD, NOW)


def test_gcp_alg_none_and_malformed(gcp: GcpSigner) -> None:
    def part(o: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()

    unsigned = part({"alg": "none", "kid": gcp.kid}) + "." + part(gcp.claims(audience=AUD, now=NOW)) + "."
    with pytest.raises(SignatureInvalid, match="not RS256"):
        verify_gcp(unsigned, gcp.trust(), AUD, NOW)
    with pytest.raises(Malformed, match="not a JWT"):
        verify_gcp("abc", gcp.trust(), AUD, NOW)
    claims = gcp.claims(audience=AUD, now=NOW)
    del claims["google"]
    with pytest.raises(Malformed, match="format=full"):
        verify_gcp(gcp.encode(claims), gcp.trust(), AUD, NOW)
    with pytest.raises(NotConfigured):
        verify_gcp(gcp.token(audience=AUD, now=NOW), None, AUD, NOW)


def test_other_clouds_documents_sent_as_gcp(gcp: GcpSigner) -> None:
    signer = AwsSigner()
    doc, _ = signer.sign(signer.document())
    with pytest.raises(WrongCloud, match="aws identity document, sent as gcp"):
        verify_gcp(doc, gcp.trust(), AUD, NOW)


# --- Azure: IMDS attested document (PKCS#7) with the controller's nonce -----------------------------------


def test_azure_good_document_with_an_issued_nonce(azure: AzureSigner) -> None:
    issuer = NonceIssuer(SECRET)
    nonce = issuer.issue(NOW)
    body = azure.attested(nonce, now=NOW, subscription="sub-1", vm_id="vm-1")
    ident = verify_azure(body, azure.trust(), issuer, NOW + timedelta(seconds=30))
    assert (ident.cloud, ident.account, ident.instance_id) == ("azure", "sub-1", "vm-1")
    assert ident.cloud_region is None and ident.default_region() is None  # Azure signs no region
    assert ident.extra["signer"] == "metadata.azure.com"
    # the bare signature works too, and so does the exact nonce instead of the issuer
    sig = json.loads(body)["signature"]
    assert verify_azure(sig, azure.trust(), nonce, NOW).account == "sub-1"


def test_azure_signed_attributes_variant_and_subdomain_signer() -> None:
    signer = AzureSigner(domain="eastus.metadata.azure.com")
    content = signer.content("abc123", now=NOW)
    blob = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(signer.cert, signer.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    ident = verify_azure(base64.b64encode(blob).decode(), signer.trust(), "abc123", NOW)
    assert ident.extra["signer"] == "eastus.metadata.azure.com"


def test_azure_wrong_forged_and_expired_nonces(azure: AzureSigner) -> None:
    issuer = NonceIssuer(SECRET, ttl_s=300)
    nonce = issuer.issue(NOW)
    with pytest.raises(NonceMismatch, match="not the one given out"):
        verify_azure(azure.attested(nonce, now=NOW), azure.trust(), issuer.issue(NOW), NOW)
    forged = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))
    with pytest.raises(NonceMismatch, match="not given out by this controller"):
        verify_azure(azure.attested(forged, now=NOW), azure.trust(), issuer, NOW)
    later = NOW + timedelta(seconds=400)
    with pytest.raises(Expired, match="join nonce has expired"):
        verify_azure(azure.attested(nonce, now=later), azure.trust(), issuer, later)


def test_azure_forged_and_altered_documents(azure: AzureSigner) -> None:
    content = azure.content("n1", now=NOW, subscription="sub-1")
    forged = azure.signed_data(content, key=AzureSigner().key)
    with pytest.raises(SignatureInvalid, match="forged or altered"):
        verify_azure(base64.b64encode(forged).decode(), azure.trust(), "n1", NOW)
    altered = azure.signed_data(content).replace(b'"sub-1"', b'"sub-2"')
    with pytest.raises(SignatureInvalid):
        verify_azure(base64.b64encode(altered).decode(), azure.trust(), "n1", NOW)


def test_azure_signer_must_chain_and_name_a_metadata_domain(azure: AzureSigner) -> None:
    stranger = AzureSigner()
    with pytest.raises(UntrustedSigner, match="does not chain to a configured root"):
        verify_azure(stranger.attested("n1", now=NOW), azure.trust(), "n1", NOW)
    impostor = AzureSigner(domain="metadata.azure.com.evil.example")
    with pytest.raises(UntrustedSigner, match="not a metadata domain"):
        verify_azure(impostor.attested("n1", now=NOW), impostor.trust(), "n1", NOW)
    bare = azure.signed_data(azure.content("n1", now=NOW), certs=[])
    with pytest.raises(UntrustedSigner, match="not carried"):
        verify_azure(base64.b64encode(bare).decode(), azure.trust(), "n1", NOW)


def test_azure_document_times(azure: AzureSigner) -> None:
    body = azure.attested("n1", now=NOW, lifetime_s=300)
    with pytest.raises(Expired, match="expired at"):
        verify_azure(body, azure.trust(), "n1", NOW + timedelta(minutes=10))
    body = azure.attested("n1", now=NOW)  # six hours' life, but created 20 minutes before it is checked
    with pytest.raises(Expired, match="stale"):
        verify_azure(body, azure.trust(), "n1", NOW + timedelta(minutes=20))
    with pytest.raises(ClockSkew, match="in the future"):
        verify_azure(body, azure.trust(), "n1", NOW - timedelta(minutes=5))


def test_azure_malformed_and_wrong_cloud(azure: AzureSigner, gcp: GcpSigner) -> None:
    with pytest.raises(Malformed, match="encoding"):
        verify_azure('{"encoding": "base64", "signature": "x"}', azure.trust(), "n1", NOW)
    with pytest.raises(Malformed):
        verify_azure("bm90IHBrY3M3", azure.trust(), "n1", NOW)
    with pytest.raises(WrongCloud, match="gcp identity document, sent as azure"):
        verify_azure(gcp.token(audience=AUD, now=NOW), azure.trust(), "n1", NOW)
    signer = AwsSigner()
    _, sig = signer.sign(signer.document())
    with pytest.raises(WrongCloud, match="aws identity document, sent as azure"):
        verify_azure(sig, azure.trust(), "n1", NOW)


# --- trust directory and nonces ---------------------------------------------------------------------------


def test_load_trust_reads_the_documented_layout(
    tmp_path: Path, aws: AwsSigner, gcp: GcpSigner, azure: AzureSigner
) -> None:
    trust = load_trust(write_trust_dir(tmp_path, aws=[aws], gcp=gcp, azure=azure))
    doc, sig = aws.sign(aws.document())
    assert verify_aws(doc, sig, trust.aws, NOW).cloud_region == "eu-west-1"
    assert verify_gcp(gcp.token(audience=AUD, now=NOW), trust.gcp, AUD, NOW).account == "mesh-prod"
    assert verify_azure(azure.attested("n1", now=NOW), trust.azure, "n1", NOW).cloud == "azure"
    assert load_trust(tmp_path / "missing") == attest.Trust()


def test_load_trust_names_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "aws").mkdir()
    (tmp_path / "aws" / "us-east-1.pem").write_text("not a certificate")
    with pytest.raises(Malformed, match=r"us-east-1\.pem"):
        load_trust(tmp_path)


def test_nonces_are_checked_by_any_replica_and_survive_key_rotation() -> None:
    replica_a, replica_b = NonceIssuer(SECRET), NonceIssuer(SECRET)
    nonce = replica_a.issue(NOW)
    assert len(nonce) == 32 and nonce.isalnum()
    replica_b.check(nonce, NOW + timedelta(seconds=299))
    assert replica_b.expiry(nonce) == NOW + timedelta(seconds=300)
    NonceIssuer([b"n" * 32, SECRET]).check(nonce, NOW)  # rotated: the old secret still verifies
    with pytest.raises(NonceMismatch):
        NonceIssuer(b"n" * 32).check(nonce, NOW)
    with pytest.raises(NonceMismatch, match="bad format"):
        replica_b.check("short", NOW)
    assert replica_a.issue(NOW) != nonce
    with pytest.raises(ValueError):
        NonceIssuer(b"short")


# --- join policies -----------------------------------------------------------------------------------------


def ident(cloud: str = "aws", account: str = "111122223333", region: str | None = "eu-west-1", **kw) -> Identity:
    return Identity(
        cloud=cloud, account=account, instance_id="i-1", cloud_region=region, zone=None, issued_at=NOW, **kw
    )


AWS_ANY = JoinPolicy(id="aws-prod", cloud="aws", accounts=("111122223333",), any_region=True, max_nodes_per_region=2)


def test_policy_admits_with_the_default_region_and_an_explicit_mapping() -> None:
    assert decide(ident(), [AWS_ANY], {}) == Admitted("aws:eu-west-1", "aws-prod")
    mapped = JoinPolicy(id="eu", cloud="aws", accounts=("111122223333",), regions={"eu-west-1": "aws:dublin"})
    assert decide(ident(), [mapped], {}) == Admitted("aws:dublin", "eu")


def test_policy_refusals_name_their_rule() -> None:
    def rule(verdict: Admitted | Refused) -> str:
        assert isinstance(verdict, Refused), verdict
        return verdict.rule

    assert rule(decide(ident(cloud="gcp"), [AWS_ANY], {})) == "cloud"
    refused = decide(ident(account="999"), [AWS_ANY], {})
    assert (
        isinstance(refused, Refused) and refused.rule == "account" and "999 is not in any join policy" in refused.reason
    )
    listed = JoinPolicy(id="eu", cloud="aws", accounts=("111122223333",), regions={"eu-west-1": "aws:eu-west-1"})
    assert rule(decide(ident(region="us-east-1"), [listed], {})) == "region"
    assert rule(decide(ident(), [AWS_ANY], {"aws:eu-west-1": 2})) == "cap"
    assert decide(ident(), [AWS_ANY], {"aws:eu-west-1": 1}) == Admitted("aws:eu-west-1", "aws-prod")
    assert rule(decide(ident(), [AWS_ANY], {}, claimed_region="aws:us-east-1")) == "claimed_region"


def test_policy_conditions_on_service_accounts_tags_and_resource_groups() -> None:
    gcp = JoinPolicy(
        id="gcp",
        cloud="gcp",
        accounts=("mesh-prod",),
        any_region=True,
        service_accounts=("mesh-node@mesh-prod.iam.gserviceaccount.com",),
    )
    node = ident(cloud="gcp", account="mesh-prod", region="europe-west1")
    verdict = decide(node, [gcp], {})
    assert isinstance(verdict, Refused) and verdict.rule == "service_account" and verdict.policy_id == "gcp"
    ok = ident(
        cloud="gcp",
        account="mesh-prod",
        region="europe-west1",
        service_account="mesh-node@mesh-prod.iam.gserviceaccount.com",
    )
    assert decide(ok, [gcp], {}) == Admitted("gcp:europe-west1", "gcp")
    tagged = AWS_ANY.model_copy(update={"tags": {"role": "media"}})
    verdict = decide(ident(), [tagged], {})
    assert isinstance(verdict, Refused) and verdict.rule == "tags" and "not among the signed claims" in verdict.reason
    assert isinstance(decide(ident(tags={"role": "media"}), [tagged], {}), Admitted)
    az = JoinPolicy(
        id="az", cloud="azure", accounts=("sub-1",), fixed_region="azure:westeurope", resource_groups=("rg",)
    )
    verdict = decide(ident(cloud="azure", account="sub-1", region=None), [az], {})
    assert isinstance(verdict, Refused) and verdict.rule == "resource_group"


def test_azure_region_follows_the_subscription_only() -> None:
    west = JoinPolicy(id="az-west", cloud="azure", accounts=("sub-w",), fixed_region="azure:westeurope")
    north = JoinPolicy(id="az-north", cloud="azure", accounts=("sub-n",), fixed_region="azure:northeurope")
    node = ident(cloud="azure", account="sub-n", region=None)
    assert decide(node, [west, north], {}) == Admitted("azure:northeurope", "az-north")
    verdict = decide(node, [west, north], {}, claimed_region="azure:westeurope")
    assert isinstance(verdict, Refused) and verdict.rule == "claimed_region"
    both = west.model_copy(update={"accounts": ("sub-w", "sub-n")})
    verdict = decide(node, [both, north], {})
    assert isinstance(verdict, Refused) and verdict.rule == "ambiguous"
    assert conflicts(both, [north]) == ["sub-n already lands in azure:northeurope by policy az-north"]
    assert conflicts(west, [north]) == []


def test_policy_validation() -> None:
    with pytest.raises(ValidationError, match="sign no region"):
        JoinPolicy(id="az", cloud="azure", accounts=("s",), any_region=True)
    with pytest.raises(ValidationError, match="outside cloud aws"):
        JoinPolicy(id="p", cloud="aws", accounts=("1",), regions={"eu-west-1": "gcp:europe-west1"})
    with pytest.raises(ValidationError, match="say where nodes land"):
        JoinPolicy(id="p", cloud="aws", accounts=("1",))
    with pytest.raises(ValidationError):
        JoinPolicy(id="p", cloud="aws", accounts=(), any_region=True)
    with pytest.raises(ValidationError, match="region id"):
        JoinPolicy(id="p", cloud="aws", accounts=("1",), regions={"eu-west-1": "dublin"})
