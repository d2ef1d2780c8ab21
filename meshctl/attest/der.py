"""A minimal DER reader (and writer, for test fixtures): just enough ASN.1 for PKCS#7 SignedData.

Chosen over `asn1crypto`/`pyasn1` to add no dependency for ~100 lines: `cryptography` (50.x) loads the
certificates of a PKCS#7 bundle but cannot verify SignedData, and the few structures we read are fixed.
Strict: definite lengths only (DER), minimal length encodings, no trailing bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshctl.attest.errors import Malformed

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
NULL = 0x05


@dataclass(frozen=True)
class Node:
    """One TLV: `tag` (the identifier octet), `value` (content octets), `raw` (the whole encoding)."""

    tag: int
    value: bytes
    raw: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    def children(self) -> list[Node]:
        if not self.constructed:
            raise Malformed(f"DER: tag 0x{self.tag:02x} is primitive, expected a constructed value")
        out, pos = [], 0
        while pos < len(self.value):
            node, pos = _read(self.value, pos)
            out.append(node)
        return out

    def expect(self, tag: int, what: str) -> Node:
        if self.tag != tag:
            raise Malformed(f"DER: {what}: expected tag 0x{tag:02x}, found 0x{self.tag:02x}")
        return self


def _read(data: bytes, pos: int) -> tuple[Node, int]:
    start = pos
    if pos + 2 > len(data):
        raise Malformed("DER: truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise Malformed("DER: multi-byte tags are not used by PKCS#7")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise Malformed("DER: indefinite length (BER) is not DER")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > len(data):
            raise Malformed("DER: bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise Malformed("DER: non-minimal length")
        pos += n
    end = pos + length
    if end > len(data):
        raise Malformed("DER: value runs past the end of the input")
    return Node(tag, bytes(data[pos:end]), bytes(data[start:end])), end


def parse(data: bytes) -> Node:
    """The single TLV that makes up `data` (trailing bytes are an error)."""
    node, end = _read(data, 0)
    if end != len(data):
        raise Malformed("DER: trailing bytes after the outer value")
    return node


def oid(node: Node) -> str:
    """Dotted string of an OBJECT IDENTIFIER node."""
    node.expect(OID, "object identifier")
    v = node.value
    if not v or v[-1] & 0x80:
        raise Malformed("DER: bad object identifier")
    arcs, acc = [], 0
    for b in v:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(acc)
            acc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def integer(node: Node) -> int:
    node.expect(INTEGER, "integer")
    return int.from_bytes(node.value, "big", signed=True)


# --- writer (used by meshctl.attest.testing to build documents in the clouds' exact formats) ---


def encode(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(body)]) + body + value


def encode_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return encode(OID, bytes(out))


def encode_int(value: int) -> bytes:
    return encode(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))
