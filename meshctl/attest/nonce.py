"""Stateless join nonces for Azure: any replica can check a nonce another one gave out.

A nonce is 32 characters of [0-9A-Za-z] (what IMDS accepts: "up to 32 alphanumeric characters"):
6 for the expiry (unix seconds, base62), 6 random, 20 for an HMAC-SHA256 of the first 12 under a secret the
replicas share (from the store or the settings). `check` proves it is ours and unexpired; it cannot know
whether it was used already. SINGLE USE IS THE CALLER'S JOB: after a successful join, record the nonce (or
the Azure vmId + nonce) until its expiry and refuse it again (a row with a unique key works on any SQL;
the expiry bounds the table). Several secrets rotate keys: the first signs, all verify.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from meshctl.attest.errors import Expired, NonceMismatch
from meshctl.attest.identity import utc

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_MAC_CHARS = 20
TTL_S = 300


def _b62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def _int62(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 62 + _ALPHABET.index(ch)
    return value


class NonceIssuer:
    """Issues and checks nonces under shared secrets (each at least 16 bytes)."""

    def __init__(self, secrets: bytes | Sequence[bytes], ttl_s: int = TTL_S) -> None:
        keys = [secrets] if isinstance(secrets, bytes) else list(secrets)
        if not keys or any(len(k) < 16 for k in keys):
            raise ValueError("nonce secrets must be at least 16 bytes each")
        self._keys, self.ttl_s = keys, ttl_s

    @staticmethod
    def _mac(key: bytes, head: str) -> str:
        digest = hmac.new(key, b"meshctl-join-nonce|" + head.encode(), hashlib.sha256).digest()
        return _b62(int.from_bytes(digest[:16], "big"), _MAC_CHARS)

    @staticmethod
    def same(a: str, b: str) -> bool:
        return hmac.compare_digest(a.encode(), b.encode())

    def issue(self, now: datetime) -> str:
        expiry = int(utc(now).timestamp()) + self.ttl_s
        head = _b62(expiry, 6) + "".join(_secrets.choice(_ALPHABET) for _ in range(6))
        return head + self._mac(self._keys[0], head)

    def expiry(self, nonce: str) -> datetime:
        """When `nonce` expires (no MAC check: call `check` first)."""
        return datetime.fromtimestamp(_int62(nonce[:6]), tz=UTC)

    def check(self, nonce: str, now: datetime) -> None:
        """Raise NonceMismatch when `nonce` is not ours, Expired when it is past its expiry."""
        if len(nonce) != 12 + _MAC_CHARS or any(ch not in _ALPHABET for ch in nonce):
            raise NonceMismatch("the nonce was not given out by this controller (bad format)")
        head, mac = nonce[:12], nonce[12:]
        if not any(self.same(mac, self._mac(k, head)) for k in self._keys):
            raise NonceMismatch("the nonce was not given out by this controller")
        if utc(now).timestamp() > _int62(head[:6]):
            raise Expired("the join nonce has expired: ask for a new one")
