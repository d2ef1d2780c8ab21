"""How a new node joins the mesh: by its cloud identity (attested) or with a join token.

The mode (`--join`, MESH_JOIN): `token` needs a token; `attested` needs a cloud metadata service
(`probes.metadata`); `auto`, the default, takes the token when one is given, else attestation when a
metadata service answers, else stops naming both ways. A cloud node needs no secret at all.

No secret on a command line: the token comes from a file (`--join-token-file`, mode 0600 or stricter,
owned by the agent's user, like ssh's private keys) or from MESH_JOIN_TOKEN. `--join-token VALUE` still
works, with a warning from `probes.cli` (any local user reads it in `ps` or /proc).

Attested: `POST /v1/nodes` with `{"attestation": {"kind", "document", "signature"}, region, name,
public_key, endpoint}`; for Azure first `GET /v1/join-nonce`, and when the controller refuses the nonce
(IMDS may answer from its cache) once more after a short pause with a new one. The GCP token's audience
is the controller URL as configured, without a trailing `/`.

Every failure is a `JoinError` (a RuntimeError) with one line naming the cause: no metadata service,
join policy refused (the controller's reason), signature invalid, clock skew, ...
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from meshctl.files import SecretFileError, read_secret_file
from probes.config import AgentConfig
from probes.metadata import METADATA, MetadataError, attestation, detect_cloud
from probes.problem import attestation_cause, describe, is_nonce_refusal

log = logging.getLogger("meshctl.agent")
NONCE_RETRY_S = 2.0
MAX_TOKEN_BYTES = 4096
AZURE_NONCE = re.compile(r"[0-9A-Za-z]{1,32}")  # what IMDS takes: up to 32 alphanumeric characters
GIVE_TOKEN = "give --join-token-file FILE (mode 0600) or MESH_JOIN_TOKEN"


class JoinError(RuntimeError):
    """The node cannot join; the message is one line that names the cause."""


@dataclass(frozen=True)
class Plan:
    """How this node joins: `mode` 'token' (with `token`) or 'attested' (with `cloud`)."""

    mode: str
    token: str | None = None
    cloud: str | None = None


def read_token_file(path: Path) -> str:
    """The token in `path`, which must be a regular file of this user with no access for group or others."""
    try:
        return read_secret_file(path, "join token file", MAX_TOKEN_BYTES)
    except SecretFileError as exc:
        raise JoinError(str(exc)) from None


def token_of(cfg: AgentConfig) -> str | None:
    """The join token from the flag or MESH_JOIN_TOKEN, or read from the token file; None when neither is set."""
    if cfg.join_token:
        return cfg.join_token
    return read_token_file(cfg.join_token_file) if cfg.join_token_file is not None else None


def choose(cfg: AgentConfig, transport: httpx.BaseTransport | None = None) -> Plan:
    """The join mode for `cfg` (blocking: may ask the metadata service, with short timeouts)."""
    if cfg.join != "attested":
        token = token_of(cfg)
        if token:
            return Plan("token", token=token)
        if cfg.join == "token":
            raise JoinError(f"--join token: no join token: {GIVE_TOKEN}")
    cloud = detect_cloud(transport, prefer=cfg.region.split(":", 1)[0])
    if cloud is not None:
        return Plan("attested", cloud=cloud)
    if cfg.join == "attested":
        raise JoinError(f"--join attested: no cloud metadata service (aws, gcp, azure) answers at {METADATA}")
    raise JoinError(
        f"not joined yet: no join token, and no cloud metadata service answers at {METADATA} for an attested"
        f" join: {GIVE_TOKEN}"
    )


async def submit(
    http: httpx.AsyncClient,
    plan: Plan,
    body: dict[str, Any],
    controller: str,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """`POST /v1/nodes` as `plan` says, with `body` (region, name, public_key, endpoint); the 201 answer."""
    if plan.mode == "token":
        r = await _post(http, {"join_token": plan.token, **body})
        if r.status_code != 201:
            raise JoinError(f"join refused ({r.status_code}): {describe(r)}")
        joined: dict[str, Any] = r.json()
        return joined
    cloud = str(plan.cloud)
    for attempt in (1, 2):
        nonce = await _nonce(http) if cloud == "azure" else None
        try:
            proof = await asyncio.to_thread(attestation, cloud, controller.rstrip("/"), _given(nonce), transport)
        except MetadataError as exc:
            raise JoinError(f"attested join ({cloud}): {exc}") from None
        r = await _post(http, {**body, "attestation": proof})
        if r.status_code == 201:
            joined = r.json()
            return joined
        if attempt == 1 and nonce is not None and is_nonce_refusal(r):
            log.info("join: the controller refused the nonce (%s); asking again in %g s", describe(r), NONCE_RETRY_S)
            await sleep(NONCE_RETRY_S)
            continue
        raise JoinError(f"attested join ({cloud}) refused ({r.status_code}, {attestation_cause(r)}): {describe(r)}")
    raise AssertionError("unreachable")  # pragma: no cover


async def _post(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    try:
        return await http.post("/v1/nodes", json=body)
    except httpx.HTTPError as exc:
        raise JoinError(f"join: the controller at {http.base_url} does not answer ({type(exc).__name__})") from None


async def _nonce(http: httpx.AsyncClient) -> str:
    """A fresh join nonce from the controller (`GET /v1/join-nonce`), for Azure's attested document."""
    try:
        r = await http.get("/v1/join-nonce")
    except httpx.HTTPError as exc:
        raise JoinError(f"attested join (azure): the controller gave no join nonce ({type(exc).__name__})") from None
    if r.status_code != 200:
        raise JoinError(f"attested join (azure): no join nonce from the controller ({r.status_code}): {describe(r)}")
    try:
        nonce = r.json().get("nonce")
    except (ValueError, AttributeError):
        nonce = None
    if not isinstance(nonce, str) or not AZURE_NONCE.fullmatch(nonce):
        raise JoinError("attested join (azure): the controller's join nonce is not 1-32 letters and digits")
    return nonce


def _given(nonce: str | None) -> Callable[[], str]:
    def fetch() -> str:
        if nonce is None:
            raise MetadataError("a nonce was asked for where none was fetched")
        return nonce

    return fetch
