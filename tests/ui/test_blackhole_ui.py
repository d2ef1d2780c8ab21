"""A region goes dark and the dashboard shows it without a reload: the nine lab regions report
every second (synthetic reports, the lab's controller timings); one region's node stops
reporting and every probe towards it loses everything, as in a blackhole. The page turns the
region drained and shows the automatic drain in the timeline live; when the region comes back,
it turns active again. The page is the same document throughout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab.lab import CONTROLLER_ENV
from tests.conftest import ControllerProcess
from tests.ui.conftest import add_lab_regions, screenshot, token
from tests.ui.test_dashboard import dots, region_state, sign_in, texts, wait

pytest.importorskip("selenium")

from selenium.webdriver.common.by import By

VICTIM = "azure:uksouth"


class Feeder(threading.Thread):
    """Every region's node reports each second; a dark region's node does not, and every probe
    towards it is lost."""

    def __init__(self, ctl: ControllerProcess, rtts: dict[tuple[str, str], float]) -> None:
        super().__init__(daemon=True)
        self.ctl, self.rtts = ctl, rtts
        self.dark: set[str] = set()
        self.stopping = threading.Event()

    def feed(self) -> None:
        dark = set(self.dark)
        rtts = {pair: rtt for pair, rtt in self.rtts.items() if pair[0] not in dark}
        self.ctl.feed_links(rtts, loss={pair: 100.0 for pair in rtts if pair[1] in dark})

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.feed()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControllerProcess, Feeder]]:
    tmp = tmp_path_factory.mktemp("ui-live")
    env = {k: v for k, v in CONTROLLER_ENV.items() if k != "MESH_RELAY_DATA_PLANE"}
    ctl = ControllerProcess(f"sqlite:///{tmp / 'controller.db'}", tmp, env=env).start()
    feeder: Feeder | None = None
    try:
        feeder = Feeder(ctl, add_lab_regions(ctl))
        feeder.feed()
        feeder.start()
        yield ctl, feeder
    finally:
        if feeder is not None:
            feeder.stopping.set()
            feeder.join(timeout=30)
        ctl.stop()


def test_a_blackholed_region_turns_drained_live(live: tuple[ControllerProcess, Feeder], browser: Any) -> None:
    ctl, feeder = live
    sign_in(browser, ctl, token(ctl, "reader"))
    wait(browser, lambda d: len(dots(d)) == 9 and set(dots(d).values()) == {"active"}, "nine active regions", 30)
    browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="events"]').click()
    wait(browser, lambda d: "live" in d.find_element(By.ID, "live").text, "the event stream")
    browser.execute_script("window.__sameDocument = true")

    feeder.dark.add(VICTIM)  # the blackhole
    item = wait(
        browser,
        lambda d: [t for t in texts(d, '#events li[data-kind="drain"]') if VICTIM in t],
        "the automatic drain in the timeline",
        timeout=45,
    )[0]
    assert "stopped reporting" in item or "observing regions see" in item, f"the drain says why: {item}"
    browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="map"]').click()
    wait(browser, lambda d: region_state(d, VICTIM) == "drained", "the region drawn drained")
    assert "1 drained" in browser.find_element(By.ID, "summary").text
    screenshot(browser, "map-blackhole")

    feeder.dark.clear()  # the region comes back: undrained after the hold, still without a reload
    wait(browser, lambda d: region_state(d, VICTIM) == "active", "the region back to active", timeout=60)
    browser.find_element(By.CSS_SELECTOR, 'nav .tab[data-view="events"]').click()
    wait(
        browser,
        lambda d: [t for t in texts(d, '#events li[data-kind="undrain"]') if VICTIM in t],
        "the undrain in the timeline",
    )
    assert browser.execute_script("return window.__sameDocument === true"), "the page was reloaded"
