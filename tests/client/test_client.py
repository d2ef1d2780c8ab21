"""meshctl.client against a real controller process (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from meshctl.client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    InvalidInput,
    JsonClient,
    NotFound,
    Unauthorized,
    Unreachable,
)
from meshctl.wire import schemas as s
from tests.conftest import ControllerProcess, client_side_backend, free_port

# client-side behaviour: one backend is enough (tests/api runs the API on every backend)
backend = pytest.fixture(params=["sqlite"])(client_side_backend)

A, B, C = "aws:us-east-1", "gcp:us-east4", "azure:westeurope"


@pytest.fixture
def mesh(controller: ControllerProcess) -> ControllerProcess:
    """A through B is cheaper than A to C direct, so A -> C goes via B until B is drained."""
    controller.feed_links({(A, B): 20.0, (B, A): 20.0, (B, C): 20.0, (C, B): 20.0, (A, C): 100.0, (C, A): 100.0})
    controller.wait_for(  # every region's report in: both ways relayed
        lambda: (
            controller.client().get(f"/v1/routes/{A}/{C}").json()["path"] == [A, B, C]
            and controller.client().get(f"/v1/routes/{C}/{A}").json()["path"] == [C, B, A]
        ),
        what="routes",
    )
    return controller


def test_every_error_class_from_a_real_response(controller: ControllerProcess) -> None:
    controller.add_region(A)
    with Client(controller.url, controller.admin_token) as admin:
        reader_token = admin.create_token("r", "reader").token
        with Client(controller.url) as anonymous, pytest.raises(Unauthorized) as no_token:
            anonymous.status()
        assert no_token.value.status == 401 and no_token.value.had_token is False and no_token.value.detail
        with Client(controller.url, reader_token) as reader, pytest.raises(Forbidden) as refused:
            reader.drain(A, "x")
        assert refused.value.status == 403 and "operator" in refused.value.detail
        with pytest.raises(NotFound) as missing:
            admin.region("aws:mars-1")
        assert missing.value.status == 404 and "unknown region 'aws:mars-1'" in missing.value.detail
        with pytest.raises(Conflict) as conflict:
            admin.undrain(A)
        assert conflict.value.status == 409 and "not drained" in conflict.value.detail
        with pytest.raises(InvalidInput) as invalid:
            admin.drain(A, "")
        assert invalid.value.status == 422 and invalid.value.field == "reason"
        assert [f for f, _ in invalid.value.errors] == ["reason"] and isinstance(invalid.value.problem, dict)
        assert admin.region(A).state == "active", "nothing changed"


def test_unreachable_controller() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as c, pytest.raises(Unreachable) as exc:
        c.status()
    assert exc.value.status is None and "cannot reach the controller" in str(exc.value)


def test_sync_client_returns_wire_models(mesh: ControllerProcess) -> None:
    with Client(mesh.url, mesh.admin_token) as c:
        st = c.status()
        assert isinstance(st, s.StatusOut) and st.generation >= 1
        assert {r.id for r in c.regions()} == {A, B, C}
        assert isinstance(c.links(), s.LinksOut)
        assert c.fetch_route(A, C).path == [A, B, C]
        explained = c.explain(A, C)
        assert explained.candidates and explained.reason
        assert c.placement(near=A).region in (A, B, C)
        preview = c.drain_preview(B, "maintenance")
        assert preview.dry_run and any(ch.src == A and ch.dst == C for ch in preview.routes_changed)
        drained = c.drain(B, "maintenance")
        assert drained.state == "drained" and drained.drain is not None
        events = c.events(limit=100)
        assert any(e.kind == "drain" and e.region == B for e in events)
        assert c.undrain(B).state == "active"
        jt = c.create_join_token(A, ttl_s=600, uses=2)
        assert jt.token and jt.uses_left == 2
        node = c.nodes()[0]
        assert c.node(node.id).id == node.id and isinstance(c.peers(node.id), s.PeerList)
        assert c.healthz()["ok"] is True


def test_json_client_answers_what_the_models_hold(mesh: ControllerProcess) -> None:
    """The CLI's `JsonClient` gives the API's JSON as it is: the same data the typed client's
    models dump, and the same named errors."""
    with Client(mesh.url, mesh.admin_token) as typed, JsonClient(mesh.url, mesh.admin_token) as raw:
        # regions carry health counters that move every tick: equal when no tick fell between the two
        pairs = ((raw.regions(), [r.model_dump(mode="json") for r in typed.regions()]) for _ in range(5))
        assert any(a == b for a, b in pairs)
        assert raw.fetch_route(A, C) == typed.fetch_route(A, C).model_dump(mode="json")
        assert raw.explain(A, C) == typed.explain(A, C).model_dump(mode="json")
        node = typed.nodes()[0]
        assert raw.peers(node.id) == typed.peers(node.id).model_dump(mode="json")
        assert raw.region(A)["state"] == "active" and raw.healthz()["ok"] is True
        with pytest.raises(NotFound) as missing:
            raw.region("aws:mars-1")
        assert missing.value.status == 404 and "unknown region 'aws:mars-1'" in missing.value.detail


def test_events_long_poll(controller: ControllerProcess) -> None:
    controller.add_region(A)
    with Client(controller.url, controller.admin_token) as c:
        # the start-up events (region added, leadership) come first; then the log is quiet
        events = controller.wait_for(lambda: [e for e in c.events(limit=100) if e.kind == "leader"] and c.events())
        last = events[-1].id
        t0 = time.monotonic()
        assert c.events(since=last, wait=1) == []
        assert time.monotonic() - t0 >= 0.8, "the controller held the request"


def test_async_client(mesh: ControllerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(mesh.url, mesh.admin_token) as c:
            st, regions = await asyncio.gather(c.status(), c.regions())
            assert st.generation >= 1 and {r.id for r in regions} == {A, B, C}
            assert (await c.fetch_route(A, C)).path == [A, B, C]
            with pytest.raises(NotFound):
                await c.fetch_route("aws:mars-1", A)

    asyncio.run(main())


def test_route_watch_follows_a_drain_without_a_request_per_lookup(mesh: ControllerProcess) -> None:
    sent: list[httpx.Request] = []
    with Client(mesh.url, mesh.admin_token, event_hooks={"request": [sent.append]}) as c:
        c.routes.watch()
        assert c.route(A, C).path == [A, B, C]
        g0, polls0 = c.routes.generation, c.routes.requests
        assert g0 is not None
        for _ in range(20_000):
            c.route(A, C)
        assert c.routes.requests - polls0 <= 3, "lookups are local"
        mesh.client().post(f"/v1/regions/{B}/drain", json={"reason": "watch test"}).raise_for_status()
        mesh.wait_for(lambda: c.route(A, C).path == [A, C], timeout=10, what="the local table to follow the drain")
        assert c.routes.generation is not None and c.routes.generation > g0
        assert c.route(A, C).generation == c.routes.generation
        assert sent == [], "the client itself made no request: the watch has its own connection"
        with pytest.raises(NotFound):
            c.route(A, "aws:mars-1")
        c.routes.stop()
        assert not c.routes.watching


def test_async_route_watch_follows_a_drain(mesh: ControllerProcess) -> None:
    async def main() -> None:
        sent: list[httpx.Request] = []

        async def count(request: httpx.Request) -> None:
            sent.append(request)

        async with AsyncClient(mesh.url, mesh.admin_token, event_hooks={"request": [count]}) as c:
            await c.routes.watch()
            assert c.route(A, C).path == [A, B, C]
            before = len(sent)
            for _ in range(20_000):
                c.route(A, C)
            assert len(sent) - before <= 3, "lookups make no request"
            await c.drain(B, "async watch test")
            deadline = time.monotonic() + 10
            while c.route(A, C).path != [A, C]:
                assert time.monotonic() < deadline, "the local table did not follow the drain"
                await asyncio.sleep(0.02)
            assert all(r.url.path in ("/v1/routes", f"/v1/regions/{B}/drain") for r in sent)
            await c.routes.stop()
            assert not c.routes.watching

    asyncio.run(main())


def test_fail_static_and_reconnect(mesh: ControllerProcess) -> None:
    with Client(mesh.url, mesh.admin_token) as c:
        c.routes.watch()
        mesh.stop()
        # (a long poll cut by the shutdown may first come back as a 5xx)
        mesh.wait_for(lambda: isinstance(c.routes.last_error, Unreachable), timeout=40, what="the watch to notice")
        assert not c.routes.connected
        # the last table the watch saw (the controller may have published once more before it stopped)
        generation = c.routes.generation
        time.sleep(1.0)
        assert c.route(A, C).path == [A, B, C], "the last table keeps answering"
        assert c.routes.generation == generation
        age = c.routes.age
        assert age is not None and age >= 1.0
        mesh.start()
        mesh.wait_for(lambda: c.routes.connected, timeout=30, what="the watch to reconnect")
        assert c.routes.age is not None and c.routes.age < 30
        # the restarted controller has no fresh measurements yet: whatever it says, the copy follows
        with mesh.client() as http:
            now = http.get("/v1/routes").json()["generation"]
        mesh.wait_for(
            lambda: (c.routes.generation or 0) >= now, timeout=10, what="the copy to follow the new controller"
        )


def test_watch_refused_raises_and_stops(controller: ControllerProcess) -> None:
    with Client(controller.url, "msh_a_wrong-token-xxxxxxxxxxxxxxxxxxxxxxxxxx") as c:
        with pytest.raises(Unauthorized):
            c.routes.watch(timeout=10)
        assert not c.routes.watching and not c.routes.loaded


def test_tls_authorities_only_for_https(controller: ControllerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client of an http:// controller loads no certificate authorities (httpx would load
    certifi's for every client: 30-40 ms of each CLI command); an https:// one still does, so
    certificates stay verified."""
    import ssl

    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        load(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    with Client(controller.url, controller.admin_token) as c:
        assert c.status().generation >= 0
        assert c.routes.loaded is False  # the route table exists once asked for, and closes with the client
    assert loads == []
    with Client("https://127.0.0.1:1") as tls:
        assert tls.base_url.startswith("https://")
    assert len(loads) >= 1, "https: httpx's default authorities (certifi or SSL_CERT_FILE)"
