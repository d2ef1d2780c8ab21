"""Bearer tokens: 256 random bits, shown once, stored as SHA-256 hashes.

A SHA-256 of a 256-bit random secret cannot be brute-forced, so a slow password hash would
only cost latency on every request; lookups are by hash in memory.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

from meshctl.wire.schemas import Scope as TokenScope

Scope = TokenScope | Literal["node"]
# the wire's Scope lists the token scopes from the most to the least powerful
SCOPE_RANK: dict[str, int] = {name: rank for rank, name in enumerate(reversed(get_args(TokenScope)), start=1)}
PREFIX = {"admin": "msh_a_", "operator": "msh_o_", "reader": "msh_r_", "node": "msh_n_", "join": "msh_j_"}


def new_secret(kind: str) -> str:
    """A fresh token with 256 bits of randomness; the prefix only helps humans and scanners."""
    return PREFIX[kind] + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API token with a scope, or a node with its own credential."""

    kind: Literal["token", "node"]
    id: str
    name: str
    scope: Scope
    expires_at: float | None = None

    def allows(self, needed: str) -> bool:
        if self.kind == "node":
            return needed == "node"
        return SCOPE_RANK.get(self.scope, 0) >= SCOPE_RANK.get(needed, 99)
