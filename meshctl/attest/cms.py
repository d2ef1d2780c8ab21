"""PKCS#7 / CMS SignedData (RFC 2315, RFC 5652): parse, and verify one signer with a given certificate.

Used by AWS's `/rsa2048` signature and Azure's attested document. Both carry the signed content inside
(attached). Handles both signer forms seen in the field: with signed attributes (the signature covers the
DER SET of attributes, whose messageDigest must equal the content's digest) and without (the signature
covers the content itself; Azure's documents, which also name `sha256WithRSAEncryption` as the *digest*
algorithm, a Windows quirk accepted here as SHA-256). RSA PKCS#1 v1.5 and ECDSA; SHA-256/384/512 only.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from meshctl.attest import der
from meshctl.attest.errors import Malformed, SignatureInvalid

SIGNED_DATA = "1.2.840.113549.1.7.2"
DATA = "1.2.840.113549.1.7.1"
ATTR_CONTENT_TYPE = "1.2.840.113549.1.9.3"
ATTR_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
    # Signature OIDs used as digest algorithm identifiers (Windows' SignedCms does this; Azure's IMDS too).
    "1.2.840.113549.1.1.11": hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
}
_WEAK = {
    "1.3.14.3.2.26": "SHA-1",
    "1.2.840.113549.2.5": "MD5",
    "1.2.840.113549.1.1.5": "SHA-1",
    "1.2.840.113549.1.1.4": "MD5",
}
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_RSA_SIGS = {"1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12", "1.2.840.113549.1.1.13", RSA_ENCRYPTION}
_ECDSA_SIGS = {"1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4", "1.2.840.10045.2.1"}


@dataclass(frozen=True)
class SignerInfo:
    """One signer: who (issuer + serial, or subject key id), how, and the signature."""

    issuer_der: bytes | None
    serial: int | None
    subject_key_id: bytes | None
    digest_oid: str
    signed_attrs: der.Node | None
    signature_oid: str
    signature: bytes

    def names(self, cert: x509.Certificate) -> bool:
        """True when this signer identifier designates `cert`."""
        if self.subject_key_id is not None:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                return False
            return hmac.compare_digest(ski, self.subject_key_id)
        return cert.serial_number == self.serial and cert.issuer.public_bytes() == self.issuer_der

    def describe(self) -> str:
        if self.subject_key_id is not None:
            return f"subject key id {self.subject_key_id.hex()}"
        return f"serial {self.serial:x}" if self.serial is not None else "an unnamed signer"


@dataclass(frozen=True)
class SignedData:
    """The attached content, the certificates carried along, and the signers."""

    content: bytes
    certificates: tuple[x509.Certificate, ...]
    signers: tuple[SignerInfo, ...]


def _algorithm(node: der.Node) -> str:
    return der.oid(node.expect(der.SEQUENCE, "algorithm identifier").children()[0])


def _signer(node: der.Node) -> SignerInfo:
    parts = node.expect(der.SEQUENCE, "SignerInfo").children()
    if len(parts) < 5:
        raise Malformed("PKCS#7: SignerInfo is too short")
    sid = parts[1]
    issuer = serial = ski = None
    if sid.tag == der.SEQUENCE:
        issuer_node, serial_node = sid.children()[:2]
        issuer, serial = issuer_node.raw, der.integer(serial_node)
    elif sid.tag == 0x80:
        ski = sid.value
    else:
        raise Malformed("PKCS#7: unknown signer identifier")
    i = 2
    digest_oid = _algorithm(parts[i])
    i += 1
    attrs = None
    if parts[i].tag == 0xA0:
        attrs = parts[i]
        i += 1
    if len(parts) < i + 2:
        raise Malformed("PKCS#7: SignerInfo lacks its signature")
    signature_oid = _algorithm(parts[i])
    signature = parts[i + 1].expect(der.OCTET_STRING, "signature").value
    return SignerInfo(issuer, serial, ski, digest_oid, attrs, signature_oid, signature)


def parse_signed_data(blob: bytes) -> SignedData:
    """Parse a DER ContentInfo holding SignedData with attached content."""
    outer = der.parse(blob).expect(der.SEQUENCE, "ContentInfo").children()
    if len(outer) != 2 or der.oid(outer[0]) != SIGNED_DATA:
        raise Malformed("PKCS#7: not a SignedData ContentInfo")
    body = outer[1].expect(0xA0, "content").children()[0].expect(der.SEQUENCE, "SignedData").children()
    if len(body) < 4:
        raise Malformed("PKCS#7: SignedData is too short")
    encap = body[2].expect(der.SEQUENCE, "encapsulated content").children()
    if len(encap) != 2 or encap[1].tag != 0xA0:
        raise Malformed("PKCS#7: the content is detached; a signed document must carry it")
    content_node = encap[1].children()[0]
    if content_node.tag == der.OCTET_STRING:
        content = content_node.value
    elif content_node.tag == 0x24:  # constructed OCTET STRING
        content = b"".join(c.expect(der.OCTET_STRING, "content chunk").value for c in content_node.children())
    else:
        raise Malformed("PKCS#7: the content is not an OCTET STRING")
    certs: list[x509.Certificate] = []
    rest = body[3:]
    for node in rest[:-1]:
        if node.tag == 0xA0:
            for cert_node in node.children():
                if cert_node.tag == der.SEQUENCE:
                    try:
                        certs.append(x509.load_der_x509_certificate(cert_node.raw))
                    except ValueError as exc:
                        raise Malformed(f"PKCS#7: a carried certificate does not parse ({exc})") from exc
    signers = tuple(_signer(n) for n in rest[-1].expect(der.SET, "signerInfos").children())
    if not signers:
        raise Malformed("PKCS#7: no signer")
    return SignedData(content, tuple(certs), signers)


def _digest(oid: str) -> hashes.HashAlgorithm:
    if oid in _WEAK:
        raise SignatureInvalid(f"PKCS#7: digest {_WEAK[oid]} is too weak to trust")
    algo = _DIGESTS.get(oid)
    if algo is None:
        raise Malformed(f"PKCS#7: unsupported digest algorithm {oid}")
    return algo()


def _hash(algo: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algo)
    h.update(data)
    return h.finalize()


def verify_signer(sd: SignedData, signer: SignerInfo, cert: x509.Certificate) -> None:
    """Check `signer`'s signature over the content with `cert`'s key; raises SignatureInvalid."""
    algo = _digest(signer.digest_oid)
    if signer.signed_attrs is not None:
        digest = content_type = None
        for attr in signer.signed_attrs.children():
            kind, values = attr.expect(der.SEQUENCE, "attribute").children()[:2]
            first = values.expect(der.SET, "attribute values").children()[0]
            if der.oid(kind) == ATTR_MESSAGE_DIGEST:
                digest = first.expect(der.OCTET_STRING, "messageDigest").value
            elif der.oid(kind) == ATTR_CONTENT_TYPE:
                content_type = der.oid(first)
        if digest is None or content_type != DATA:
            raise Malformed("PKCS#7: signed attributes lack messageDigest or contentType data")
        if not hmac.compare_digest(digest, _hash(algo, sd.content)):
            raise SignatureInvalid("the signed content was altered: its digest differs from the signed one")
        signed = der.encode(der.SET, signer.signed_attrs.value)  # [0] IMPLICIT re-tagged as SET OF
    else:
        signed = sd.content
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and signer.signature_oid in _RSA_SIGS:
            key.verify(signer.signature, signed, padding.PKCS1v15(), algo)
        elif isinstance(key, ec.EllipticCurvePublicKey) and signer.signature_oid in _ECDSA_SIGS:
            key.verify(signer.signature, signed, ec.ECDSA(algo))
        else:
            raise Malformed(f"PKCS#7: unsupported signature algorithm {signer.signature_oid} for this key")
    except InvalidSignature:
        raise SignatureInvalid("the signature does not verify: the document was forged or altered") from None
