"""The dashboard's server side, without a browser: its files and their headers, `/v1/whoami`,
and the Server-Sent Events stream (live, resumable with Last-Event-ID), on every backend."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ControllerProcess

A = "aws:us-east-1"
UI = Path(__file__).resolve().parents[2] / "meshctl" / "api" / "ui"


def test_files_headers_and_caching(controller: ControllerProcess) -> None:
    with httpx.Client(base_url=controller.url, timeout=10) as c:
        r = c.get("/ui")
        assert r.status_code == 308 and r.headers["location"] == "/ui/"
        page = c.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp and "http" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        etag = page.headers["etag"]
        assert c.get("/ui/", headers={"If-None-Match": etag}).status_code == 304

        html = page.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script"
        assert " style=" not in html and "<style" not in html, "no inline style"
        refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
        assert {"app.js", "style.css", "land.svg"} <= set(refs)
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        for ref in refs:
            assert "://" not in ref, f"{ref}: every asset ships in the package (no CDN)"
            asset = c.get(f"/ui/{ref}")
            assert asset.status_code == 200, ref
            assert asset.headers["content-type"].startswith(types[Path(ref).suffix]), ref
            assert asset.headers["cache-control"] == "no-cache" and asset.headers["etag"]
            assert "content-security-policy" in asset.headers
        assert len(c.get("/ui/land.svg").content) < 100_000

        # gzipped for browsers that accept it, each encoding with its own strong tag
        zipped = c.get("/ui/app.js", headers={"Accept-Encoding": "gzip"})
        plain = c.get("/ui/app.js", headers={"Accept-Encoding": "identity"})
        assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
        assert int(zipped.headers["content-length"]) < len(plain.content) / 2 and zipped.content == plain.content
        assert zipped.headers["etag"] != plain.headers["etag"] and "accept-encoding" in zipped.headers["vary"].lower()
        again = {"If-None-Match": zipped.headers["etag"]}
        assert c.get("/ui/app.js", headers={**again, "Accept-Encoding": "gzip"}).status_code == 304
        assert c.get("/ui/app.js", headers={**again, "Accept-Encoding": "identity"}).status_code == 200

        for bad in ("/ui/nope.js", "/ui/..%2Fapp.py", "/ui/%2E%2E/routers/ui.py", "/ui/__init__.py"):
            assert c.get(bad).status_code == 404, bad


def test_assets_call_only_this_origin() -> None:
    js = (UI / "app.js").read_text()
    urls = set(re.findall(r"https?://[^\s\"'`)]+", js))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace is a name, not a request
    assert "localStorage" not in js and "?token" not in js and "EventSource" not in js.replace("EventSource cannot", "")
    pyproject = tomllib.loads((UI.parents[2] / "pyproject.toml").read_text())
    assert "api/ui/*" in pyproject["tool"]["setuptools"]["package-data"]["meshctl"], "shipped in the wheel"


def test_whoami(controller: ControllerProcess) -> None:
    with controller.client() as c:
        tokens = {
            scope: c.post("/v1/tokens", json={"name": scope, "scope": scope}).json()["token"]
            for scope in ("reader", "operator")
        }
        me = c.get("/v1/whoami").json()
    assert me["kind"] == "token" and me["scope"] == "admin" and me["can_drain"] and me["can_admin"]
    for scope, can_drain in (("reader", False), ("operator", True)):
        with controller.client(tokens[scope]) as c:
            got = c.get("/v1/whoami").json()
        assert got == {"kind": "token", "name": scope, "scope": scope, "can_drain": can_drain, "can_admin": False}
    with controller.client("") as c:
        r = c.get("/v1/whoami")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    with controller.client("msh_r_wrong-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") as c:
        assert c.get("/v1/whoami").status_code == 401


def read_events(lines: Any, count: int) -> list[tuple[int, dict[str, Any]]]:
    """The next `count` SSE events (id, data) from an iterator of lines."""
    out: list[tuple[int, dict[str, Any]]] = []
    ident: int | None = None
    for line in lines:
        if line.startswith("id: "):
            ident = int(line[4:])
        elif line.startswith("data: "):
            assert ident is not None
            out.append((ident, json.loads(line[6:])))
            if len(out) == count:
                return out
    raise AssertionError(f"the stream ended after {out}")


def test_event_stream_live_and_resumable(controller: ControllerProcess) -> None:
    controller.add_region(A)
    headers = {"Authorization": f"Bearer {controller.admin_token}", "Accept": "text/event-stream"}
    timeout = httpx.Timeout(10, read=20)
    with httpx.Client(base_url=controller.url, timeout=timeout) as c:
        with c.stream("GET", "/v1/events/stream", headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            lines = r.iter_lines()
            assert next(lines).startswith("retry: ")
            connected = next(lines)
            assert connected.startswith(": connected after event ")
            after = int(connected.rsplit(" ", 1)[1])
            with controller.client() as api:  # only what happens after connecting comes
                api.post(f"/v1/regions/{A}/drain", json={"reason": "sse drain"}).raise_for_status()
            got: list[tuple[int, dict[str, Any]]] = []
            while not any(data["kind"] == "drain" for _, data in got):  # (a leader or join event may come first)
                got += read_events(lines, 1)
            assert [i for i, _ in got] == sorted(i for i, _ in got) and got[0][0] > after
            ((drain_id, drain),) = [e for e in got if e[1]["kind"] == "drain"]
        assert drain["region"] == A and drain["reason"] == "sse drain" and drain["id"] == drain_id
        with controller.client() as api:
            listed = api.get("/v1/events", params={"since": drain_id - 1, "limit": 1}).json()
        assert listed == [drain], "the stream sends what GET /v1/events answers"

        # a reconnect names the last id it saw, and gets what it missed first
        with controller.client() as api:
            api.delete(f"/v1/regions/{A}/drain").raise_for_status()
            missed = api.get("/v1/events", params={"since": drain_id}).json()
        assert any(e["kind"] == "undrain" for e in missed)
        with c.stream("GET", "/v1/events/stream", headers={**headers, "Last-Event-ID": str(drain_id)}) as r:
            replayed = read_events(r.iter_lines(), len(missed))
        assert [data for _, data in replayed] == missed and [i for i, _ in replayed] == [e["id"] for e in missed]
        with c.stream("GET", f"/v1/events/stream?since={drain_id - 1}", headers=headers) as r:
            assert read_events(r.iter_lines(), 1)[0] == (drain_id, drain)

        assert c.get("/v1/events/stream").status_code == 401
        bad = c.get("/v1/events/stream", headers={**headers, "Last-Event-ID": "x1"})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
