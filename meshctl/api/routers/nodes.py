"""Nodes: join, list, remove, peers (with generation, ETag and long poll), key rotation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from meshctl.api import schemas as s
from meshctl.api.deps import Admin, AnyCaller, Ctl, Node, Reader
from meshctl.service.controller import Forbidden

router = APIRouter(prefix="/v1/nodes", tags=["nodes"])


@router.post("", response_model=s.NodeJoined, status_code=201)
async def join(body: s.NodeJoin, ctl: Ctl) -> s.NodeJoined:
    """Join with a join token; the node keeps its private key, we keep its public key."""
    return await ctl.join(body)


@router.get("", response_model=list[s.NodeOut])
async def list_nodes(ctl: Ctl, _: Reader, region: str | None = None) -> list[s.NodeOut]:
    return [
        ctl.node_out(n)
        for n in sorted(ctl.nodes.values(), key=lambda n: (n.region, n.name))
        if region is None or n.region == region
    ]


@router.get("/{node_id}", response_model=s.NodeOut)
async def get_node(node_id: str, ctl: Ctl, who: AnyCaller) -> s.NodeOut:
    _self_or_reader(who, node_id)
    return ctl.node_out(ctl.get_node(node_id))


@router.delete("/{node_id}", response_model=s.NodeOut)
async def remove_node(node_id: str, ctl: Ctl, _: Admin) -> s.NodeOut:
    return await ctl.remove_node(node_id)


def _etag(generation: int) -> str:
    return f'"p{generation}"'


@router.get(
    "/{node_id}/peers", response_model=s.PeerList, responses={304: {"description": "unchanged since the given ETag"}}
)
async def peers(
    node_id: str,
    ctl: Ctl,
    who: AnyCaller,
    response: Response,
    if_none_match: Annotated[str | None, Header()] = None,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> s.PeerList | Response:
    """The node's peers; with If-None-Match and `wait`, a long poll until they change."""
    _self_or_reader(who, node_id)
    ctl.get_node(node_id)
    if if_none_match is not None and if_none_match == _etag(ctl.peer_generation) and wait > 0:
        start = ctl.peer_generation
        await ctl.wait_changed(lambda: ctl.peer_generation != start or node_id not in ctl.nodes, wait)
    peer_list = ctl.peers_of(node_id)
    etag = _etag(peer_list.generation)
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return peer_list


@router.put("/{node_id}/key", response_model=s.NodeOut)
async def rotate_key(node_id: str, body: s.NodeKeyUpdate, ctl: Ctl, who: Node) -> s.NodeOut:
    _only_self(who, node_id)
    return await ctl.update_node(node_id, public_key=body.public_key)


@router.put("/{node_id}/endpoint", response_model=s.NodeOut)
async def set_endpoint(node_id: str, body: s.NodeEndpointUpdate, ctl: Ctl, who: Node) -> s.NodeOut:
    _only_self(who, node_id)
    return await ctl.update_node(node_id, endpoint=body.endpoint)


def _only_self(who: object, node_id: str) -> None:
    if getattr(who, "id", None) != node_id:
        raise Forbidden("a node credential acts only for its own node")


def _self_or_reader(who: object, node_id: str) -> None:
    if getattr(who, "kind", None) == "node":
        _only_self(who, node_id)
    elif not who.allows("reader"):  # type: ignore[attr-defined]
        raise Forbidden("this needs the reader scope")
