"""The client's public surface and its reading of error bodies (no server needed)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

import meshctl.client
from meshctl.client import (
    AsyncClient,
    Conflict,
    Forbidden,
    InvalidInput,
    MeshError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    TableNotLoaded,
    Unauthorized,
    Unavailable,
)
from meshctl.client._errors import from_response

PUBLIC = {
    "DEFAULT_CONTROLLER",
    "AsyncClient",
    "AsyncRoutes",
    "Client",
    "Config",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "JsonClient",
    "MeshError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RouteTable",
    "ServerError",
    "SyncRoutes",
    "TableNotLoaded",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "config_path",
    "resolve",
}


def test_public_surface_is_curated() -> None:
    assert set(meshctl.client.__all__) == PUBLIC, "a change to the public API: update PUBLIC on purpose"
    assert len(meshctl.client.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert getattr(meshctl.client, name) is not None
    with pytest.raises(AttributeError):
        meshctl.client.Nothing  # noqa: B018


def test_importing_the_errors_does_not_import_httpx_or_pydantic() -> None:
    import subprocess
    import sys

    code = "import sys, meshctl.client; print('httpx' in sys.modules, 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def problem(status: int, slug: str, detail: str, **extra: object) -> bytes:
    return json.dumps(
        {"type": f"urn:meshctl:problem:{slug}", "title": slug, "status": status, "detail": detail, **extra}
    ).encode()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (422, InvalidInput),
        (429, RateLimited),
        (500, ServerError),
        (503, Unavailable),
    ],
)
def test_each_status_has_its_class(status: int, cls: type[MeshError]) -> None:
    exc = from_response(status, problem(status, "x", "what went wrong", field="region"))
    assert type(exc) is cls and isinstance(exc, MeshError)
    assert (exc.status, exc.detail, exc.field) == (status, "what went wrong", "region")
    assert exc.problem["type"] == "urn:meshctl:problem:x"
    assert str(exc) == "what went wrong"


def test_rfc9457_validation_errors() -> None:
    body = problem(
        422,
        "invalid-input",
        "invalid input: peers[0].sent",
        field="peers[0].sent",
        errors=[{"field": "peers[0].sent", "message": "must be >= 0"}],
    )
    exc = from_response(422, body)
    assert isinstance(exc, InvalidInput)
    assert exc.errors == [("peers[0].sent", "must be >= 0")]
    assert str(exc) == "invalid input: peers[0].sent (peers[0].sent: must be >= 0)"


def test_old_shapes_still_read() -> None:
    old = from_response(404, b'{"detail": "unknown region \'aws:mars-1\'", "field": "region"}')
    assert isinstance(old, NotFound) and old.detail == "unknown region 'aws:mars-1'" and old.field == "region"
    pydantic_shape = json.dumps(
        {
            "detail": [{"loc": ["body", "peers", 0, "sent"], "msg": "must be >= 0", "type": "x"}],
            "message": "invalid input: peers.0.sent",
        }
    ).encode()
    exc = from_response(422, pydantic_shape)
    assert isinstance(exc, InvalidInput)
    assert exc.errors == [("peers[0].sent", "must be >= 0")] and exc.field == "peers[0].sent"
    assert exc.detail == "invalid input: peers.0.sent"
    text = from_response(502, b"<html>bad gateway</html>", "Bad Gateway")
    assert isinstance(text, ServerError) and "bad gateway" in text.detail
    empty = from_response(500, b"", "Internal Server Error")
    assert empty.detail == "Internal Server Error"


def test_route_before_any_table_is_a_clear_error() -> None:
    with meshctl.client.Client("http://127.0.0.1:9") as c, pytest.raises(TableNotLoaded, match="watch"):
        c.route("aws:us-east-1", "gcp:us-east4")


def test_watch_paces_itself_when_the_server_ignores_wait() -> None:
    """A server without the long poll answers 304 at once: the watch must not spin."""
    table = {
        "generation": 3,
        "computed_at": None,
        "weights": {
            "loss_weight": 1,
            "jitter_weight": 1,
            "relay_penalty_ms": 1,
            "hysteresis_ratio": 0.1,
            "max_relays": 2,
            "stale_after_s": 30,
        },
        "routes": [
            {
                "src": "aws:us-east-1",
                "dst": "gcp:us-east4",
                "path": ["aws:us-east-1", "gcp:us-east4"],
                "rtt_ms": 2.0,
                "cost": 2.0,
                "via_relay": False,
                "reachable": True,
                "generation": 3,
            }
        ],
    }
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("If-None-Match") == '"g3"':
            return httpx.Response(304, headers={"ETag": '"g3"'})
        return httpx.Response(200, json=table, headers={"ETag": '"g3"'})

    async def main() -> None:
        async with AsyncClient("http://mesh.test", "t", transport=httpx.MockTransport(handler)) as c:
            await c.routes.watch(poll_interval=0.2)
            assert c.route("aws:us-east-1", "gcp:us-east4").path == ["aws:us-east-1", "gcp:us-east4"]
            start = time.monotonic()
            await asyncio.sleep(1.0)
            polls = len(seen) - 1
            assert 2 <= polls <= 1.0 / 0.2 + 2, polls
            assert c.routes.generation == 3 and c.routes.age is not None and c.routes.age < 0.5
            with pytest.raises(NotFound):
                c.route("aws:us-east-1", "aws:mars-1")
            assert time.monotonic() - start < 2

    asyncio.run(main())
    assert seen[1].url.params["wait"] == "25.0" and seen[1].headers["If-None-Match"] == '"g3"'
