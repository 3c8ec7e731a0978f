"""The page at / in a real browser: Debian's headless chromium, driven through chromium-driver
by selenium, against a real ``bcmanager serve``. It shows the run's counts and follows the run
without a reload.

Selenium with Debian's chromium-driver, rather than playwright: Debian builds the driver from the
same source at the same version as the browser, so the two never drift apart, while playwright
speaks to the one browser build it pins and would meet whatever version Debian ships.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bcmanager.progress import IDLE_LISTED
from conftest import Run, Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1100",
)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser`)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_shows_the_run_and_follows_it_live(
    run: Run, start_server: Callable[..., Server], browser: WebDriver, tmp_path: Path
) -> None:
    run.add_many(6)
    server = start_server()
    done = server.get("/assignwork", engineid="gpu1", batchsize=2).json()
    run.basecall(done["job_output_dir"], done["batch"])
    server.get("/completed", job_id=done["jobid"], job_state="DONE")
    leased = server.get("/assignwork", engineid="gpu2", batchsize=2).json()

    def shown(element_id: str) -> str:
        text: str = browser.find_element(By.ID, element_id).text
        return text

    def rows(table_id: str) -> list[str]:
        """The rows' texts, read in one script: the page may redraw between two reads."""
        texts: list[str] = browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map((row) => [...row.cells].map((cell) => cell.textContent).join(' '))",
            f"#{table_id} tbody tr",
        )
        return texts

    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    wait.until(lambda _: shown("count-done") == "2")
    assert [shown(f"count-{state}") for state in ("leased", "pending", "waiting", "failed")] == [
        "2",
        "2",
        "0",
        "0",
    ]
    assert shown("percent") == "33.3%" and shown("phase") == "Sequencing"
    engines = rows("engines")
    assert engines[0].startswith("gpu1 idle 1 2") and engines[1].startswith("gpu2 …")
    assert rows("problems") == []
    browser.execute_script("window.stillTheSamePage = true")

    run.basecall(leased["job_output_dir"], leased["batch"])
    server.get("/completed", job_id=leased["jobid"], job_state="DONE")
    failed = server.get("/assignwork", engineid="gpu3", batchsize=1).json()
    server.get("/completed", job_id=failed["jobid"], job_state="FAILED")
    # Failed alone on a second engine: quarantined, and the page says so.
    again = server.get("/assignwork", engineid="gpu9", batchsize=1).json()
    assert again["batch"] == failed["batch"]
    server.get("/completed", job_id=again["jobid"], job_state="FAILED")
    wait.until(lambda _: shown("count-done") == "4")
    wait.until(lambda _: len(rows("problems")) == 2)
    assert shown("count-failed") == "1" and shown("count-leased") == "0"
    assert shown("percent") == "66.6%"
    assert "gpu9" in rows("problems")[0] and "quarantined" in rows("problems")[0]
    assert "gpu3" in rows("problems")[1] and "failed, retried" in rows("problems")[1]
    held = browser.find_element(By.ID, "held-back").text
    assert "quarantined (1)" in held and failed["batch"][0] in held
    assert browser.execute_script("return window.stillTheSamePage") is True

    # More idle engines than are listed: the three idle longest are summed in one row.
    for index in range(IDLE_LISTED):
        server.get("/assignwork", engineid=f"pod{index:03d}", batchsize=1)
    wait.until(lambda _: rows("engines")[-1].startswith("3 retired"))
    retired = rows("engines")[-1].split()
    dash = "\N{EN DASH}"
    assert retired[:5] == ["3", "retired", dash, "2", "4"] and retired[6:] == ["1", "0", "0", dash]
    assert len(rows("engines")) == 1 + IDLE_LISTED + 1  # pod000 holds the last file
    assert "gpu3" not in shown("engines") and "gpu9" in shown("engines")
    assert shown("retired-note").startswith("Retired: engines idle for 15 min, or beyond the 128")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_with_a_read_token_the_browser_logs_in_once_and_the_token_stays_out_of_the_url(
    run: Run, start_server: Callable[..., Server], browser: WebDriver
) -> None:
    token = "page-read-token"
    run.add_many(3)
    server = start_server(BCM_READ_TOKEN=token, BCM_API_TOKEN="engine-only")
    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    wait.until(lambda _: browser.current_url == f"{server.url}/login")
    browser.find_element(By.ID, "token").send_keys("engine-only")
    browser.find_element(By.ID, "login").click()
    wait.until(lambda _: "not this manager's" in browser.find_element(By.ID, "refused").text)
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait.until(lambda _: browser.find_element(By.ID, "count-pending").text == "3")
    assert browser.current_url == f"{server.url}/"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
    [cookie] = browser.get_cookies()
    assert cookie["httpOnly"] is True and token not in cookie["value"]
    # A new page load in the same browser needs no second login.
    browser.get(f"{server.url}/")
    wait.until(lambda _: browser.find_element(By.ID, "count-pending").text == "3")
    assert all(token not in url for url in (browser.current_url, server.log.read_text()))
