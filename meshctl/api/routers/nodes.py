"""Nodes: join, list, remove, drain, peers (with generation, ETag and long poll), key rotation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response

from meshctl.api.deps import Admin, AnyCaller, Ctl, Node, Operator, Reader
from meshctl.api.params import RegionQuery
from meshctl.api.problems import AUTH, BODY, problem_responses
from meshctl.service.auth import Principal
from meshctl.service.errors import Forbidden
from meshctl.wire import schemas as s

router = APIRouter(prefix="/v1/nodes", tags=["nodes"])

NodeId = Annotated[str, Path(max_length=64, description="A node id, e.g. n-0123456789abcdef")]
ETAG_HEADERS: dict[str, Any] = {
    "ETag": {"description": 'The peer generation as an entity tag, `"p<generation>"`', "schema": {"type": "string"}}
}


@router.post(
    "",
    response_model=s.NodeJoined,
    status_code=201,
    responses=problem_responses(401, 403, 404, 409, *BODY, 503),
    openapi_extra={"security": []},  # no bearer token: the join token or the signed document is the proof
)
async def join(body: s.NodeJoin, ctl: Ctl) -> Response:
    """Join with a join token (labs, on-prem) or by cloud identity (`attestation`), exactly one of the two;
    the node keeps its private key, we keep its public key.

    401 `attestation-<cause>` when the identity document does not verify (forged, altered, another
    cloud's, wrong audience, expired, nonce spent or not ours); 403 `join-policy` when no join policy
    admits it (the rule is named), or `forbidden` when the join token is unknown, expired, used up or
    for another region; 409 when the same cloud instance is a live node already (remove it first).
    """
    return Response(await ctl.join_json(body), status_code=201, media_type="application/json")


@router.get("", response_model=list[s.NodeOut], responses=problem_responses(*AUTH, 422))
async def list_nodes(ctl: Ctl, _: Reader, region: RegionQuery = None) -> list[s.NodeOut]:
    return [
        ctl.node_out(n)
        for n in sorted(ctl.nodes.values(), key=lambda n: (n.region, n.name))
        if region is None or n.region == region
    ]


@router.get("/{node_id}", response_model=s.NodeOut, responses=problem_responses(*AUTH, 404, 422))
async def get_node(node_id: NodeId, ctl: Ctl, who: AnyCaller) -> s.NodeOut:
    """One node (a node credential may read only its own)."""
    _self_or_reader(who, node_id)
    return ctl.node_out(ctl.get_node(node_id))


@router.delete("/{node_id}", response_model=s.NodeOut, responses=problem_responses(*AUTH, 404, 422, 503))
async def remove_node(node_id: NodeId, ctl: Ctl, _: Admin) -> s.NodeOut:
    return await ctl.remove_node(node_id)


@router.post(
    "/{node_id}/drain",
    response_model=s.NodeOut | s.NodeDrainPreview,
    responses=problem_responses(*AUTH, 404, *BODY, 503),
)
async def drain_node(
    node_id: NodeId, body: s.DrainRequest, ctl: Ctl, who: Operator, dry_run: bool = False
) -> s.NodeOut | s.NodeDrainPreview:
    """Drain one node: it takes no new sessions (placement leaves it out) and relays nothing; its
    agent learns it through its peer long poll (503 on its /healthz, its drain hook runs).
    `?dry_run=true` shows what would change and changes nothing."""
    if dry_run:
        return ctl.node_drain_preview(node_id)
    return await ctl.drain_node(node_id, body.reason, who.name)


@router.delete("/{node_id}/drain", response_model=s.NodeOut, responses=problem_responses(*AUTH, 404, 409, 422, 503))
async def undrain_node(node_id: NodeId, ctl: Ctl, who: Operator) -> s.NodeOut:
    """Lift a node's drain (409 if the node has none; a region drain is lifted on the region)."""
    return await ctl.undrain_node(node_id, who.name)


@router.get(
    "/{node_id}/peers",
    response_model=s.PeerList,
    responses={
        200: {"headers": ETAG_HEADERS},
        304: {"description": "Unchanged: If-None-Match names the current ETag", "headers": ETAG_HEADERS},
        **problem_responses(*AUTH, 404, 422),
    },
)
async def peers(
    node_id: NodeId,
    ctl: Ctl,
    who: AnyCaller,
    if_none_match: Annotated[str | None, Header(description="An ETag from an earlier answer")] = None,
    wait: Annotated[
        float, Query(ge=0, le=30, description="Long poll: with If-None-Match, hold up to this many seconds")
    ] = 0,
    since: Annotated[
        int | None,
        Query(
            ge=0,
            description="The `generation` of the list the caller holds: answer only the peers changed since and the "
            "ids of those that left (`since` is set in the answer; when it is null the answer is the whole list)",
        ),
    ] = None,
) -> Response:
    """The node's peers; with If-None-Match and `wait`, a long poll until they change; with `since`,
    only what changed (a join then costs each waiting node one entry, not the whole list)."""
    _self_or_reader(who, node_id)
    ctl.get_node(node_id)
    start = ctl.peer_generation
    if wait > 0 and s.etag_matches(if_none_match, s.peers_etag(start)):
        await ctl.wait_peers(node_id, start, wait)
    etag = s.peers_etag(ctl.peer_generation)
    if s.etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    # the list as the peer book keeps it: one copy of each entry's JSON, no model per peer
    return Response(ctl.peers_json(node_id, since), media_type="application/json", headers={"ETag": etag})


@router.put("/{node_id}/key", response_model=s.NodeOut, responses=problem_responses(*AUTH, 404, *BODY, 503))
async def rotate_key(node_id: NodeId, body: s.NodeKeyUpdate, ctl: Ctl, who: Node) -> s.NodeOut:
    """A node's new public key (with its own credential)."""
    _only_self(who, node_id)
    return await ctl.update_node(node_id, public_key=body.public_key)


@router.put("/{node_id}/endpoint", response_model=s.NodeOut, responses=problem_responses(*AUTH, 404, *BODY, 503))
async def set_endpoint(node_id: NodeId, body: s.NodeEndpointUpdate, ctl: Ctl, who: Node) -> s.NodeOut:
    """A node's new public endpoint (with its own credential)."""
    _only_self(who, node_id)
    return await ctl.update_node(node_id, endpoint=body.endpoint)


def _only_self(who: Principal, node_id: str) -> None:
    if who.kind != "node" or who.id != node_id:
        raise Forbidden("a node credential acts only for its own node")


def _self_or_reader(who: Principal, node_id: str) -> None:
    if who.kind == "node":
        _only_self(who, node_id)
    elif not who.allows("reader"):
        raise Forbidden("this needs the reader scope")
