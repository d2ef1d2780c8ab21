"""Attested join: a node proves its cloud identity, a join policy admits it, the store registers it.

    POST /v1/nodes {"attestation": {kind, document, signature}, region, name, public_key, endpoint}
      1. verify the document against the trust roots read at start (MESH_ATTEST_TRUST_DIR; no network):
         AWS `/rsa2048` PKCS#7, GCP identity token (audience: MESH_PUBLIC_URL), Azure attested
         document whose nonce this controller gave out (`GET /v1/join-nonce`)      -> 401 attestation-<slug>
      2. the join policies decide: account, conditions, region mapping, claimed region, cap -> 403 join-policy
      3. one store transaction (shared with the joins in flight beside it: group commit): spend the
         Azure nonce (a replay: 401 attestation-nonce), take the instance id (a live node holds it:
         409), re-check the cap under the region's lock, add the node.

Every refusal records a `join_refused` event (cloud, account, rule; never the document) and leaves no
node behind. At most REFUSED_EVENTS_PER_MIN such events a minute per replica: a flood of forged documents
must not flood the events table (the rest are counted in the next event's `suppressed`, and in metrics).

Why a second join of the same instance is refused even with the same key (no idempotent return of the
node): answering it would mean minting a new node credential for whoever presents the document and a
public key; an AWS document is the same for the instance's whole life, so anyone who ever saw it could
take the node over. A node that lost its credential is removed by an operator and joins again.

Nonces: stateless (HMAC under a key shared by every replica, made once in the store), single use
through the store's table of spent nonces, which the join transaction prunes of expired ones.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from pydantic import ValidationError

from meshctl.attest import (
    AttestError,
    Expired,
    Identity,
    JoinPolicy,
    NonceIssuer,
    NonceMismatch,
    NotConfigured,
    Refused,
    Trust,
    conflicts,
    decide,
    load_trust,
    verify_aws,
    verify_azure,
    verify_gcp,
)
from meshctl.service.errors import Conflict, Forbidden, Invalid, Missing, Unauthorized
from meshctl.service.state import Db, MeshState
from meshctl.settings import Settings
from meshctl.store.db import AttestedJoinRefused, Exists, JoinRefused, JoinRequest, NotFound, Store
from meshctl.store.values import JoinPolicyRecord, Node
from meshctl.wire import schemas as s

log = logging.getLogger("meshctl.join")

NONCE_SECRET = "join_nonce_key"
REFUSED_EVENTS_PER_MIN = 60
_CLAIM = re.compile(r"^[A-Za-z0-9._@:-]{1,128}$")


class AttestationRefused(Unauthorized):
    """401 with the problem type `urn:meshctl:problem:attestation-<slug>` (the agent reads the slug)."""

    def __init__(self, slug: str, message: str) -> None:
        super().__init__(message, field="attestation")
        self.slug = slug


class PolicyRefused(Forbidden):
    """403 `urn:meshctl:problem:join-policy`: the document is good, no join policy admits it."""

    slug = "join-policy"


def problem_slug(exc: AttestError) -> str:
    """`attestation-<slug>`; every nonce refusal (spent, not ours, expired) is `attestation-nonce`,
    the one type on which the agent asks for a new nonce and tries again."""
    if isinstance(exc, NonceMismatch):
        return "attestation-nonce"
    return exc.slug if exc.slug.startswith("attestation-") else f"attestation-{exc.slug}"


class _NonceCheck(NonceIssuer):
    """The issuer for one join: remembers the nonce it passed; an expired nonce is a nonce refusal."""

    seen: str | None = None

    def check(self, nonce: str, now: datetime) -> None:
        try:
            super().check(nonce, now)
        except Expired as exc:
            raise NonceMismatch(exc.reason) from None
        self.seen = nonce


def claimed_account(att: s.Attestation) -> str | None:
    """The account a refused document *claims* (unverified, for the event only; never the document)."""
    try:
        if att.kind == "aws":
            value = json.loads(att.document).get("accountId")
        elif att.kind == "gcp":
            payload = att.document.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            value = claims["google"]["compute_engine"]["project_id"]
        else:
            return None
    except Exception:
        return None
    return value if isinstance(value, str) and _CLAIM.match(value) else None


def policy_out(record: JoinPolicyRecord) -> s.JoinPolicyOut:
    return s.JoinPolicyOut(**record.spec, created_at=datetime.fromtimestamp(record.created_at, UTC))


class AttestedJoin:
    """Join by cloud identity, the join nonces and the join policies of one replica."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        db: Db,
        state: MeshState,
        clock: Callable[[], float],
        count_event: Callable[[str], None],
        register: Callable[[JoinRequest], Awaitable[tuple[Node, int]]],
    ) -> None:
        self._settings = settings
        self._store = store
        self._db = db
        self._state = state
        self._clock = clock
        self._count_event = count_event
        self._register = register  # the store's join, batched with the joins beside it
        self.trust = Trust()
        self._nonce_key = b""
        self._window = (0.0, 0, 0)  # (minute start, events recorded, events suppressed)

    async def start(self) -> None:
        """Read the trust roots (a file that does not parse stops the start, naming it) and the nonce key."""
        if self._settings.attest_trust_dir is not None:
            try:
                self.trust = await asyncio.to_thread(load_trust, self._settings.attest_trust_dir)
            except AttestError as exc:
                raise RuntimeError(f"MESH_ATTEST_TRUST_DIR: {exc.reason}") from None
            clouds = [c for c in ("aws", "gcp", "azure") if getattr(self.trust, c) is not None]
            log.info("attested join: trust roots for %s", ", ".join(clouds) or "no cloud")
        key = await self._db(self._store.shared_secret, NONCE_SECRET, lambda: secrets.token_hex(32), self._clock())
        self._nonce_key = bytes.fromhex(key)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # --- nonces --------------------------------------------------------------------------

    def _issuer(self) -> _NonceCheck:
        return _NonceCheck(self._nonce_key)

    def nonce(self) -> s.JoinNonceOut:
        issuer = self._issuer()
        nonce = issuer.issue(self._now())
        return s.JoinNonceOut(nonce=nonce, expires_at=issuer.expiry(nonce))

    # --- join ----------------------------------------------------------------------------

    def _verify(self, att: s.Attestation, nonces: _NonceCheck) -> Identity:
        now, trust, settings = self._now(), self.trust, self._settings
        if att.kind == "aws":
            return verify_aws(
                att.document, att.signature or "", trust.aws, now, max_age_s=settings.attest_aws_max_age_s
            )
        if att.kind == "gcp":
            if not settings.public_url:
                raise NotConfigured(
                    "the controller's public URL (MESH_PUBLIC_URL, the GCP token's audience) is not set"
                )
            return verify_gcp(att.document, trust.gcp, audience=settings.public_url.rstrip("/"), now=now)
        return verify_azure(att.document, trust.azure, nonces, now)

    async def join(self, body: s.NodeJoin, node_id: str, token_hash: str) -> tuple[Node, int]:
        """Verify, decide, register: the node and the new peer generation, or a refusal (and its event)."""
        att = body.attestation
        assert att is not None
        nonces = self._issuer()
        try:
            identity = await asyncio.to_thread(self._verify, att, nonces)
        except AttestError as exc:
            slug = problem_slug(exc)
            await self._refused(att.kind, None, slug.removeprefix("attestation-"), exc.reason, 401, body, att=att)
            raise AttestationRefused(slug, f"attestation: {exc.reason}") from None
        records = await self._db(self._store.join_policies)
        policies = {r.id: JoinPolicy(**r.spec) for r in records}
        live = self._state.nodes_per_region  # kept as nodes come and go: no pass over the fleet
        verdict = decide(identity, policies.values(), live, claimed_region=body.region)
        if isinstance(verdict, Refused):
            await self._refused_policy(identity, verdict.rule, verdict.reason, verdict.policy_id, body)
        nonce = None
        if nonces.seen is not None:
            nonce = (nonces.seen, nonces.expiry(nonces.seen).timestamp())
        try:
            return await self._register(
                JoinRequest(
                    node_id=node_id,
                    region=verdict.region,
                    name=body.name,
                    public_key=body.public_key,
                    endpoint=body.endpoint,
                    token_hash=token_hash,
                    now=self._clock(),
                    overlay_cidr=self._settings.overlay_cidr,
                    region_prefix=self._settings.region_prefix,
                    identity=(identity.cloud, identity.account, identity.instance_id),
                    policy_id=verdict.policy_id,
                    nonce=nonce,
                    max_nodes=policies[verdict.policy_id].max_nodes_per_region,
                )
            )
        except JoinRefused:  # the store knows no such region (it is the authority: another replica may add one)
            why = f"policy {verdict.policy_id} puts this node in {verdict.region}, which is not a registered region"
            await self._refused_policy(identity, "region", why, verdict.policy_id, body)
        except AttestedJoinRefused as exc:
            if exc.rule == "cap":
                await self._refused_policy(
                    identity, "cap", f"policy {verdict.policy_id}: {exc}", verdict.policy_id, body
                )
            status = 401 if exc.rule == "nonce" else 409
            await self._refused(identity.cloud, identity.account, exc.rule, str(exc), status, body, identity=identity)
            if exc.rule == "nonce":
                raise AttestationRefused("attestation-nonce", f"attestation: {exc}") from None
            raise Conflict(str(exc), field="attestation") from None

    async def _refused_policy(
        self, identity: Identity, rule: str, reason: str, policy_id: str | None, body: s.NodeJoin
    ) -> NoReturn:
        await self._refused(identity.cloud, identity.account, rule, reason, 403, body, identity, policy_id)
        raise PolicyRefused(f"join policy refused ({rule}): {reason}", field="attestation")

    async def _refused(
        self,
        cloud: str,
        account: str | None,
        rule: str,
        reason: str,
        status: int,
        body: s.NodeJoin,
        identity: Identity | None = None,
        policy_id: str | None = None,
        att: s.Attestation | None = None,
    ) -> None:
        """Record `join_refused` (rate-limited): who and why, never the document."""
        self._count_event("join_refused")
        now = self._clock()
        start, recorded, suppressed = self._window
        if now - start >= 60:
            start, recorded = now, 0
        if recorded >= REFUSED_EVENTS_PER_MIN:
            self._window = (start, recorded, suppressed + 1)
            log.warning("join refused (%s, %s, %s): %s [event suppressed]", cloud, account, rule, reason)
            return
        self._window = (start, recorded + 1, 0)
        data: dict[str, Any] = {
            "cloud": cloud,
            "account": account,
            "rule": rule,
            "status": status,
            "name": body.name,
            "claimed_region": body.region,
        }
        if identity is not None:
            data["instance_id"] = identity.instance_id
        elif att is not None:
            data["claimed_account"] = claimed_account(att)  # unverified: the document did not verify
        if policy_id is not None:
            data["policy_id"] = policy_id
        if suppressed:
            data["suppressed"] = suppressed
        who = f"{cloud} account {account}" if account else f"{cloud} document"
        text = f"join refused ({rule}) for {who}: {reason}"
        try:
            await self._db(self._store.add_event, now, "join_refused", text[:500], None, None, data)
        except Exception as exc:  # the refusal stands; the event is best effort when the store is down
            log.warning("could not record join_refused: %s", exc)

    # --- policies ------------------------------------------------------------------------

    async def policies(self) -> list[s.JoinPolicyOut]:
        return [policy_out(r) for r in await self._db(self._store.join_policies)]

    async def create_policy(self, body: s.JoinPolicyIn) -> s.JoinPolicyOut:
        spec = body.model_dump()
        try:
            policy = JoinPolicy(**spec)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "body"
            message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            raise Invalid(f"{field}: {message}", field) from None
        existing = [JoinPolicy(**r.spec) for r in await self._db(self._store.join_policies)]
        if any(p.id == policy.id for p in existing):
            raise Conflict(f"a join policy {policy.id} exists already: delete it first", field="id")
        clash = conflicts(policy, existing)
        if clash:
            raise Conflict(f"policy {policy.id}: " + "; ".join(clash), field="accounts")
        try:
            record = await self._db(self._store.add_join_policy, policy.id, policy.cloud, spec, self._clock())
        except Exists:
            raise Conflict(f"a join policy {policy.id} exists already: delete it first", field="id") from None
        return policy_out(record)

    async def delete_policy(self, policy_id: str) -> s.JoinPolicyOut:
        try:
            return policy_out(await self._db(self._store.delete_join_policy, policy_id))
        except NotFound:
            raise Missing(f"no join policy {policy_id!r}", field="policy_id") from None
