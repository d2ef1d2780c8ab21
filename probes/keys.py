"""The node's WireGuard key pair: made on the node, the private half never leaves it.

Rotation is two-phase so that a new key the controller never heard of never becomes the active
one: `new_pending` writes the new private key beside the active one (`wg-private.key.pending`);
only after the controller acknowledged its public half does `promote_pending` rename it over the
active key (atomic and durable). `discard_pending` drops it when the controller refused it. Both
files are written with `meshctl.files.atomic_write`, mode 0600 from creation.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshctl.files import atomic_write, fsync_dir, replace

PRIVATE_KEY_FILE = "wg-private.key"
PENDING_KEY_FILE = "wg-private.key.pending"


def _raw_b64(key: X25519PrivateKey) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def write_private(path: Path, private_b64: str) -> None:
    """Write atomically and durably with mode 0600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, private_b64 + "\n", mode=0o600)


def _load(path: Path) -> tuple[str, str]:
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by others: chmod 600 it (or remove it to make a new key)")
    raw = base64.b64decode(path.read_text().strip(), validate=True)
    return _raw_b64(X25519PrivateKey.from_private_bytes(raw))


def load_or_create(state_dir: Path) -> tuple[str, str]:
    """(private, public) of the active key in WireGuard's base64 form; made once, kept in the state directory."""
    path = state_dir / PRIVATE_KEY_FILE
    if path.exists():
        return _load(path)
    private, public = _raw_b64(X25519PrivateKey.generate())
    write_private(path, private)
    return private, public


def new_pending(state_dir: Path) -> tuple[str, str]:
    """A new key pair written as the pending key (the active one is untouched); returns (private, public)."""
    private, public = _raw_b64(X25519PrivateKey.generate())
    write_private(state_dir / PENDING_KEY_FILE, private)
    return private, public


def load_pending(state_dir: Path) -> tuple[str, str] | None:
    """The pending key (private, public), or None when there is none or it is unreadable (then it is removed:
    a key that was never completely written was never sent to the controller either)."""
    path = state_dir / PENDING_KEY_FILE
    if not path.exists():
        return None
    try:
        return _load(path)
    except ValueError:  # truncated or garbled (binascii.Error is a ValueError)
        discard_pending(state_dir)
        return None


def promote_pending(state_dir: Path) -> None:
    """The pending key becomes the active key (one atomic, durable rename)."""
    replace(state_dir / PENDING_KEY_FILE, state_dir / PRIVATE_KEY_FILE)


def discard_pending(state_dir: Path) -> None:
    """Forget the pending key (the controller refused it); the active key stays."""
    path = state_dir / PENDING_KEY_FILE
    if path.exists():
        path.unlink()
        fsync_dir(state_dir)
