"""The console in a real browser (Debian's chromium through chromedriver, headless) over a market where
a real job runs to payment: every page opens, a job's page follows it live without a reload, and the
numbers on the pages are the chain's.

Screenshots of the three pages go to a temporary folder, or to the folder in ``FLOPEX_SCREENSHOTS``
(``FLOPEX_SCREENSHOTS=docs/img`` refreshes the ones the docs show).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flopex.console.app import create_app
from flopex.console.reader import MarketReader
from flopex.console.server import RunningConsole, start
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.events import SlotSettled
from marketplace.errors import ContractRevert
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import Auction, JobStatus, Policy, format_tokens
from tests.conftest import require
from tests.console.kit import SmallMarket, small_market
from tests.e2e.providerkit import start_provider

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REQUESTER, RUNNER = 2, 12


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(
        Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
        "chromium and chromedriver (apt-get install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, has_bwrap: bool) -> Iterator[tuple[SmallMarket, RunningConsole]]:
    market = small_market(Chain.embedded(), accounts=RUNNER + 1)
    reader = MarketReader(
        market.contracts,
        deployment_path="browser-test (embedded chain)",
        data_dir=tmp_path_factory.mktemp("console"),
        requester=dev_account(REQUESTER),
        probe_timeout_s=0.5,
    )
    console = start(create_app(reader, poll_s=0.3))
    yield market, console
    console.stop()
    reader.close()


def _shots() -> Path | None:
    target = os.environ.get("FLOPEX_SCREENSHOTS")
    return Path(target) if target else None


def _save(driver: Any, name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"console-{name}.png"
    driver.save_screenshot(str(path))
    target = _shots()
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def _wait(predicate: Any, timeout: float = 120.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _text(driver: Any, css: str) -> str:
    """The text of the first element matching ``css``, or "" (also when it was just redrawn)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("css selector", css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_console_in_a_browser__follows_a_job_live_and_shows_the_chains_numbers(
    browser: Any, world: tuple[SmallMarket, RunningConsole], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    market, console = world
    contracts = market.contracts
    provider = start_provider(contracts, tmp_path / "worker", account=RUNNER)
    try:
        requester = Requester(contracts, dev_account(REQUESTER), say=lambda _line: None)
        bundle = tmp_path / "train"
        shutil.copytree(ROOT / "examples" / "train_mlp", bundle)
        (bundle / "job.toml").write_text(
            (bundle / "job.toml").read_text().replace('"--epochs", "4"', '"--epochs", "12"')
        )
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=30, bid_window_s=60)
        job_id = requester.submit(bundle, options)

        browser.get(f"{console.url}/job/{job_id}")
        browser.execute_script("window.__notReloaded = true;")
        assert browser.find_element(By.ID, "job-status").text in ("open", "leased")

        done = threading.Event()
        failure: list[BaseException] = []

        def follow() -> None:
            try:
                requester.follow(job_id, tmp_path / "out", timeout_s=240)
            except ContractRevert as exc:  # the provider's daemon may settle first
                if "already settled" not in str(exc) and "not leased" not in str(exc):
                    failure.append(exc)
            except BaseException as exc:
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=follow, daemon=True).start()
        _wait(lambda: "epoch" in browser.find_element(By.ID, "log").text, what="log lines from the worker")
        _wait(lambda: browser.find_element(By.ID, "job-status").text == "closed", timeout=240, what="the job to close")
        assert done.wait(60) and not failure, failure
        assert browser.execute_script("return window.__notReloaded === true;"), "the page reloaded"
        assert contracts.market.job(job_id).status == JobStatus.CLOSED
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".bill-paid"), what="the bill")

        [settled] = [
            e
            for e in contracts.market.get_events("SlotSettled", contracts.market.start_block, job_id=job_id)
            if isinstance(e, SlotSettled)
        ]
        bill = {
            css: browser.find_element(By.CSS_SELECTOR, f".bill-{css}").text
            for css in ("paid", "fee", "refunded", "slashed", "gpu-seconds")
        }
        assert bill == {
            "paid": format_tokens(settled.paid),
            "fee": format_tokens(settled.fee),
            "refunded": format_tokens(settled.refunded),
            "slashed": format_tokens(settled.slashed),
            "gpu-seconds": str(settled.gpu_seconds),
        }
        assert settled.paid > 0 and "epoch 11" in browser.find_element(By.ID, "log").text
        browser.execute_script("window.scrollTo(0, 0)")
        _save(browser, "job", tmp_path)

        browser.get(f"{console.url}/market?window=all")
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart canvas"), what="the chart")
        runner = dev_account(RUNNER).address
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-provider="{runner}"]')
        assert format_tokens(contracts.registry.price_floor(runner)) in row.text
        _wait(
            lambda: "reachable" in row.find_element(By.CSS_SELECTOR, ".reach").get_attribute("class").split(),
            90,  # the probe is re-run every 30 s; a loaded CI machine may miss the first one
            "the runner's worker to answer GetInfo",
        )
        legend = browser.find_element(By.CSS_SELECTOR, ".u-legend").text
        assert "cpu:" in legend and "TWAP all" in legend
        chart = browser.find_element(By.CSS_SELECTOR, "#chart .u-over")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).move_to_element_with_offset(chart, chart.size["width"] // 3, 10).perform()
        assert browser.find_element(By.CSS_SELECTOR, ".u-legend .u-series:first-child .u-value").text != "–"
        browser.find_element(By.CSS_SELECTOR, 'a.window[data-window="1h"]').click()
        _wait(
            lambda: "TWAP 1h" in _text(browser, ".u-legend") or "no leases" in _text(browser, "#chart p.muted"),
            20,
            "the 1h window",
        )
        browser.find_element(By.CSS_SELECTOR, 'a.window[data-window="all"]').click()
        _wait(lambda: "TWAP all" in _text(browser, ".u-legend"), 20, "the all window")
        chart = browser.find_element(By.CSS_SELECTOR, "#chart .u-over")
        ActionChains(browser).move_to_element_with_offset(chart, chart.size["width"] // 2, 40).perform()
        _save(browser, "market", tmp_path)

        browser.get(f"{console.url}/account/{runner}")
        assert browser.find_element(By.ID, "balance").text == format_tokens(contracts.token.balance_of(runner))
        assert browser.find_element(By.ID, "stake").text == format_tokens(contracts.registry.stakes(runner).active)
        assert format_tokens(settled.paid - settled.fee) in browser.find_element(By.ID, "earnings").text
        _save(browser, "account", tmp_path)

        browser.get(f"{console.url}/job/{job_id + 100}")
        assert "no job" in browser.find_element(By.ID, "error").text
    finally:
        provider.stop()
