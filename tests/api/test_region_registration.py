"""Regions registered all at once (a fleet's set-up script, the scale simulator) on every backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import ControllerProcess


def test_regions_registered_concurrently_all_succeed(controller: ControllerProcess) -> None:
    """40 `PUT /v1/regions/{id}` at once, 8 in flight: each is created once (201), none answers 500
    (on PostgreSQL, concurrent creations used to read the same next ordinal and run out of retries)."""
    ids = [f"aws:test-{i}" for i in range(40)]

    def put(rid: str) -> int:
        with controller.client() as c:
            return c.put(f"/v1/regions/{rid}", json={"lat": 10.0, "lon": 20.0}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(put, ids))
    assert codes == [201] * len(ids)
    with controller.client() as c:
        listed = {r["id"] for r in c.get("/v1/regions").json()}
        assert listed >= set(ids)
        assert c.put(f"/v1/regions/{ids[0]}", json={"lat": 11.0, "lon": 20.0}).status_code == 200  # an update
