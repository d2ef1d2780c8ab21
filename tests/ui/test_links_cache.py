"""`GET /v1/links`, which the dashboard's heatmap polls: an ETag and 304 while nothing it shows
has changed, a new answer when a measurement changes or a link goes stale, gzip for clients that
accept it. Links go stale here after 6 s so that the test can watch one do so."""

from __future__ import annotations

import gzip
import json
import time

import httpx
import pytest

from tests.conftest import ControllerProcess, client_side_backend

# an HTTP cache over the in-memory snapshot: the store behind it does not change what is checked
backend = pytest.fixture(params=["sqlite"])(client_side_backend)

REGIONS = ["aws:us-east-1", "aws:eu-west-2", "gcp:europe-west1", "gcp:asia-northeast1", "azure:westeurope"]
STALE_AFTER_S = 6.0


@pytest.fixture
def controller_env() -> dict[str, str]:
    return {"MESH_STALE_AFTER_S": str(STALE_AFTER_S)}


def rtts(scale: float = 1.0) -> dict[tuple[str, str], float]:
    return {(a, b): scale * (10.0 + 7 * i + j) for i, a in enumerate(REGIONS) for j, b in enumerate(REGIONS) if a != b}


def measured(c: httpx.Client, n: int) -> bool:
    links = c.get("/v1/links").json()["links"]
    return len(links) == n and all(x["fresh"] for x in links)


def test_links_answer_304_while_unchanged_and_gzip(controller: ControllerProcess) -> None:
    pairs = len(rtts())
    controller.feed_links(rtts())
    with controller.client() as c:
        controller.wait_for(lambda: measured(c, pairs), timeout=30, what="every link measured and fresh")
        first = c.get("/v1/links", headers={"Accept-Encoding": "identity"})
        assert first.status_code == 200 and "content-encoding" not in first.headers
        etag = first.headers["etag"]
        assert etag.startswith('W/"') and etag.endswith('"'), etag

        # the same measurements: 304 with the same tag and no body (ages aside), and again later
        again = c.get("/v1/links", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        time.sleep(0.5)
        assert c.get("/v1/links", headers={"If-None-Match": etag}).status_code == 304
        assert c.get("/v1/links", headers={"If-None-Match": '"another"'}).status_code == 200

        # gzip for a client that accepts it: the same JSON, far fewer bytes
        raw = httpx.get(
            f"{controller.url}/v1/links",
            headers={"Authorization": f"Bearer {controller.admin_token}", "Accept-Encoding": "gzip"},
        )
        assert raw.headers["content-encoding"] == "gzip" and "accept-encoding" in raw.headers["vary"].lower()
        zipped = json.loads(gzip.decompress(raw.read()) if raw.content[:2] == b"\x1f\x8b" else raw.content)
        plain = first.json()
        assert [(x["src"], x["dst"], x["rtt_p50_ms"]) for x in zipped["links"]] == [
            (x["src"], x["dst"], x["rtt_p50_ms"]) for x in plain["links"]
        ]
        assert int(raw.headers["content-length"]) < len(first.content) / 2

        # a measurement changes: a new tag and the new values
        controller.feed_links(rtts(scale=2.0))
        top = max(x["rtt_p50_ms"] for x in plain["links"])

        def new_values() -> httpx.Response | None:
            r = c.get("/v1/links", headers={"If-None-Match": etag})
            return r if r.status_code == 200 and max(x["rtt_p50_ms"] for x in r.json()["links"]) > top else None

        changed = controller.wait_for(new_values, what="the new measurements, not a 304")
        assert changed.headers["etag"] != etag

        # no new reports: the links go stale, and a 304 never hides that (each poll names the last tag)
        last = changed

        def went_stale() -> bool:
            nonlocal last
            r = c.get("/v1/links", headers={"If-None-Match": last.headers["etag"]})
            if r.status_code == 304:
                return False
            last = r
            return any(not x["fresh"] for x in r.json()["links"])

        controller.wait_for(went_stale, timeout=STALE_AFTER_S + 15, what="a new answer when links go stale")


def test_events_gzip_for_clients_that_accept_it(controller: ControllerProcess) -> None:
    """The dashboard's event timeline: gzip when accepted (the route changes make pages large),
    the same events as the plain answer; a small answer stays as it is."""
    for region in REGIONS:
        controller.add_region(region)
    controller.feed_links(rtts())
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    url = f"{controller.url}/v1/events?limit=1000"

    def enough() -> httpx.Response | None:
        r = httpx.get(url, headers={**headers, "Accept-Encoding": "identity"})
        return r if len(r.content) > 4000 else None

    plain = controller.wait_for(enough, what="a page of events over 4 kB")
    assert "content-encoding" not in plain.headers
    zipped = httpx.get(url, headers={**headers, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and "accept-encoding" in zipped.headers["vary"].lower()
    assert int(zipped.headers["content-length"]) < len(plain.content) / 2
    ids = [e["id"] for e in plain.json()]
    assert [e["id"] for e in zipped.json()][: len(ids)] == ids  # httpx decodes it: the same events
    # the controller's own leader event: a few hundred bytes, sent as they are
    small = httpx.get(f"{url[:-4]}1&kind=leader", headers={**headers, "Accept-Encoding": "gzip"})
    assert small.status_code == 200 and len(small.json()) == 1 and len(small.content) < 1400
    assert "content-encoding" not in small.headers
