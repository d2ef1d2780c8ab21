"""Who is calling: node credentials and API tokens, from memory, else from the store.

Any replica authenticates any credential, also one it has not seen yet (a node that joined, or a
token made, through another replica a moment ago): what memory does not know is looked up in the
store. What the store does not know either is remembered for UNKNOWN_TTL_S (at most UNKNOWN_MAX
hashes), so a flood of bad tokens is not a flood of queries. A removed node's credential (the
node row stays, with its removal time) answers NodeRemoved, 410: the agent stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from meshctl.service.auth import Principal, hash_token
from meshctl.service.errors import NodeRemoved, Unauthorized, Unavailable
from meshctl.service.state import Db, MeshState
from meshctl.store.db import Store
from meshctl.store.values import Node, Token
from meshctl.wire import schemas as s

UNKNOWN_TTL_S = 5.0  # a credential the store does not know is not asked about again for this long
UNKNOWN_MAX = 10_000  # bound of that negative cache (the expired, else the oldest, forgotten first)


class Credentials:
    def __init__(
        self, state: MeshState, store: Store, db: Db, clock: Callable[[], float], kick: Callable[[], None]
    ) -> None:
        self._state = state
        self._store = store
        self._db = db
        self._clock = clock
        self._kick = kick
        # hashes the store did not know, or knows as a removed node's: hash -> (until, removed)
        self._unknown: dict[str, tuple[float, bool]] = {}

    async def authenticate(self, token: str | None) -> Principal:
        """Who is calling. A credential this replica has not seen yet (a node that joined, or a
        token made, through another replica) is looked up in the store; one the store does not
        know is remembered as unknown for a few seconds, so a flood of bad tokens is not a flood
        of queries. A removed node's credential answers NodeRemoved (410): the agent stops."""
        if not token:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        h = hash_token(token)
        state = self._state
        node_id = state.node_by_hash.get(h)
        if node_id is not None:
            node = state.nodes[node_id]
            return Principal(kind="node", id=node.id, name=node.name, scope="node")
        found = state.tokens_by_hash.get(h)
        if found is None:
            stored = await self._credential_from_store(h)
            if isinstance(stored, Node):
                return Principal(kind="node", id=stored.id, name=stored.name, scope="node")
            found = stored
        if found is None or found.revoked_at is not None:
            raise Unauthorized("invalid or revoked token")
        if found.expires_at is not None and found.expires_at <= self._clock():
            raise Unauthorized("token expired")
        return Principal(
            kind="token", id=found.id, name=found.name, scope=cast(s.Scope, found.scope), expires_at=found.expires_at
        )

    async def _credential_from_store(self, h: str) -> Node | Token | None:
        """A credential not in memory: ask the store (unless it said "unknown" a moment ago)."""
        now = self._clock()
        cached = self._unknown.get(h)
        if cached is not None and (cached[1] or cached[0] > now):
            if cached[1]:
                raise NodeRemoved("this node was removed from the mesh; join it again to come back")
            return None
        try:
            found = await self._db(self._store.credential, h)
        except Exception as exc:
            raise Unavailable("the database is unreachable: cannot check this credential now, retry later") from exc
        if isinstance(found, Node):
            if found.removed_at is not None:
                self._remember_unknown(h, now, removed=True)
                raise NodeRemoved(f"node {found.id} was removed from the mesh; join it again to come back")
            if found.id not in self._state.nodes:
                self._state.know_node(found)
                self._kick()  # and load the rest of what changed (its peers) at the next tick
            return found
        if found is None or found.revoked_at is not None:
            self._remember_unknown(h, now, removed=False)
            return found
        self._state.put_token(found)
        return found

    def _remember_unknown(self, h: str, now: float, removed: bool) -> None:
        unknown = self._unknown
        if len(unknown) >= UNKNOWN_MAX:
            expired = [k for k, (until, gone) in unknown.items() if not gone and until <= now]
            for key in expired or [next(iter(unknown))]:
                del unknown[key]
        unknown[h] = (now + UNKNOWN_TTL_S, removed)
