"""The dashboard in a real headless Chromium against a real controller process.

A reader sees the nine regions on the map, the heatmap filled, the route explorer, and a
drain made through the API turn its region red and appear in the timeline without a reload;
a reader has no drain button and the API refuses one; an operator previews, drains and
undrains from the page; a wrong token gets a clear message; the token is in no URL and in no
line of the controller's log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from meshctl.store.db import Store
from tests.api.test_history_api import _rows as history_rows
from tests.conftest import ControllerProcess
from tests.ui.conftest import lab_topology, screenshot, token

pytest.importorskip("selenium")

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

VICTIM = "aws:us-east-1"
TOKENS: list[str] = []


def wait(driver: Any, predicate: Callable[[Any], Any], what: str, timeout: float = 10) -> Any:
    # the page re-renders as data arrives: an element found a moment ago may be replaced before it is read
    retry = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=retry).until(
        predicate, f"timed out waiting for {what}"
    )


def css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def sign_in(driver: Any, mesh: ControllerProcess, secret: str) -> None:
    # signed out, as a fresh tab: the storage is cleared on a page of the same origin that runs
    # no dashboard script (on /ui/ itself, a sign-in under way could store its token again)
    driver.get(f"{mesh.url}/healthz")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{mesh.url}/ui/")

    def sign_in_box(d: Any) -> Any:
        box = d.find_element(By.ID, "token")
        return box if box.is_displayed() and box.is_enabled() else None

    box = wait(driver, sign_in_box, "the sign-in box")  # the reloaded page shows it once its script ran
    box.clear()
    box.send_keys(secret)
    driver.find_element(By.ID, "signin-button").click()


def js(driver: Any, script: str, *args: Any) -> Any:
    """Read the page in one step (it redraws itself: element handles go stale)."""
    return driver.execute_script(script, *args)


def dots(driver: Any) -> dict[str, str]:
    return dict(
        js(
            driver,
            "return [...document.querySelectorAll('#dots circle')].map(c => [c.dataset.region, c.dataset.state])",
        )
    )


def region_state(driver: Any, region: str) -> str | None:
    return dots(driver).get(region)


def texts(driver: Any, selector: str, attr: str = "textContent") -> list[str]:
    return list(
        js(
            driver,
            "return [...document.querySelectorAll(arguments[0])]"
            ".map(e => e[arguments[1]] || e.getAttribute(arguments[1]) || '')",
            selector,
            attr,
        )
    )


def points(driver: Any, line: str) -> int:
    """How many points the history chart's `line` (p50, p90) draws, over all its runs."""
    return int(
        js(
            driver,
            "return [...document.querySelectorAll('#history-svg polyline.' + arguments[0])]"
            ".reduce((n, e) => n + e.getAttribute('points').trim().split(/\\s+/).length, 0)",
            line,
        )
    )


def api_state(mesh: ControllerProcess, region: str) -> str:
    with mesh.client() as c:
        return str(c.get(f"/v1/regions/{region}").json()["state"])


def test_reader_sees_the_mesh_live(mesh: ControllerProcess, browser: Any) -> None:
    reader = token(mesh, "reader")
    TOKENS.append(reader)
    regions, _ = lab_topology()
    sign_in(browser, mesh, reader)

    # the map: nine regions at their coordinates, all active, and the relayed links drawn
    wait(browser, lambda d: len(dots(d)) == 9, "nine regions on the map")
    assert set(dots(browser)) == set(regions) and set(dots(browser).values()) == {"active"}
    wait(browser, lambda d: texts(d, "#relays line title"), "links that carry relayed routes")
    assert "reader" in browser.find_element(By.ID, "who").text
    assert not browser.find_element(By.ID, "operator").is_displayed(), "a reader sees no drain button"
    assert not css(browser, "#drain-preview") or not browser.find_element(By.ID, "drain-preview").is_displayed()
    screenshot(browser, "map")

    # the heatmap: every measured pair, grouped by cloud, each cell with its age
    browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="matrix"]').click()
    wait(browser, lambda d: len(css(d, "#matrix tbody tr")) == 9, "the 9x9 matrix")
    titles = texts(browser, "#matrix td[title*='measured']", "title")
    assert len(titles) == 9 * 8 and all("s ago" in t and "RTT p50" in t for t in titles)
    heads = texts(browser, "#matrix tbody th")
    assert heads == sorted(heads, key=lambda r: (r.split(":")[0], r)), "rows grouped by cloud"
    Select(browser.find_element(By.ID, "f-cloud")).select_by_value("gcp")
    wait(browser, lambda d: len(css(d, "#matrix tbody tr")) == 3, "the gcp rows only")
    Select(browser.find_element(By.ID, "f-cloud")).select_by_value("")
    browser.find_element(By.ID, "f-prefix").send_keys("azure:")
    wait(browser, lambda d: len(css(d, "#matrix tbody tr")) == 3, "the azure: prefix only")
    browser.find_element(By.ID, "f-prefix").clear()
    browser.find_element(By.ID, "f-prefix").send_keys(" ")  # an input event; trimmed to no filter
    wait(browser, lambda d: len(css(d, "#matrix tbody tr")) == 9, "all rows again")
    screenshot(browser, "links")

    # the route explorer: a relayed pair with its path, RTT and candidates
    with mesh.client() as c:
        relayed = next(r for r in c.get("/v1/routes").json()["routes"] if len(r["path"]) > 2)
    browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="routes"]').click()
    Select(browser.find_element(By.ID, "r-src")).select_by_value(relayed["src"])
    Select(browser.find_element(By.ID, "r-dst")).select_by_value(relayed["dst"])
    browser.find_element(By.ID, "r-go").click()
    path = wait(browser, lambda d: css(d, "#route-path"), "the explained route")[0]
    assert path.text == " → ".join(relayed["path"])
    out = browser.find_element(By.ID, "route-out").text
    assert "estimated RTT" in out and "why:" in out and "candidates" in out
    assert len(css(browser, "#route-out tr.chosen")) == 1
    screenshot(browser, "routes")

    # a drain made elsewhere shows without a reload: the dot turns drained, the event arrives live
    browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="events"]').click()
    wait(browser, lambda d: "live" in d.find_element(By.ID, "live").text, "the event stream")
    browser.execute_script("window.__sameDocument = true")
    with mesh.client() as c:
        r = c.post(f"/v1/regions/{VICTIM}/drain", json={"reason": "provider incident 4242"})
        assert r.status_code == 200, r.text
    try:
        item = wait(
            browser,
            lambda d: [t for t in texts(d, '#events li[data-kind="drain"]') if VICTIM in t],
            "the drain event in the timeline",
        )[0]
        assert "provider incident 4242" in item
        wait(browser, lambda d: region_state(d, VICTIM) == "drained", "the region drawn drained")
        assert "1 drained" in browser.find_element(By.ID, "summary").text
        assert browser.execute_script("return window.__sameDocument === true"), "the page was reloaded"
        screenshot(browser, "events")
        browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="map"]').click()
        screenshot(browser, "map-drained")

        # a reader cannot drain: no button above, and the API says no
        with mesh.client(reader) as c:
            refused = c.post("/v1/regions/gcp:us-east4/drain", json={"reason": "reader tries"})
        assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    finally:
        with mesh.client() as c:
            c.delete(f"/v1/regions/{VICTIM}/drain")
    wait(browser, lambda d: region_state(d, VICTIM) == "active", "the region back to active")


def test_link_history_chart_from_the_heatmap(mesh: ControllerProcess, browser: Any) -> None:
    """A heatmap cell opens its link's history: p50 and p90 lines over the last hour with a gap and
    a loss bar where a minute was lost, and a week of hourly buckets at a click."""
    src, dst = "aws:us-east-1", "gcp:europe-west2"
    store = Store(mesh.database_url)
    try:
        now = time.time()
        store.history.write(history_rows(now, src, dst), None, now)  # a day of minutes, a week of hours
    finally:
        store.close()
    sign_in(browser, mesh, token(mesh, "reader"))
    browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="matrix"]').click()
    cell = f'#matrix td.pick[data-src="{src}"][data-dst="{dst}"]'
    wait(browser, lambda d: css(d, cell), "the measured cell")[0].click()
    wait(
        browser,
        lambda d: len(css(d, "#history-svg polyline.p50")) >= 2,
        "the hour's p50 line, broken at the lost minute",
    )
    assert browser.find_element(By.ID, "history-title").text == f"{src} → {dst}: last hour"
    assert "buckets of 1m" in browser.find_element(By.ID, "history-note").text
    assert points(browser, "p50") >= 50, "about a point a minute"
    assert css(browser, "#history-svg polyline.p90") and css(browser, "#history-svg rect.loss"), "p90 and the loss bar"
    screenshot(browser, "history")

    browser.find_element(By.CSS_SELECTOR, '#history .range[data-range="week"]').click()
    wait(browser, lambda d: "buckets of 1h" in d.find_element(By.ID, "history-note").text, "the week, hourly")
    assert browser.find_element(By.ID, "history-title").text == f"{src} → {dst}: last week"
    assert points(browser, "p50") >= 100, "a week of hours"
    browser.find_element(By.ID, "history-close").click()
    wait(browser, lambda d: not d.find_element(By.ID, "history").is_displayed(), "the chart closed")


def test_operator_drains_and_undrains_from_the_page(mesh: ControllerProcess, browser: Any) -> None:
    operator = token(mesh, "operator")
    TOKENS.append(operator)
    region = "gcp:europe-west2"
    sign_in(browser, mesh, operator)
    wait(browser, lambda d: d.find_element(By.ID, "operator").is_displayed(), "the operator's controls")
    Select(browser.find_element(By.ID, "region-pick")).select_by_value(region)
    wait(browser, lambda d: d.find_element(By.ID, "region-state").text == "active", "the region's details")

    # no reason, no drain
    browser.find_element(By.ID, "drain-preview").click()
    wait(browser, lambda d: "reason" in d.find_element(By.ID, "operator-msg").text.lower(), "the missing reason")

    browser.find_element(By.ID, "drain-reason").send_keys("planned maintenance 77")
    browser.find_element(By.ID, "drain-preview").click()
    preview = wait(browser, lambda d: d.find_element(By.ID, "preview").text, "the dry-run preview")
    assert "Dry run" in preview and "nothing changed" in preview
    assert browser.find_element(By.ID, "drain-go").is_displayed()
    assert api_state(mesh, region) == "active", "the preview changes nothing"
    screenshot(browser, "drain-preview")

    browser.find_element(By.ID, "drain-go").click()
    wait(browser, lambda d: d.find_element(By.ID, "region-state").text == "drained", "the page to show drained")
    with mesh.client() as c:
        got = c.get(f"/v1/regions/{region}").json()
    assert got["state"] == "drained" and got["drain"]["reason"] == "planned maintenance 77"
    assert got["drain"]["by"] == "ui-operator"
    wait(browser, lambda d: region_state(d, region) == "drained", "the map to show it drained")

    undrain = wait(browser, lambda d: d.find_element(By.ID, "undrain").is_displayed(), "the undrain button")
    assert undrain
    browser.find_element(By.ID, "undrain").click()
    wait(browser, lambda d: d.find_element(By.ID, "region-state").text == "active", "the page to show active")
    assert api_state(mesh, region) == "active"


def test_wrong_token_gets_a_clear_message(mesh: ControllerProcess, browser: Any) -> None:
    sign_in(browser, mesh, "msh_r_not-a-real-token-xxxxxxxxxxxxxxxxxxxxxxxx")
    message = wait(browser, lambda d: d.find_element(By.ID, "signin-error").text, "the sign-in error")
    assert "refused" in message and "meshctl tokens create" in message
    assert not browser.find_element(By.ID, "app").is_displayed()
    screenshot(browser, "signin-refused")


def test_the_token_is_in_no_url_and_no_log(mesh: ControllerProcess, browser: Any) -> None:
    """No URL the browser asked for, and no log line, holds a token: this test's own sign-in, and
    those of the tests above when they ran on the same worker (the browser's log holds theirs)."""
    reader = token(mesh, "reader")
    TOKENS.append(reader)
    sign_in(browser, mesh, reader)
    urls = [browser.current_url]

    def asked_for_live_data(d: Any) -> bool:
        for entry in d.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        return any("/v1/events/stream" in u for u in urls) and any("/v1/status" in u for u in urls)

    wait(browser, asked_for_live_data, "the page to ask for its status and the event stream")
    log = mesh.log_path.read_text(errors="replace")
    for secret in (*TOKENS, mesh.admin_token):
        assert not [u for u in urls if secret in u]
        assert secret not in log
