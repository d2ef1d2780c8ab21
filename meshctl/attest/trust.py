"""Trust roots the operator configures: files under `MESH_ATTEST_TRUST_DIR`, read once, no network at join time.

Layout (every part optional; a cloud without its directory cannot join by attestation):

    $MESH_ATTEST_TRUST_DIR/
      aws/<cloud-region>.pem        AWS's "RSA-2048" certificate for that region (EC2 docs, "AWS public
                                    certificates for instance identity document signatures", RSA-2048 tab);
                                    a document verified by it must say that region
      aws/any-region/*.pem          RSA-2048 certificates accepted for any region
      gcp/*.json                    Google's JWKS, https://www.googleapis.com/oauth2/v3/certs, saved as is;
                                    several files are merged (keep the old set while Google rotates keys,
                                    refresh with a daily job: keys rotate every few weeks)
      azure/roots/*.pem             root CAs the attested-data signer chains to (DigiCert Global Root G2,
                                    Microsoft TLS RSA Root G2, ...: Microsoft's "Azure CA details" page)
      azure/intermediates/*.pem     the intermediates (Microsoft Azure RSA TLS Issuing CA xx, Microsoft TLS G2
                                    RSA CA OCSP xx, ...): IMDS sends only the leaf, and fetching the issuer
                                    at join time would need network
      azure/domains.txt             signer domains, one a line (default `metadata.azure.com`; sovereign
                                    clouds: metadata.azure.us, metadata.azure.cn); a subdomain is accepted
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from meshctl.attest.errors import Malformed
from meshctl.attest.identity import b64decode

ENV_VAR = "MESH_ATTEST_TRUST_DIR"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
AZURE_DOMAINS = ("metadata.azure.com",)


@dataclass(frozen=True)
class AwsCert:
    """One AWS signing certificate; `region` None when it is accepted for any region."""

    certificate: x509.Certificate
    region: str | None
    source: str


@dataclass(frozen=True)
class AwsTrust:
    certs: tuple[AwsCert, ...]


@dataclass(frozen=True)
class GcpTrust:
    """Google's signing keys by key id, and the accepted issuers."""

    keys: Mapping[str, rsa.RSAPublicKey] = field(hash=False)
    issuers: tuple[str, ...] = GOOGLE_ISSUERS

    @classmethod
    def from_jwks(cls, *jwks: Mapping[str, Any]) -> GcpTrust:
        keys: dict[str, rsa.RSAPublicKey] = {}
        for doc in jwks:
            entries = doc.get("keys")
            if not isinstance(entries, list):
                raise Malformed("JWKS: no 'keys' list")
            for jwk in entries:
                if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
                    continue
                try:
                    n = int.from_bytes(_b64url(jwk["n"]), "big")
                    e = int.from_bytes(_b64url(jwk["e"]), "big")
                    keys[str(jwk["kid"])] = rsa.RSAPublicNumbers(e, n).public_key()
                except (KeyError, ValueError, TypeError) as exc:
                    raise Malformed(f"JWKS: bad RSA key ({exc.__class__.__name__})") from None
        return cls(keys=keys)


@dataclass(frozen=True)
class AzureTrust:
    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    domains: tuple[str, ...] = AZURE_DOMAINS


@dataclass(frozen=True)
class Trust:
    """Everything `load_trust` found; a None cloud has no trust roots."""

    aws: AwsTrust | None = None
    gcp: GcpTrust | None = None
    azure: AzureTrust | None = None


def _b64url(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _pems(paths: list[Path]) -> list[tuple[x509.Certificate, Path]]:
    out = []
    for path in sorted(paths):
        try:
            out += [(c, path) for c in x509.load_pem_x509_certificates(path.read_bytes())]
        except ValueError as exc:
            raise Malformed(f"{path}: not PEM certificates ({exc})") from None
    return out


def load_trust(directory: str | Path) -> Trust:
    """Read the layout above. Raises Malformed (naming the file) on a file that does not parse."""
    import json

    root = Path(directory)
    aws = gcp = azure = None
    if (root / "aws").is_dir():
        certs = [AwsCert(c, p.stem, str(p)) for c, p in _pems(list((root / "aws").glob("*.pem")))]
        certs += [AwsCert(c, None, str(p)) for c, p in _pems(list((root / "aws" / "any-region").glob("*.pem")))]
        aws = AwsTrust(tuple(certs))
    if (root / "gcp").is_dir():
        docs = []
        for path in sorted((root / "gcp").glob("*.json")):
            try:
                docs.append(json.loads(path.read_text()))
            except ValueError:
                raise Malformed(f"{path}: not JSON") from None
        gcp = GcpTrust.from_jwks(*docs)
    if (root / "azure").is_dir():
        domains_file = root / "azure" / "domains.txt"
        domains: tuple[str, ...] = AZURE_DOMAINS
        if domains_file.is_file():
            domains = tuple(ln.strip().lower() for ln in domains_file.read_text().splitlines() if ln.strip())
        azure = AzureTrust(
            roots=tuple(c for c, _ in _pems(list((root / "azure" / "roots").glob("*.pem")))),
            intermediates=tuple(c for c, _ in _pems(list((root / "azure" / "intermediates").glob("*.pem")))),
            domains=domains,
        )
    return Trust(aws=aws, gcp=gcp, azure=azure)


__all__ = ["ENV_VAR", "AwsCert", "AwsTrust", "AzureTrust", "GcpTrust", "Trust", "b64decode", "load_trust"]
