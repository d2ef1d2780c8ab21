"""Every error is RFC 9457 problem details, and the route table's long poll, through a real server."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.conftest import ControllerProcess

MEMBERS = {"type", "title", "status", "detail", "field"}


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """`r` is a problem of this status and slug, with every member the format promises."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert set(body) >= MEMBERS, body
    assert body["type"] == f"urn:meshctl:problem:{slug}" and body["status"] == status, body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["field"] is None or isinstance(body["field"], str), body
    if status == 422:
        assert body["errors"] and all(isinstance(e["field"], str) and e["message"] for e in body["errors"]), body
        assert body["field"] == body["errors"][0]["field"], body
    return body


def _token(ctl: ControllerProcess, scope: str) -> str:
    with ctl.client() as c:
        r = c.post("/v1/tokens", json={"name": f"p-{scope}", "scope": scope})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def test_every_error_status_is_a_problem(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1")
    reader = _token(controller, "reader")
    with controller.client("") as anon:
        r = anon.get("/v1/regions")
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        fast = anon.get("/v1/routes/aws:us-east-1/aws:us-east-1")  # the hot path, not FastAPI's
        assert_problem(fast, 401, "unauthorized")
        assert fast.headers["www-authenticate"] == "Bearer"
        assert_problem(anon.post("/v1/reports", json={}), 401, "unauthorized")
    with controller.client(reader) as c:
        body = assert_problem(c.post("/v1/regions/aws:us-east-1/drain", json={"reason": "x"}), 403, "forbidden")
        assert "operator" in body["detail"]
        assert_problem(c.post("/v1/reports", json={}), 403, "forbidden")
    with controller.client() as c:
        body = assert_problem(c.get("/v1/regions/aws:mars-1"), 404, "not-found")
        assert "aws:mars-1" in body["detail"]
        body = assert_problem(c.get("/v1/routes/aws:mars-1/aws:us-east-1"), 404, "not-found")
        assert body["field"] == "src"
        body = assert_problem(c.get("/no/such/path"), 404, "not-found")
        assert "/no/such/path" in body["detail"]
        body = assert_problem(c.delete("/v1/regions/aws:us-east-1/drain"), 409, "conflict")
        assert body["field"] == "region"
        body = assert_problem(c.put("/v1/regions/aws:us-east-1", json={"lat": 100, "lon": "x"}), 422, "invalid-input")
        assert [e["field"] for e in body["errors"]] == ["lat", "lon"]
        assert body["detail"].startswith("invalid input: lat: ")
        body = assert_problem(c.put("/v1/regions/NOT-A-REGION", json={"lat": 1, "lon": 1}), 422, "invalid-input")
        assert body["field"] == "region_id"
        body = assert_problem(c.post("/v1/tokens", content=b"{not json", headers=_json), 422, "invalid-input")
        assert body["field"] == "body"
        body = assert_problem(c.get("/v1/routes/aws:us-east-1/NOPE"), 422, "invalid-input")
        assert body["field"] == "dst" and body["errors"] == [
            {"field": "dst", "message": body["detail"].removeprefix("dst: "), "code": None}
        ]
        body = assert_problem(c.get("/v1/routes", params={"wait": 61}), 422, "invalid-input")
        assert body["errors"][0]["field"] == "wait"
        body = assert_problem(c.get("/v1/routes/aws:us-east-1/aws:us-east-1?explain=maybe"), 422, "invalid-input")
        assert body["field"] == "explain"
        body = assert_problem(c.post("/v1/tokens", content=b"A\xff\xfe\xfd", headers=_json), 400, "bad-request")
        for big in (b"x" * 2_000_000, _chunks(2_000_000)):  # announced, and streamed without a length
            r = c.post("/v1/tokens", content=big, headers=_json)
            assert "larger than 1048576 bytes" in assert_problem(r, 413, "payload-too-large")["detail"]


_json = {"content-type": "application/json"}


def _chunks(size: int) -> Any:
    def gen() -> Any:
        sent = 0
        while sent < size:
            sent += 65536
            yield b"x" * 65536

    return gen()


def test_405_names_every_allowed_method_and_options_answers(controller: ControllerProcess) -> None:
    with controller.client() as c:
        for method, path, allow in [
            ("PATCH", "/v1/regions/aws:us-east-1", "GET, OPTIONS, PUT"),
            ("GET", "/v1/regions/aws:us-east-1/drain", "DELETE, OPTIONS, POST"),
            ("GET", "/v1/reports", "OPTIONS, POST"),
            ("DELETE", "/v1/routes/aws:us-east-1/gcp:us-east4", "GET, HEAD, OPTIONS"),
            ("POST", "/v1/routes", "GET, OPTIONS"),
        ]:
            r = c.request(method, path)
            body = assert_problem(r, 405, "method-not-allowed")
            assert r.headers["allow"] == allow, (method, path, r.headers)
            assert method in body["detail"]
            options = c.options(path)
            assert options.status_code == 204 and options.headers["allow"] == allow


def test_unset_and_empty_filters(controller: ControllerProcess) -> None:
    """Values the schema allows are accepted: `since=` (empty) reads from the start."""
    controller.add_region("aws:us-east-1")
    with controller.client() as c:
        # the controller's own `leader` event comes once it leads: before the reads, not between them
        controller.wait_for(lambda: c.get("/v1/events", params={"kind": "leader"}).json(), what="the leader event")
        c.post("/v1/regions/aws:us-east-1/drain", json={"reason": "x"}).raise_for_status()
        everything = c.get("/v1/events").json()
        assert everything and c.get("/v1/events", params={"since": ""}).json() == everything
        assert c.get("/v1/events", params={"since": "2000-01-01T00:00:00Z"}).json() == everything
        assert c.get("/v1/events", params={"since": str(everything[-1]["id"])}).json() == []
        assert_problem(c.get("/v1/events", params={"since": "yesterday"}), 422, "invalid-input")
        assert_problem(c.get("/v1/events", params={"since": "\u00b2"}), 422, "invalid-input")
        assert_problem(c.get("/v1/events", params={"kind": "nope"}), 422, "invalid-input")
        assert_problem(c.get("/v1/nodes", params={"region": "AWS"}), 422, "invalid-input")


def test_node_inputs_follow_the_published_patterns(controller: ControllerProcess) -> None:
    """public_key and endpoint are refused exactly when they miss the schema's patterns."""
    import re

    controller.add_region("aws:us-east-1")
    with controller.client() as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
        key_re = re.compile(schemas["NodeJoin"]["properties"]["public_key"]["pattern"])
        ep_re = re.compile(schemas["NodeJoin"]["properties"]["endpoint"]["pattern"])
        jt = c.post("/v1/join-tokens", json={"region": "aws:us-east-1", "uses": 100}).json()["token"]
        good_key, good_ep = "A" * 43 + "=", "192.0.2.1:51820"
        keys = [good_key, "B" * 43 + "=", "A" * 42 + "==", "A" * 44, "", "A" * 43 + "=\n", "w" * 43 + "="]
        endpoints = [
            good_ep,
            "[2001:db8::1]:51820",
            "",
            "192.0.2.1",
            "2001:db8::1:51820",
            "192.0.2.1:0",
            "1.2.3.4:65536",
        ]
        cases = [(k, good_ep) for k in keys] + [(good_key, e) for e in endpoints[1:]]
        for i, (key, ep) in enumerate(cases):
            body = {"join_token": jt, "region": "aws:us-east-1", "name": f"n{i}", "public_key": key, "endpoint": ep}
            r = c.post("/v1/nodes", json=body)
            if key_re.fullmatch(key) and ep_re.fullmatch(ep):
                assert r.status_code == 201, (key, ep, r.text)
            else:
                field = "public_key" if not key_re.fullmatch(key) else "endpoint"
                assert assert_problem(r, 422, "invalid-input")["field"] == field, (key, ep)


def test_routes_long_poll(controller: ControllerProcess) -> None:
    """wait= holds a request whose ETag is current until the generation moves, or answers 304."""
    a, b = "aws:us-east-1", "gcp:us-east4"
    controller.feed_links({(a, b): 20.0, (b, a): 20.0})
    with controller.client() as c:
        controller.wait_for(lambda: c.get("/v1/routes").json()["routes"], what="a route table")
        # nothing changes: 304 after the wait, not before (once the first tables are out)
        for _ in range(10):
            first = c.get("/v1/routes")
            etag, generation = first.headers["etag"], first.json()["generation"]
            assert etag == f'"g{generation}"'
            start = time.monotonic()
            r = c.get("/v1/routes", params={"wait": 1}, headers={"If-None-Match": etag})
            if r.status_code == 304:
                break
        assert r.status_code == 304 and r.headers["etag"] == etag and time.monotonic() - start >= 0.9
        # a change while waiting: answered as soon as it is published, with the new table
        c3 = "azure:westeurope"
        more = {(a, b): 20.0, (b, a): 20.0, (a, c3): 5.0, (c3, a): 5.0}
        timer = threading.Timer(1.0, lambda: controller.feed_links(more))
        timer.start()
        start = time.monotonic()
        r = c.get("/v1/routes", params={"wait": 20}, headers={"If-None-Match": f'W/{etag}, "other"'})
        elapsed = time.monotonic() - start
        timer.join()
        assert r.status_code == 200 and r.json()["generation"] > generation, r.text
        assert any(x["dst"] == c3 for x in r.json()["routes"]), "answered before the change"
        assert r.headers["etag"] == f'"g{r.json()["generation"]}"' and 0.9 <= elapsed < 10
        # without If-None-Match, or with another ETag, wait= does not hold
        start = time.monotonic()
        assert c.get("/v1/routes", params={"wait": 20}, headers={"If-None-Match": '"g0"'}).status_code == 200
        assert c.get("/v1/routes", params={"wait": 20}).status_code == 200
        assert time.monotonic() - start < 5


def test_store_down_and_crashes_are_problems_without_a_traceback() -> None:
    """In process: the app's handlers answer a store outage with 503 and a crash with a bare 500."""
    import asyncio

    from fastapi import FastAPI
    from sqlalchemy.exc import OperationalError

    from meshctl.api import problems

    app = FastAPI()
    problems.install(app)

    @app.get("/down")
    async def down() -> None:
        raise OperationalError("INSERT ...", {}, ConnectionRefusedError("secret-host:5432 refused"))

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get(path)

    r = asyncio.run(get("/down"))
    assert_problem(r, 503, "store-unavailable")
    assert "secret" not in r.text
    r = asyncio.run(get("/crash"))
    body = assert_problem(r, 500, "internal")
    assert "secret" not in r.text and "Traceback" not in r.text and body["field"] is None
