"""The page at / in a real browser: Debian's headless chromium, driven through chromium-driver
by selenium, against a real ``bcmanager serve``. It shows the run's counts and follows the run
without a reload; under a root of runs, a runs table whose lines open each run's own snapshot.

Selenium with Debian's chromium-driver, rather than playwright: Debian builds the driver from the
same source at the same version as the browser, so the two never drift apart, while playwright
speaks to the one browser build it pins and would meet whatever version Debian ships.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bcmanager.core.progress import IDLE_LISTED
from conftest import AgentStats, Run, Server, minknow_run, n50, simulated_dorado, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1440, 1100)
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)
# No network but loopback: every name but 127.0.0.1 fails to resolve, and every request that is
# not to loopback goes to a proxy on the discard port, where nothing listens.
OFFLINE_ARGS = (
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
)


def chromium(*extra: str) -> WebDriver:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser`)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (*CHROMIUM_ARGS, *extra):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="session")
def session_browser() -> Iterator[WebDriver]:
    """One Chromium for every page test: starting one costs a second or more of both cores."""
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(session_browser: WebDriver) -> Iterator[WebDriver]:
    """The session's Chromium, handed over as if new: no cookies or cache, the first window
    size, nothing in its log. Each test's server has a port of its own, so pages and their
    storage never meet; cookies do not tell ports apart, so they are cleared."""
    driver = session_browser
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    driver.set_window_size(*WINDOW)
    driver.get_log("browser")  # reading the log empties it
    try:
        yield driver
    finally:
        # The test's server stops next: a page left polling it would log errors meanwhile.
        driver.get("about:blank")


@pytest.fixture
def offline_browser() -> Iterator[WebDriver]:
    driver = chromium(*OFFLINE_ARGS)
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
    # INPUT_DIR is one run: the runs table is its one line, which opens nothing else.
    [line] = rows("runs")
    assert line.startswith("INPUT_DIR Sequencing 0  2 2 2 0 ")
    assert browser.find_elements(By.CSS_SELECTOR, "#runs a") == []
    assert not browser.find_element(By.ID, "all-runs").is_displayed()
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


def test_runs_table_of_a_root_opens_each_runs_own_view_and_goes_back(
    run: Run, start_server: Callable[..., Server], browser: WebDriver
) -> None:
    """A root of two runs, one named with characters that mean something in HTML and in a
    URL: the table shows both as written, a click shows that run's own snapshot (its address
    kept across a reload), and "All runs" the whole again."""
    one = minknow_run(run, "expA", "FAX11111", files=3)
    two = minknow_run(run, 'exp <b>&"B"#%', "FAX22222", ("pod5_pass", "pod5_fail"))
    server = start_server()
    done = server.get("/assignwork", engineid="gpu1", batchsize=2).json()
    run.basecall(done["job_output_dir"], done["batch"])
    server.get("/completed", job_id=done["jobid"], job_state="DONE")
    server.get("/assignwork", engineid="gpu2", batchsize=1)
    entries = {entry["path"]: entry for entry in server.get("/runs").json()["runs"]}
    assert set(entries) == {one, two}
    totals = server.get("/status").json()["files"]

    def table() -> list[list[str]]:
        """The runs table's cells, read in one script: the page may redraw between reads."""
        found: list[list[str]] = browser.execute_script(
            "return [...document.querySelectorAll('#runs tbody tr')]"
            ".map((row) => [...row.cells].map((cell) => cell.textContent))"
        )
        return found

    def line(path: str) -> list[str]:
        files = entries[path]["files"]
        counts = [str(files[state]) for state in ("pending", "leased", "done", "failed")]
        return [path, "Sequencing", "0", "", *counts]

    def shown(element_id: str) -> str:
        text: str = browser.find_element(By.ID, element_id).text
        return text

    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    wait.until(lambda _: len(table()) == 2 and shown("count-pending") == str(totals["pending"]))
    assert [cells[:8] for cells in table()] == [line(path) for path in sorted(entries)]
    assert browser.execute_script("return document.querySelectorAll('#runs b').length") == 0
    assert shown("runs-title") == "Runs (2)" and shown("run-dir") == str(run.input_dir)

    [link] = [a for a in browser.find_elements(By.CSS_SELECTOR, "#runs a") if a.text == two]
    link.click()
    mine = entries[two]["files"]
    wait.until(lambda _: len(table()) == 1 and shown("run-dir") == str(run.input_dir / two))
    assert table()[0][:8] == line(two)
    assert [shown(f"count-{state}") for state in ("pending", "leased", "done")] == [
        str(mine[state]) for state in ("pending", "leased", "done")
    ]
    assert shown("runs-title") == "Run" and browser.find_element(By.ID, "all-runs").is_displayed()
    browser.refresh()  # the view is in the address: a reload keeps it
    wait.until(lambda _: len(table()) == 1 and shown("run-dir") == str(run.input_dir / two))

    browser.find_element(By.ID, "all-runs").click()
    wait.until(lambda _: len(table()) == 2 and shown("run-dir") == str(run.input_dir))
    assert shown("count-done") == str(totals["done"])
    assert not browser.find_element(By.ID, "all-runs").is_displayed()
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_api_docs_work_with_no_network(
    run: Run, start_server: Callable[..., Server], offline_browser: WebDriver
) -> None:
    """GPU clusters are often offline: /docs must list the operations from the package's own
    copy of Swagger UI, loading nothing from elsewhere."""
    server = start_server()
    browser = offline_browser
    browser.set_script_timeout(10)
    browser.get(f"{server.url}/docs")

    def paths() -> list[str]:
        texts: list[str] = browser.execute_script(
            "return [...document.querySelectorAll('.opblock-summary-path')]"
            ".map((element) => element.textContent)"
        )
        return texts

    WebDriverWait(browser, 10, poll_frequency=0.1).until(lambda _: len(paths()) >= 8)
    assert set(paths()) >= {
        "/assignwork",
        "/keepalive",
        "/completed",
        "/heartbeat",
        "/ready",
        "/status",
        "/retry",
        "/metrics",
    }
    loaded: list[str] = browser.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    assert loaded and all(name.startswith(server.url) for name in loaded), loaded
    # The network is really off: a CDN is out of reach from this browser.
    outside: str = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css')"
        ".then(() => done('reached'), () => done('unreachable'));"
    )
    assert outside == "unreachable"
    assert server.get("/redoc").status_code == 404  # no ReDoc page that would load a CDN


@pytest.mark.parametrize("width", [360, 1280, 2560])
def test_page_fits_every_width_from_a_phone_to_a_wall(
    run: Run,
    start_server: Callable[..., Server],
    browser: WebDriver,
    tmp_path: Path,
    width: int,
) -> None:
    """No sideways scrolling at any width, with long ids in the tables and the problems."""
    run.add_many(4, prefix="PAO12345_pass_barcode01_0123456789abcdef_long_run_name")
    server = start_server()
    engine = "gpu-node-with-a-long-hostname-0123456789.cluster.example.org"
    failed = server.get("/assignwork", engineid=engine, batchsize=1).json()
    server.get("/completed", job_id=failed["jobid"], job_state="FAILED")
    server.get("/assignwork", engineid=engine + "-b", batchsize=2)
    browser.set_window_size(width, 1000)
    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    leased = str(server.get("/status").json()["files"]["leased"])
    wait.until(lambda _: browser.find_element(By.ID, "count-leased").text == leased)
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#problems tbody tr")) == 1)
    inner, scrolled = browser.execute_script(
        "return [window.innerWidth, document.scrollingElement.scrollWidth]"
    )
    screenshot = tmp_path / f"page-{width}.png"
    assert browser.save_screenshot(str(screenshot))
    assert abs(inner - width) <= 20  # the window is the width asked for (less a scrollbar)
    assert scrolled <= inner, f"{scrolled - inner} px of sideways scroll at {width} px"


def test_with_a_read_token_the_browser_logs_in_once_and_the_token_stays_out_of_the_url(
    run: Run, start_server: Callable[..., Server], browser: WebDriver
) -> None:
    token = "page-read-token"
    run.add_many(3)
    server = start_server(BCM_READ_TOKEN=token, BCM_API_TOKEN="engine-only")
    browser.get(f"{server.url}/")
    # The form posts and the page is replaced: an element found on the old one goes stale.
    wait = WebDriverWait(
        browser, 10, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
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


def test_a_run_complete_with_quarantined_files_is_amber_on_the_page(
    run: Run, start_server: Callable[..., Server], browser: WebDriver
) -> None:
    run.add_many(2)
    # Sequencing has stopped: MinKNOW's summary is there from the start.
    (run.input_dir / "final_summary_PAO12345_abc.txt").write_text("sequencing stopped\n")
    server = start_server()
    done = server.get("/assignwork", engineid="gpu1", batchsize=1).json()
    run.basecall(done["job_output_dir"], done["batch"])
    server.get("/completed", job_id=done["jobid"], job_state="DONE")
    for engine in ("gpu2", "gpu3"):  # failed alone on two engines: quarantined
        bad = server.get("/assignwork", engineid=engine, batchsize=1).json()
        server.get("/completed", job_id=bad["jobid"], job_state="FAILED")
    browser.get(f"{server.url}/")
    phase = browser.find_element(By.ID, "phase")
    WebDriverWait(browser, 10, poll_frequency=0.1).until(
        lambda _: phase.get_attribute("data-phase") == "complete"
    )
    assert phase.text == "Complete, 1 quarantined"
    assert "partial" in (phase.get_attribute("class") or "").split()
    assert phase.value_of_css_property("background-color") == "rgba(138, 90, 0, 1)"  # amber


MARKUP = '<b>bc</b>&"x"'


def fastq_lengths(output_dir: Path) -> list[int]:
    """The length of every read merged into the run's pass/ and fail/ (read here, not by
    bcmanager's parsers)."""
    lengths = []
    for path in sorted(output_dir.glob("[pf]a*/**/*.fastq")):
        lines = path.read_text().splitlines()
        lengths += [len(sequence) for sequence in lines[1::4]]
    return lengths


def rename_barcode02(stats: AgentStats) -> None:
    """An agent may name a barcode anything: it is shown as written."""
    for group in stats["groups"]:
        if group["barcode"] == "barcode02":
            group["barcode"] = MARKUP


def test_a_runs_reads_are_shown_with_charts_barcodes_models_and_its_report(
    run: Run, start_server: Callable[..., Server], browser: WebDriver
) -> None:
    """INPUT_DIR served as one run, basecalled in two jobs by the simulated Dorado (FASTQ, its
    output tree, two barcodes) with two different models, each job's statistics counted as
    the agent counts them: the runs table and the Reads panel show the read count and N50 of
    the merged reads, the charts are drawn, the barcodes listed (one an agent named with
    markup, shown as written), the two models flagged, and the complete run's report named
    where it is."""
    for index in range(2):
        run.add(f"raw_{index}.pod5", read_count=12)
    (run.input_dir / "final_summary_PAO12345_abc.txt").write_text("sequencing stopped\n")
    server = start_server()
    models = ("dna_r10.4.1_e8.2_400bps_hac@v5.0.0", "dna_r10.4.1_e8.2_400bps_sup@v5.0.0")
    for engine, model in zip(("gpu1", "gpu2"), models, strict=True):
        batch = server.get("/assignwork", engineid=engine, batchsize=1).json()
        simulated_dorado(
            run.input_dir,
            run.output_dir,
            batch,
            model,
            edit=rename_barcode02 if engine == "gpu2" else None,
        )
        server.get("/completed", job_id=batch["jobid"], job_state="DONE")
    lengths = fastq_lengths(run.output_dir)
    assert len(lengths) == 24

    def counted() -> dict[str, Any] | None:
        entry: dict[str, Any] = server.get("/status").json()["runs"][0]
        return entry["reads"] if entry["reads"] and entry["reads"]["jobs"] == 2 else None

    wait_for(lambda: counted() is not None, 10, "both jobs' statistics")
    reads = counted()
    assert reads is not None

    def text(selector: str) -> str:
        found: str = browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
            selector,
        )
        return found

    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    wait.until(lambda _: text("#reads-count") == "24")
    shown_n50 = int(text("#reads-n50").replace(",", ""))
    assert shown_n50 == reads["n50"]
    assert abs(shown_n50 - n50(lengths)) <= reads["n50_resolution"]
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#runs tbody td')].map((td) => td.textContent)"
    )
    assert cells[11] == "24" and cells[13] == f"{shown_n50:,}"
    assert cells[-1] == "2 models"  # the run's line flags it too
    # Every read accounted for: 24 raw reads in, 24 records out, none missing.
    assert reads["account"]["reads_in"] == reads["account"]["records_out"] == 24
    assert text("#reads-account") == (
        "24 raw reads in · 24 records out · 0 split · 0 missing · 0 files rejected"
    )
    for chart in ("yield-chart", "length-chart", "q-chart"):
        bars = browser.find_elements(By.CSS_SELECTOR, f"#{chart} rect.bin")
        assert bars and any(float(bar.get_attribute("height") or 0) > 0 for bar in bars), chart
    assert browser.find_elements(By.CSS_SELECTOR, "#length-chart line.mark")
    # The length bars as drawn on the screen stand in proportion to the histogram's counts.
    histogram = reads["length_histogram"]
    counts = histogram["counts"] + ([histogram["beyond"]] if histogram["beyond"] else [])
    drawn = browser.execute_script(
        "return [...document.querySelectorAll('#length-chart rect.bin')]"
        ".map((bar) => bar.getBoundingClientRect().height)"
    )
    assert len(drawn) == len(counts)
    for height, count in zip(drawn, counts, strict=True):
        assert abs(height / max(drawn) - count / max(counts)) < 0.02, (drawn, counts)
    barcodes = browser.execute_script(
        "return [...document.querySelectorAll('#barcodes tbody tr')]"
        ".map((row) => [row.cells[0].textContent, row.cells[1].textContent])"
    )
    assert sum(int(count) for _, count in barcodes) == 24
    assert MARKUP in {name for name, _ in barcodes}
    assert {name for name, _ in barcodes} <= {"barcode01", "barcode02", "unclassified", MARKUP}
    assert browser.execute_script("return document.querySelectorAll('#reads-card b').length") == 0
    alert = browser.find_element(By.CSS_SELECTOR, "#reads-warnings li.alert")
    assert alert.is_displayed() and all(model in alert.text for model in models)
    wait.until(lambda _: text("#report-path") == f"{run.output_dir}/report.html")
    assert (run.output_dir / "report.html").exists()
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_a_file_whose_reads_did_not_come_out_is_named_on_the_page(
    run: Run, start_server: Callable[..., Server], browser: WebDriver
) -> None:
    """A DONE whose output holds the reads of one raw file of two (the other skipped, as Dorado
    skips a POD5 it cannot open): the Reads panel's account counts the rejected file and a
    warning names it with its reason."""
    for index in range(2):
        run.add(f"raw_{index}.pod5", read_count=3)
    server = start_server()
    batch = server.get("/assignwork", engineid="gpu1", batchsize=2).json()
    assert sorted(batch["batch"]) == ["raw_0.pod5", "raw_1.pod5"]
    run.basecall(batch["job_output_dir"], ["raw_0.pod5"])
    assert server.get("/completed", job_id=batch["jobid"], job_state="DONE").json() == {"ok": True}

    def accounted() -> bool:
        reads = server.get("/status").json()["runs"][0]["reads"]
        return bool(reads and reads["account"]["files_rejected"] == 1)

    wait_for(accounted, 10, "the account of the job")
    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 10, poll_frequency=0.1)
    account = "3 raw reads in · 3 records out · 0 split · 0 missing · 1 files rejected"
    wait.until(lambda _: browser.find_element(By.ID, "reads-account").text == account)
    warnings = browser.find_element(By.ID, "reads-warnings").text
    assert "raw_1.pod5: 0 of 3 reads came out" in warnings
