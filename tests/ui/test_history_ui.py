"""The dashboard's link history view, without a browser: the page has its chart's place, the script
asks exactly the ranges the endpoint serves, and what the endpoint returns is what the script draws."""

from __future__ import annotations

import re
import time
from pathlib import Path

from meshctl.store.db import Store
from tests.api.test_history_api import A, B, _rows
from tests.conftest import ControllerProcess

UI = Path(__file__).resolve().parents[2] / "meshctl" / "api" / "ui"
DRAWN = ("at", "rtt_p50_ms", "rtt_p90_ms", "loss_percent")  # what drawHistory reads of each point


def test_page_and_script_have_the_history_view() -> None:
    html = (UI / "index.html").read_text()
    for ident in ("history", "history-chart", "history-title", "history-note", "history-close"):
        assert f'id="{ident}"' in html, ident
    assert {"hour", "day", "week"} == set(re.findall(r'data-range="(\w+)"', html))
    js = (UI / "app.js").read_text()
    assert "/history?" in js and "function drawHistory" in js
    table = js.split("HISTORY_RANGES = ", 1)[1].split(";", 1)[0]
    assert re.findall(r'(\w+): \["\w+", "1[mh]"\]', table) == ["hour", "day", "week"]
    for key in (*DRAWN, "step_s", "since", "until"):
        assert key in js, key


def test_history_answers_what_the_chart_draws(controller: ControllerProcess) -> None:
    for r in (A, B):
        controller.add_region(r)
    store = Store(controller.database_url)
    try:
        now = time.time()
        store.history.write(_rows(now), None, now)
    finally:
        store.close()
    js = (UI / "app.js").read_text()
    ranges = re.findall(r'\w+: \["(\w+)", "(1[mh])"\]', js)
    assert ranges == [("1h", "1m"), ("24h", "1m"), ("7d", "1h")]
    with controller.client() as c:
        for since, step in ranges:
            r = c.get(f"/v1/links/{A}/{B}/history", params={"since": since, "step": step})
            assert r.status_code == 200, r.text
            data = r.json()
            assert data["step"] == step and data["step_s"] in (60, 3600)
            t0, t1 = data["since"], data["until"]
            assert t0 < t1 and data["points"]
            for p in data["points"]:
                assert all(k in p for k in DRAWN)
                assert t0 <= p["at"] <= t1
                assert p["rtt_p50_ms"] is None or p["rtt_p50_ms"] <= p["rtt_p90_ms"]
                assert 0 <= p["loss_percent"] <= 100
