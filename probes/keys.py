"""The node's WireGuard key pair: made on the node, the private half never leaves it."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

PRIVATE_KEY_FILE = "wg-private.key"


def _raw_b64(key: X25519PrivateKey) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def write_private(path: Path, private_b64: str) -> None:
    """Write atomically with mode 0600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_b64 + "\n")
    os.replace(tmp, path)


def load_or_create(state_dir: Path) -> tuple[str, str]:
    """(private, public) in WireGuard's base64 form; made once, kept in the state directory."""
    path = state_dir / PRIVATE_KEY_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} is readable by others: chmod 600 it (or remove it to make a new key)")
        raw = base64.b64decode(path.read_text().strip(), validate=True)
        return _raw_b64(X25519PrivateKey.from_private_bytes(raw))
    private, public = _raw_b64(X25519PrivateKey.generate())
    write_private(path, private)
    return private, public


def rotate(state_dir: Path) -> tuple[str, str]:
    """A new key pair replaces the old one on disk; returns (private, public)."""
    private, public = _raw_b64(X25519PrivateKey.generate())
    write_private(state_dir / PRIVATE_KEY_FILE, private)
    return private, public
