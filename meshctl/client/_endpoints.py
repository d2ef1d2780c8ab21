"""Every endpoint, written once: what to send and how to read the answer.

An endpoint method builds a `Call` (method, path, query, body, how to decode the body). The
`endpoint` descriptor hands it to the client that owns it: `Client._run` sends it and returns
the decoded model, `AsyncClient._run` returns an awaitable of it, `JsonClient._run` the answer's
JSON as it is. So `Client.status()` returns a `StatusOut` and `AsyncClient.status()` an
`Awaitable[StatusOut]`, from one definition, and mypy knows both.

A decoder names its model (`model("StatusOut")`): the wire models (and pydantic) are imported
when a typed client first decodes an answer, never by `JsonClient` (the CLI: ~80 ms of its
start-up). tests/client/test_endpoints.py checks each name against the method's `Call[...]`.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload
from urllib.parse import quote

if TYPE_CHECKING:
    from meshctl.client._client import AsyncClient, Client, JsonClient
    from meshctl.wire import schemas as s

T = TypeVar("T")
P = ParamSpec("P")

LONG_POLL_SLACK_S = 10.0  # a long poll's timeout is its wait plus this


class Decoder:
    """Decodes an answer's body into the wire model `name` (or a list of it) of
    `meshctl.wire.schemas`, imported and built on first use."""

    __slots__ = ("many", "name")

    def __init__(self, name: str, many: bool = False) -> None:
        self.name, self.many = name, many

    def __call__(self, body: bytes) -> Any:
        return _adapter(self.name, self.many).validate_json(body)

    def __repr__(self) -> str:
        return f"list[{self.name}]" if self.many else self.name


@functools.cache
def _adapter(name: str, many: bool) -> Any:
    """The model's TypeAdapter (a few milliseconds to build, so once per process)."""
    from pydantic import TypeAdapter

    cls = getattr(importlib.import_module("meshctl.wire.schemas"), name)
    return TypeAdapter(list[cls] if many else cls)  # type: ignore[valid-type]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to make and how to decode a successful answer's body."""

    method: str
    path: str
    decode: Callable[[bytes], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    timeout: float | None = None  # None: the client's default


def model(name: str) -> Decoder:
    """A decoder of one `meshctl.wire.schemas.<name>`."""
    return Decoder(name)


def model_list(name: str) -> Decoder:
    """A decoder of a JSON list of `meshctl.wire.schemas.<name>`."""
    return Decoder(name, many=True)


def raw_json(body: bytes) -> dict[str, Any]:
    """A JSON object, as it is."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def seg(value: str) -> str:
    """A path segment: region ids keep their ':', anything that could change the path is quoted."""
    return quote(value, safe=":@")


class endpoint(Generic[P, T]):
    """Turns `def name(self, ...) -> Call[T]` into a method that sends the call."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__
        self.__name__ = build.__name__

    @overload
    def __get__(self, obj: None, owner: type) -> endpoint[P, T]: ...
    @overload
    def __get__(self, obj: JsonClient, owner: type) -> Callable[P, Any]: ...
    @overload
    def __get__(self, obj: Client, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        build, run = self.build, obj._run

        @functools.wraps(build)
        def send(*args: P.args, **kwargs: P.kwargs) -> Any:
            return run(build(obj, *args, **kwargs))

        return send


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class Endpoints:
    """The REST API, one method per operation (shared by `Client` and `AsyncClient`)."""

    # --- system --------------------------------------------------------------------------
    @endpoint
    def healthz(self) -> Call[dict[str, Any]]:
        """GET /healthz: liveness, no token needed."""
        return Call("GET", "/healthz", raw_json)

    @endpoint
    def status(self) -> Call[s.StatusOut]:
        """GET /v1/status: the mesh on one screen."""
        return Call("GET", "/v1/status", model("StatusOut"))

    # --- regions and drains --------------------------------------------------------------
    @endpoint
    def regions(self) -> Call[list[s.RegionOut]]:
        """GET /v1/regions."""
        return Call("GET", "/v1/regions", model_list("RegionOut"))

    @endpoint
    def region(self, region: str) -> Call[s.RegionOut]:
        """GET /v1/regions/{region}."""
        return Call("GET", f"/v1/regions/{seg(region)}", model("RegionOut"))

    @endpoint
    def put_region(
        self,
        region: str,
        *,
        lat: float,
        lon: float,
        name: str | None = None,
        metro: str | None = None,
        cloud: str | None = None,
    ) -> Call[s.RegionOut]:
        """PUT /v1/regions/{region}: add or update a region (admin)."""
        body = _drop_none({"lat": lat, "lon": lon, "name": name, "metro": metro, "cloud": cloud})
        return Call("PUT", f"/v1/regions/{seg(region)}", model("RegionOut"), json=body)

    @endpoint
    def drain(self, region: str, reason: str) -> Call[s.RegionOut]:
        """POST /v1/regions/{region}/drain: no new sessions, no transit (operator)."""
        return Call("POST", f"/v1/regions/{seg(region)}/drain", model("RegionOut"), json={"reason": reason})

    @endpoint
    def drain_preview(self, region: str, reason: str) -> Call[s.DrainPreview]:
        """POST /v1/regions/{region}/drain?dry_run=true: what a drain would change; changes nothing."""
        return Call(
            "POST",
            f"/v1/regions/{seg(region)}/drain",
            model("DrainPreview"),
            params={"dry_run": "true"},
            json={"reason": reason},
        )

    @endpoint
    def undrain(self, region: str) -> Call[s.RegionOut]:
        """DELETE /v1/regions/{region}/drain: lift a drain (operator)."""
        return Call("DELETE", f"/v1/regions/{seg(region)}/drain", model("RegionOut"))

    # --- nodes ---------------------------------------------------------------------------
    @endpoint
    def nodes(self, region: str | None = None) -> Call[list[s.NodeOut]]:
        """GET /v1/nodes (optionally of one region)."""
        return Call("GET", "/v1/nodes", model_list("NodeOut"), params=_drop_none({"region": region}) or None)

    @endpoint
    def node(self, node_id: str) -> Call[s.NodeOut]:
        """GET /v1/nodes/{node_id}."""
        return Call("GET", f"/v1/nodes/{seg(node_id)}", model("NodeOut"))

    @endpoint
    def remove_node(self, node_id: str) -> Call[s.NodeOut]:
        """DELETE /v1/nodes/{node_id} (admin): its peers drop it."""
        return Call("DELETE", f"/v1/nodes/{seg(node_id)}", model("NodeOut"))

    @endpoint
    def drain_node(self, node_id: str, reason: str) -> Call[s.NodeOut]:
        """POST /v1/nodes/{node_id}/drain: no new sessions, no relaying (operator)."""
        return Call("POST", f"/v1/nodes/{seg(node_id)}/drain", model("NodeOut"), json={"reason": reason})

    @endpoint
    def drain_node_preview(self, node_id: str, reason: str) -> Call[s.NodeDrainPreview]:
        """POST /v1/nodes/{node_id}/drain?dry_run=true: what a node drain would change; changes nothing."""
        path = f"/v1/nodes/{seg(node_id)}/drain"
        return Call("POST", path, model("NodeDrainPreview"), params={"dry_run": "true"}, json={"reason": reason})

    @endpoint
    def undrain_node(self, node_id: str) -> Call[s.NodeOut]:
        """DELETE /v1/nodes/{node_id}/drain: lift a node's drain (operator)."""
        return Call("DELETE", f"/v1/nodes/{seg(node_id)}/drain", model("NodeOut"))

    @endpoint
    def peers(self, node_id: str, since: int | None = None) -> Call[s.PeerList]:
        """GET /v1/nodes/{node_id}/peers: the node's WireGuard peers and their generation; with
        `since` (a generation held), only the peers changed since and the ids of those that left
        (the answer's `since` is then set; `probes.peerlist.merged` applies it)."""
        params = _drop_none({"since": since}) or None
        return Call("GET", f"/v1/nodes/{seg(node_id)}/peers", model("PeerList"), params=params)

    @endpoint
    def join_node(
        self, *, join_token: str, region: str, name: str, public_key: str, endpoint: str
    ) -> Call[s.NodeJoined]:
        """POST /v1/nodes: join with a join token; returns the node credential (once) and peers."""
        body = {"join_token": join_token, "region": region, "name": name, "public_key": public_key}
        return Call("POST", "/v1/nodes", model("NodeJoined"), json={**body, "endpoint": endpoint})

    # --- links, routes, placement --------------------------------------------------------
    @endpoint
    def links(self) -> Call[s.LinksOut]:
        """GET /v1/links: every measured region link."""
        return Call("GET", "/v1/links", model("LinksOut"))

    @endpoint
    def link_history(self, src: str, dst: str, since: str = "24h", step: str = "auto") -> Call[s.LinkHistoryOut]:
        """GET /v1/links/{src}/{dst}/history: RTT, loss, jitter rollups (since: 24h, 7d or ISO; step: 1m, 1h, auto)."""
        params = {"since": since, "step": step}
        return Call("GET", f"/v1/links/{seg(src)}/{seg(dst)}/history", model("LinkHistoryOut"), params=params)

    @endpoint
    def route_table(self) -> Call[s.RouteTableOut]:
        """GET /v1/routes: the whole route table (see `routes.watch()` for a local copy)."""
        return Call("GET", "/v1/routes", model("RouteTableOut"))

    @endpoint
    def fetch_route(self, src: str, dst: str) -> Call[s.RouteOut]:
        """GET /v1/routes/{src}/{dst} over HTTP (`route()` answers from the local table)."""
        return Call("GET", f"/v1/routes/{seg(src)}/{seg(dst)}", model("RouteOut"))

    @endpoint
    def explain(self, src: str, dst: str) -> Call[s.RouteExplained]:
        """GET /v1/routes/{src}/{dst}?explain=true: the path, the candidates and why."""
        return Call("GET", f"/v1/routes/{seg(src)}/{seg(dst)}", model("RouteExplained"), params={"explain": "true"})

    @endpoint
    def placement(
        self, near: str | None = None, lat: float | None = None, lon: float | None = None
    ) -> Call[s.PlacementOut]:
        """GET /v1/placement: where a new session near a region (or a lat/lon) should go."""
        return Call("GET", "/v1/placement", model("PlacementOut"), params=_drop_none(dict(near=near, lat=lat, lon=lon)))

    # --- events --------------------------------------------------------------------------
    @endpoint
    def events(self, since: str | int | None = None, limit: int = 100, wait: float = 0) -> Call[list[s.EventOut]]:
        """GET /v1/events after `since` (an event id or ISO time); `wait` > 0 long polls for new ones."""
        params = _drop_none({"since": None if since is None else str(since), "limit": limit, "wait": wait or None})
        return Call(
            "GET",
            "/v1/events",
            model_list("EventOut"),
            params=params,
            timeout=wait + LONG_POLL_SLACK_S if wait else None,
        )

    # --- tokens --------------------------------------------------------------------------
    @endpoint
    def create_token(self, name: str, scope: s.Scope, ttl_s: int | None = None) -> Call[s.TokenCreated]:
        """POST /v1/tokens (admin): the secret is in the answer, once."""
        body = _drop_none({"name": name, "scope": scope, "ttl_s": ttl_s or None})
        return Call("POST", "/v1/tokens", model("TokenCreated"), json=body)

    @endpoint
    def tokens(self) -> Call[list[s.TokenOut]]:
        """GET /v1/tokens (admin): active tokens, never their secrets."""
        return Call("GET", "/v1/tokens", model_list("TokenOut"))

    @endpoint
    def revoke_token(self, token_id: str) -> Call[s.TokenOut]:
        """DELETE /v1/tokens/{token_id} (admin)."""
        return Call("DELETE", f"/v1/tokens/{seg(token_id)}", model("TokenOut"))

    @endpoint
    def create_join_token(self, region: str, ttl_s: int = 3600, uses: int = 1) -> Call[s.JoinTokenOut]:
        """POST /v1/join-tokens (admin): a token for new nodes of one region."""
        body = {"region": region, "ttl_s": ttl_s, "uses": uses}
        return Call("POST", "/v1/join-tokens", model("JoinTokenOut"), json=body)

    # --- join policies and nonces (attested join) ----------------------------------------
    @endpoint
    def create_join_policy(self, policy: s.JoinPolicyIn) -> Call[s.JoinPolicyOut]:
        """POST /v1/join-policies (admin): which cloud accounts may join by their identity, and where."""
        body = policy.model_dump(mode="json", exclude_defaults=True)
        return Call("POST", "/v1/join-policies", model("JoinPolicyOut"), json={**body, "id": policy.id})

    @endpoint
    def join_policies(self) -> Call[list[s.JoinPolicyOut]]:
        """GET /v1/join-policies (admin), in the order they are tried."""
        return Call("GET", "/v1/join-policies", model_list("JoinPolicyOut"))

    @endpoint
    def delete_join_policy(self, policy_id: str) -> Call[s.JoinPolicyOut]:
        """DELETE /v1/join-policies/{policy_id} (admin)."""
        return Call("DELETE", f"/v1/join-policies/{seg(policy_id)}", model("JoinPolicyOut"))

    @endpoint
    def join_nonce(self) -> Call[s.JoinNonceOut]:
        """GET /v1/join-nonce: a single-use nonce for an Azure attested document (no token needed)."""
        return Call("GET", "/v1/join-nonce", model("JoinNonceOut"))
