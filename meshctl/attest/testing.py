"""Test fixtures: sign identity documents in each cloud's real format with keys made on the spot.

For unit, API and lab tests (a fake metadata service can serve these). Nothing here is used in production.

    aws = AwsSigner("us-east-1");   doc, sig = aws.sign(aws.document(account="111122223333"))
    gcp = GcpSigner();              token = gcp.token(audience="https://mesh.example", now=now)
    az = AzureSigner();             body = az.attested(nonce, now=now, subscription="...")
    write_trust_dir(tmp_path, aws=[aws], gcp=gcp, azure=az)   # the MESH_ATTEST_TRUST_DIR layout
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshctl.attest import der
from meshctl.attest.trust import AwsCert, AwsTrust, AzureTrust, GcpTrust


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshctl test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def make_cert(
    cn: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    *,
    ca: bool = False,
    dns: Sequence[str] = (),
    now: datetime | None = None,
    days: int = 365,
) -> x509.Certificate:
    """A certificate for `key`, self-signed unless `issuer` (cert, key) is given; CA or leaf."""
    now = now or datetime.now(UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class AwsSigner:
    """AWS's per-region RSA-2048 signing certificate, and `/rsa2048`-style PKCS#7 signatures."""

    def __init__(self, region: str = "us-east-1") -> None:
        self.region = region
        self.key = _key()
        self.cert = make_cert("ec2.amazonaws.com", self.key, ca=True, days=3650)

    def trust(self, bind_region: bool = True) -> AwsTrust:
        return AwsTrust((AwsCert(self.cert, self.region if bind_region else None, "test"),))

    def document(
        self,
        *,
        account: str = "111122223333",
        instance_id: str = "i-0123456789abcdef0",
        region: str | None = None,
        pending: datetime | None = None,
        **extra: Any,
    ) -> str:
        """An instance identity document, formatted as IMDS serves it."""
        region = region or self.region
        pending = pending or datetime.now(UTC) - timedelta(minutes=2)
        doc: dict[str, Any] = {
            "accountId": account,
            "architecture": "x86_64",
            "availabilityZone": f"{region}a",
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": "ami-0abcdef1234567890",
            "instanceId": instance_id,
            "instanceType": "c6in.large",
            "kernelId": None,
            "pendingTime": pending.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "privateIp": "10.0.1.23",
            "ramdiskId": None,
            "region": region,
            "version": "2017-09-30",
        }
        doc.update(extra)
        return json.dumps(doc, indent=2, separators=(",", " : "))

    def sign(self, document: str) -> tuple[str, str]:
        """(document, signature): the signature as `/latest/dynamic/instance-identity/rsa2048` returns it."""
        blob = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(document.encode())
            .add_signer(self.cert, self.key, hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCerts])
        )
        return document, base64.encodebytes(blob).decode()


class GcpSigner:
    """A Google-like signing key in a JWKS, and metadata-server identity tokens (`format=full`)."""

    def __init__(self) -> None:
        self.key = _key()
        self.kid = secrets.token_hex(20)

    def jwks(self) -> dict[str, Any]:
        nums = self.key.public_key().public_numbers()

        def b64(n: int) -> str:
            return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

        return {
            "keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": b64(nums.n), "e": b64(nums.e)}]
        }

    def trust(self) -> GcpTrust:
        return GcpTrust.from_jwks(self.jwks())

    def claims(
        self,
        *,
        audience: str,
        now: datetime,
        project: str = "mesh-prod",
        zone: str = "europe-west1-b",
        instance_id: str = "4340508760561261530",
        email: str = "mesh-node@mesh-prod.iam.gserviceaccount.com",
        lifetime_s: int = 3600,
    ) -> dict[str, Any]:
        iat = int(now.timestamp())
        return {
            "aud": audience,
            "azp": "110987294251917851298",
            "email": email,
            "email_verified": True,
            "exp": iat + lifetime_s,
            "iat": iat,
            "iss": "https://accounts.google.com",
            "sub": "110987294251917851298",
            "google": {
                "compute_engine": {
                    "instance_creation_timestamp": iat - 300,
                    "instance_id": instance_id,
                    "instance_name": "mesh-node-1",
                    "project_id": project,
                    "project_number": 716149158341,
                    "zone": zone,
                }
            },
        }

    def encode(self, claims: dict[str, Any], *, kid: str | None = None, key: rsa.RSAPrivateKey | None = None) -> str:
        def part(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()

        head = part({"alg": "RS256", "kid": kid or self.kid, "typ": "JWT"}) + "." + part(claims)
        sig = (key or self.key).sign(head.encode(), padding.PKCS1v15(), hashes.SHA256())
        return head + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()

    def token(self, *, audience: str, now: datetime, **kw: Any) -> str:
        return self.encode(self.claims(audience=audience, now=now, **kw))


_SHA256_RSA = "1.2.840.113549.1.1.11"


def _alg(oid: str) -> bytes:
    return der.encode(der.SEQUENCE, der.encode_oid(oid) + der.encode(der.NULL, b""))


class AzureSigner:
    """A test root and intermediate CA, an IMDS signer (`metadata.azure.com`), and attested documents."""

    def __init__(self, domain: str = "metadata.azure.com", now: datetime | None = None) -> None:
        self.root_key, self.mid_key, self.key = _key(), _key(), _key()
        self.root = make_cert("Test Root G2", self.root_key, ca=True, now=now, days=3650)
        self.intermediate = make_cert(
            "Test Azure TLS Issuing CA 01", self.mid_key, (self.root, self.root_key), ca=True, now=now
        )
        self.cert = make_cert(domain, self.key, (self.intermediate, self.mid_key), dns=[domain], now=now)

    def trust(self) -> AzureTrust:
        return AzureTrust(roots=(self.root,), intermediates=(self.intermediate,))

    def content(
        self,
        nonce: str,
        *,
        now: datetime,
        subscription: str = "8d10da13-8125-4ba9-a717-bf7490507b3d",
        vm_id: str = "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
        lifetime_s: int = 6 * 3600,
        **extra: Any,
    ) -> bytes:
        """The signed JSON, as IMDS writes it."""
        fmt = "%m/%d/%y %H:%M:%S -0000"
        now = now.astimezone(UTC)
        doc: dict[str, Any] = {
            "licenseType": "",
            "nonce": nonce,
            "plan": {"name": "", "product": "", "publisher": ""},
            "sku": "22_04-lts-gen2",
            "subscriptionId": subscription,
            "timeStamp": {
                "createdOn": now.strftime(fmt),
                "expiresOn": (now + timedelta(seconds=lifetime_s)).strftime(fmt),
            },
            "vmId": vm_id,
        }
        doc.update(extra)
        return json.dumps(doc, separators=(",", ":")).encode()

    def signed_data(
        self, content: bytes, *, key: rsa.RSAPrivateKey | None = None, certs: Sequence[x509.Certificate] | None = None
    ) -> bytes:
        """SignedData as Azure's IMDS makes it: content attached, no signed attributes, the leaf carried, and
        `sha256WithRSAEncryption` named as the digest algorithm (the Windows SignedCms habit)."""
        sig = (key or self.key).sign(content, padding.PKCS1v15(), hashes.SHA256())
        cert_blobs = b"".join(
            c.public_bytes(serialization.Encoding.DER) for c in (certs if certs is not None else [self.cert])
        )
        signer = der.encode(
            der.SEQUENCE,
            b"".join(
                [
                    der.encode_int(1),
                    der.encode(der.SEQUENCE, self.cert.issuer.public_bytes() + der.encode_int(self.cert.serial_number)),
                    _alg(_SHA256_RSA),
                    _alg("1.2.840.113549.1.1.1"),
                    der.encode(der.OCTET_STRING, sig),
                ]
            ),
        )
        body = der.encode(
            der.SEQUENCE,
            b"".join(
                [
                    der.encode_int(1),
                    der.encode(der.SET, _alg(_SHA256_RSA)),
                    der.encode(
                        der.SEQUENCE,
                        der.encode_oid("1.2.840.113549.1.7.1")
                        + der.encode(0xA0, der.encode(der.OCTET_STRING, content)),
                    ),
                    der.encode(0xA0, cert_blobs),
                    der.encode(der.SET, signer),
                ]
            ),
        )
        return der.encode(der.SEQUENCE, der.encode_oid("1.2.840.113549.1.7.2") + der.encode(0xA0, body))

    def attested(self, nonce: str, *, now: datetime, **kw: Any) -> str:
        """The body of `GET /metadata/attested/document?api-version=2020-09-01&nonce=...`."""
        blob = self.signed_data(self.content(nonce, now=now, **kw))
        return json.dumps({"encoding": "pkcs7", "signature": base64.b64encode(blob).decode()})


def write_trust_dir(
    root: Path, *, aws: Sequence[AwsSigner] = (), gcp: GcpSigner | None = None, azure: AzureSigner | None = None
) -> Path:
    """Write the MESH_ATTEST_TRUST_DIR layout (meshctl.attest.trust) for these signers."""
    root.mkdir(parents=True, exist_ok=True)
    for signer in aws:
        (root / "aws").mkdir(exist_ok=True)
        (root / "aws" / f"{signer.region}.pem").write_bytes(pem(signer.cert))
    if gcp is not None:
        (root / "gcp").mkdir(exist_ok=True)
        (root / "gcp" / "jwks.json").write_text(json.dumps(gcp.jwks()))
    if azure is not None:
        for sub, cert in (("roots", azure.root), ("intermediates", azure.intermediate)):
            (root / "azure" / sub).mkdir(parents=True, exist_ok=True)
            (root / "azure" / sub / "test.pem").write_bytes(pem(cert))
    return root
