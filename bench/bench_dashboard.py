"""What the dashboard costs at 150 regions: time to first render and bytes per update.

One real controller (SQLite) with --regions synthetic regions (three clouds, spread over the
globe, RTT from great-circle distance) and one node each, fed a report per node every 5 s with
jittered RTTs (as agents would: the measurements really change), and Debian's headless
Chromium driven by Selenium. Measured in the browser:

- page load: the navigation timing of /ui/ and the bytes of its assets;
- time to first render after signing in: until the map shows every region, and until the
  links heatmap shows every measured pair (the 150 x 150 table);
- bytes per update: every response the page received during --seconds on the map view and
  then on the links view (Chromium's network log: bytes on the wire, compressed or not), by
  endpoint, with how many were 304; the event stream's bytes during one drain and undrain.

And the controller's `/metrics` at that size (5 series per link): how long a scrape takes, its
size, and the worst `/healthz` answer time while scrapes run (does a scrape stall the event
loop?), against `/healthz` alone.

Run: .venv/bin/python -m bench.bench_dashboard [--regions 150] [--seconds 30] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any

import httpx

from bench._server import start_controller, tmpdir
from tests.conftest import ControllerProcess
from tests.ui.conftest import CHROMEDRIVER, CHROMIUM, FLAGS, token

CLOUDS = ("aws", "gcp", "azure")


def synthetic_regions(n: int) -> dict[str, tuple[float, float]]:
    """n region ids with coordinates: clouds in turn, points on a Fibonacci sphere (|lat| < 60)."""
    out = {}
    for i in range(n):
        lat = math.degrees(math.asin(-0.85 + 1.7 * (i + 0.5) / n))
        lon = ((i * 137.508) % 360) - 180
        out[f"{CLOUDS[i % 3]}:synth-{i:03d}"] = (round(lat, 2), round(lon, 2))
    return out


def great_circle_rtt(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    km = 2 * 6371 * math.asin(math.sqrt(h))
    return 2.0 + km / 100.0  # ~ fibre at 2/3 c, there and back, with a detour


class Feeder(threading.Thread):
    """A report per node every `period` s with RTTs jittered by a few percent."""

    def __init__(self, ctl: ControllerProcess, base: dict[tuple[str, str], float], period: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.ctl, self.base, self.period = ctl, base, period
        self.stop = threading.Event()
        self.rng = random.Random(7)

    def feed(self) -> None:
        self.ctl.feed_links({k: v * self.rng.uniform(0.97, 1.03) for k, v in self.base.items()})

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.feed()


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='meshbench-ui-')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_js(driver: Any, script: str, timeout: float = 300.0) -> Any:
    """Poll a script until it returns something truthy (the page's own clock, performance.now())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(script)


def network(driver: Any) -> dict[str, dict[str, Any]]:
    """Responses since the last call, by request id: url, status, bytes on the wire."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"url": "", "status": 0, "bytes": 0, "encoding": ""})
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        p = msg.get("params", {})
        if msg["method"] == "Network.responseReceived":
            r = out[p["requestId"]]
            r["url"], r["status"] = p["response"]["url"], p["response"]["status"]
            headers = {k.lower(): v for k, v in p["response"].get("headers", {}).items()}
            r["encoding"] = headers.get("content-encoding", "")
        elif msg["method"] == "Network.dataReceived":
            out[p["requestId"]]["bytes"] += p.get("encodedDataLength", 0)
        elif msg["method"] == "Network.loadingFinished":
            # the whole transfer, headers included; for a stream still open, dataReceived is what there is
            out[p["requestId"]]["bytes"] = max(out[p["requestId"]]["bytes"], int(p.get("encodedDataLength", 0)))
    return {k: v for k, v in out.items() if v["url"]}


def by_endpoint(responses: dict[str, dict[str, Any]], base: str) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "n304": 0, "bytes": 0, "encoding": set()})
    for r in responses.values():
        if not r["url"].startswith(base):
            continue  # the browser's own pages (chrome://...), not the dashboard's
        path = r["url"].removeprefix(base).split("?")[0]
        t = table[path]
        t["n"] += 1
        t["n304"] += r["status"] == 304
        t["bytes"] += r["bytes"]
        if r["encoding"]:
            t["encoding"].add(r["encoding"])
    return table


def show(title: str, table: dict[str, dict[str, Any]], seconds: float) -> None:
    print(f"\n{title}")
    head = f"{'endpoint':<28} {'responses':>9} {'304':>5} {'bytes':>11} {'per response':>13} {'per minute':>11}"
    print(head + " encoding")
    total = 0
    for path, t in sorted(table.items(), key=lambda kv: -kv[1]["bytes"]):
        total += t["bytes"]
        per = t["bytes"] / t["n"] if t["n"] else 0
        enc = ",".join(sorted(t["encoding"])) or "-"
        print(
            f"{path:<28} {t['n']:>9} {t['n304']:>5} {t['bytes']:>11,} {per:>13,.0f} "
            f"{t['bytes'] * 60 / seconds:>11,.0f} {enc}"
        )
    print(f"{'total':<28} {'':>9} {'':>5} {total:>11,} {'':>13} {total * 60 / seconds:>11,.0f}")


def healthz_latency(url: str, seconds: float, scrape: bool) -> tuple[float, float, list[float]]:
    """(p50, max) ms of /healthz asked every 10 ms for `seconds`, with /metrics scraped in a loop
    by another thread when `scrape`; and the scrape times."""
    import httpx

    stop = threading.Event()
    scrapes: list[float] = []

    def scraper() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                c.get(f"{url}/metrics").raise_for_status()
                scrapes.append(time.perf_counter() - t0)

    thread = threading.Thread(target=scraper, daemon=True)
    if scrape:
        thread.start()
    lat = []
    with httpx.Client(timeout=60) as c:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            c.get(f"{url}/healthz").raise_for_status()
            lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.01)
    stop.set()
    if scrape:
        thread.join()
    lat.sort()
    return lat[len(lat) // 2], lat[-1], scrapes


def metrics_cost(ctl: ControllerProcess) -> None:
    import httpx

    body = httpx.get(f"{ctl.url}/metrics", timeout=60).content
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    p50_alone, max_alone, _ = healthz_latency(ctl.url, 5, scrape=False)
    p50_busy, max_busy, scrapes = healthz_latency(ctl.url, 10, scrape=True)
    scrapes.sort()
    p50_scrape = scrapes[len(scrapes) // 2] * 1000
    print(
        f"\n/metrics: {len(body):,} B, {series:,} series; a scrape takes p50 {p50_scrape:.0f} ms "
        f"(max {scrapes[-1] * 1000:.0f}, {len(scrapes)} scrapes back to back)\n"
        f"/healthz every 10 ms meanwhile: p50 {p50_busy:.1f} ms, max {max_busy:.0f} ms "
        f"(alone: p50 {p50_alone:.1f} ms, max {max_alone:.0f} ms)"
    )


def main() -> None:
    os.environ.setdefault("MESH_TEST_NO_ZYGOTE", "1")  # a plain `meshctl serve` process, as deployed
    ap = argparse.ArgumentParser()
    ap.add_argument("--regions", type=int, default=150)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-browser", action="store_true", help="only the answer sizes and /metrics")
    args = ap.parse_args()
    regions = synthetic_regions(args.regions)
    rtts = {(a, b): great_circle_rtt(pa, pb) for a, pa in regions.items() for b, pb in regions.items() if a != b}
    pairs = len(rtts)
    ctl = start_controller(tmpdir(), timeout=120)
    driver = None
    feeder = Feeder(ctl, rtts)
    try:
        t0 = time.monotonic()
        for rid, (lat, lon) in regions.items():
            ctl.add_region(rid, lat, lon)
        feeder.feed()
        with ctl.client() as c:
            c.timeout = httpx.Timeout(120)
            ctl.wait_for(lambda: len(c.get("/v1/links").json()["links"]) >= pairs, 300, "every link measured")
        print(f"controller: {len(regions)} regions, {pairs} links measured ({time.monotonic() - t0:.0f} s to load)")
        feeder.start()
        reader = token(ctl, "operator")
        with ctl.client() as c:
            c.timeout = httpx.Timeout(120)
            sizes = {}
            for path in ("/v1/status", "/v1/links", "/v1/routes", "/v1/events"):
                plain = c.get(path, headers={"Accept-Encoding": "identity"})
                t1 = time.perf_counter()
                zipped = c.get(path, headers={"Accept-Encoding": "gzip"})
                ms = (time.perf_counter() - t1) * 1000
                wire = int(zipped.headers.get("content-length") or len(zipped.content))
                sizes[path] = f"{len(plain.content):,} B ({wire:,} B gzipped, {ms:.0f} ms)"
        print("answers: " + "; ".join(f"{p} {v}" for p, v in sizes.items()))
        metrics_cost(ctl)
        if args.no_browser:
            return

        driver = browser()
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(300)  # a 150 x 150 heatmap keeps the page busy a while on a loaded machine
        driver.get(f"{ctl.url}/ui/")
        nav = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd}"
        )
        assets = by_endpoint(network(driver), ctl.url)
        show("page load", assets, 60.0)
        asset_bytes = sum(t["bytes"] for t in assets.values())
        print(
            f"page load (/ui/ and its assets): DOMContentLoaded {nav['dcl']:.0f} ms, load {nav['load']:.0f} ms, "
            f"{asset_bytes:,} B on the wire in {sum(t['n'] for t in assets.values())} responses"
        )

        # sign in; time to first render on the page's own clock
        driver.execute_script(
            "document.getElementById('token').value = arguments[0];"
            "window.__t0 = performance.now(); document.getElementById('signin-button').click();",
            reader,
        )
        n = len(regions)
        t_map = wait_js(
            driver,
            f"return document.querySelectorAll('#dots circle').length >= {n} && performance.now() - window.__t0",
        )
        first = by_endpoint(network(driver), ctl.url)
        driver.execute_script(
            "window.__t1 = performance.now(); document.querySelector('nav .tab[data-view=matrix]').click();"
        )
        t_matrix = wait_js(
            driver,
            f"return document.querySelectorAll('#matrix td.pick').length >= {pairs} && performance.now() - window.__t1",
        )
        first_bytes = sum(t["bytes"] for t in first.values())
        print(
            f"time to first render after sign-in: map with {n} regions {t_map:.0f} ms "
            f"({first_bytes:,} B fetched); links heatmap ({pairs} cells) {t_matrix:.0f} ms after its tab"
        )
        network(driver)

        driver.execute_script("document.querySelector('nav .tab[data-view=map]').click()")
        time.sleep(args.seconds)
        show(f"map view, {args.seconds:g} s (reports every 5 s)", by_endpoint(network(driver), ctl.url), args.seconds)

        driver.execute_script("document.querySelector('nav .tab[data-view=matrix]').click()")
        time.sleep(args.seconds)
        show(f"links view, {args.seconds:g} s", by_endpoint(network(driver), ctl.url), args.seconds)
        renders = driver.execute_script("return performance.getEntriesByName('matrix').map(e => e.duration)")
        if renders:
            updates = sorted(renders[1:]) or [0.0]
            print(
                f"heatmap renders (the page's performance.measure): first {renders[0]:.0f} ms, then "
                f"{len(renders) - 1} more: p50 {updates[len(updates) // 2]:.0f} ms, max {updates[-1]:.0f} ms"
            )

        victim = next(iter(regions))
        driver.execute_script("document.querySelector('nav .tab[data-view=map]').click()")
        network(driver)
        with ctl.client() as c:
            c.post(f"/v1/regions/{victim}/drain", json={"reason": "bench"}).raise_for_status()
            wait_js(driver, f"return document.querySelector('#dots circle[data-region=\"{victim}\"].drained')")
            c.delete(f"/v1/regions/{victim}/drain").raise_for_status()
            wait_js(driver, f"return document.querySelector('#dots circle[data-region=\"{victim}\"].active')")
        time.sleep(1.0)
        show("one drain and undrain, seen live", by_endpoint(network(driver), ctl.url), 60.0)
    finally:
        feeder.stop.set()
        if feeder.is_alive():
            feeder.join(timeout=60)  # a feed under way finishes before the controller stops
        if driver is not None:
            driver.quit()
        ctl.stop()


if __name__ == "__main__":
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        raise SystemExit(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    main()
