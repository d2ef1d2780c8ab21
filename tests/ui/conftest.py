"""Fixtures for the dashboard's tests: a controller seeded with the lab's nine regions and
synthetic reports (no namespaces), and a real headless Chromium from Debian's packages.

Chromium is driven by Selenium through Debian's `chromium-driver`, both given by path, so
nothing is downloaded (`scripts/setup-system.sh --test` installs them). Without them the
browser tests are skipped, except under CI, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.core.catalog import lookup
from tests.conftest import ControllerProcess

CHROMIUM = os.environ.get("MESH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MESH_CHROMEDRIVER", "/usr/bin/chromedriver")
TOPOLOGY = Path(__file__).resolve().parents[2] / "meshctl" / "lab" / "default-topology.yaml"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
)


def lab_topology() -> tuple[list[str], dict[tuple[str, str], float]]:
    """The lab's nine regions and their measured RTTs, both directions."""
    topo = yaml.safe_load(TOPOLOGY.read_text())
    rtts: dict[tuple[str, str], float] = {}
    for a, b, ms in topo["rtt_ms"]:
        rtts[(a, b)] = rtts[(b, a)] = float(ms)
    return list(topo["regions"]), rtts


def add_lab_regions(ctl: ControllerProcess) -> dict[tuple[str, str], float]:
    """The lab's nine regions at their catalogue coordinates; returns the lab's RTTs between them."""
    regions, rtts = lab_topology()
    for rid in regions:
        info = lookup(rid)
        assert info is not None, rid
        ctl.add_region(rid, info.lat, info.lon, info.metro)
    return rtts


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """One controller for the module (each test leaves the regions as it found them)."""
    tmp = tmp_path_factory.mktemp("ui")
    ctl = ControllerProcess(f"sqlite:///{tmp / 'controller.db'}", tmp).start()
    try:
        rtts = add_lab_regions(ctl)
        ctl.feed_links(rtts)
        ctl.wait_for(
            lambda: any(len(r["path"]) > 2 for r in ctl.client().get("/v1/routes").json()["routes"]),
            what="a relayed route",
        )
        yield ctl
    finally:
        ctl.stop()


def token(ctl: ControllerProcess, scope: str) -> str:
    with ctl.client() as c:
        r = c.post("/v1/tokens", json={"name": f"ui-{scope}", "scope": scope})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            _missing(f"{path} (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="meshctl-ui-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # every request the page makes, to check that the token never appears in a URL
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests need {what}: scripts/setup-system.sh --test installs it")
    pytest.skip(f"no {what}")


def screenshot(driver: Any, name: str) -> None:
    """docs/screenshots/NAME.png, only when MESH_SCREENSHOTS=1 (so a test run leaves the tree clean)."""
    if os.environ.get("MESH_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
