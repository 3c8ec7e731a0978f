"""The report of a completed run: exact numbers for known reads, reads in against reads out, the
flags a person must see, a page that needs nothing but itself and escapes what came from disk,
and both files written whole."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from test_page import OFFLINE_ARGS, chromium

from bcmanager.facility.report import Quarantined, build_report, render_html, write_report
from bcmanager.facility.yieldledger import JobStats, RunYield
from bcmanager.paths import REPORT_HTML, REPORT_JSON
from conftest import Read, job_stats, known_reads, n50

T0 = 1_764_000_000.0
BARCODES = (None, "barcode01", "barcode02")
HOSTILE = '<script>alert("x")</script>&<img src=x onerror=alert(1)>'


def ledger_of(jobs: list[list[Read]], **options: Any) -> RunYield:
    ledger = RunYield()
    for index, job in enumerate(jobs):
        stats = JobStats.model_validate_json(json.dumps(job_stats(job, **options)))
        ledger.add(stats, T0 + 600 * (index + 1), engine=f"gpu{index % 2}", busy_seconds=300.0)
    return ledger


def report_of(ledger: RunYield, reads_in: dict[str, int | None], **changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "run": "PAO12345/sample/20261124_1200_1A_PAO12345_abcdef12",
        "output_dir": Path("/data/out/run"),
        "ledger": ledger,
        "reads_in": reads_in,
        "files_done": len(reads_in),
        "quarantined": [],
        "started_at": T0,
        "ended_at": T0 + 3 * 3600 + 125,
        "generated_at": T0 + 4 * 3600,
    }
    arguments.update(changes)
    return build_report(**arguments)


def test_a_run_of_known_reads_is_reported_exactly() -> None:
    """Ten raw files of 200 reads each, basecalled in five jobs of two files."""
    reads = known_reads(2000, seed=11, barcodes=BARCODES)
    files = [reads[start : start + 200] for start in range(0, 2000, 200)]
    jobs = [files[index] + files[index + 1] for index in range(0, 10, 2)]
    reads_in: dict[str, int | None] = {f"raw_{index}.pod5": 200 for index in range(10)}
    report = report_of(ledger_of(jobs), reads_in)

    out = report["basecalled"]
    assert report["reads_in"] == {"files": 10, "reads": 2000, "files_unknown": 0}
    assert report["reads_out"] == out["reads"] == 2000
    assert out["bases"] == sum(read.length for read in reads)
    assert out["pass_reads"] == sum(read.passed for read in reads)
    assert out["fail_bases"] == sum(read.length for read in reads if not read.passed)
    assert out["n50"] == n50(read.length for read in reads) // 100 * 100
    assert out["mean_q"] == pytest.approx(sum(read.q for read in reads) / 2000, abs=0.005)
    assert {code["barcode"]: code["reads"] for code in out["barcodes"]} == {
        barcode: sum(read.barcode == barcode for read in reads) for barcode in BARCODES
    }
    assert [engine["jobs"] for engine in out["engines"]] in ([3, 2], [2, 3])
    assert report["duration_seconds"] == 3 * 3600 + 125
    assert report["started"] == "2025-11-24T16:00:00+00:00"
    assert report["files_done"] == 10 and report["files_quarantined"] == 0
    assert report["warnings"] == []
    assert json.loads(json.dumps(report)) == report

    page = render_html(report)
    assert f"{2000:,}" in page
    assert "3 h 02 min" in page
    assert "dna_r10.4.1_e8.2_400bps_hac@v5.0.0" in page
    assert 'id="warnings"' not in page


def test_two_models_are_flagged_first_thing() -> None:
    reads = known_reads(100, seed=12)
    ledger = ledger_of([reads[:50]], model="dna_r10.4.1_e8.2_400bps_hac@v5.0.0")
    ledger.add(
        JobStats.model_validate(job_stats(reads[50:], model="dna_r10.4.1_e8.2_400bps_sup@v5.0.0")),
        T0,
    )
    report = report_of(ledger, {"a.pod5": 50, "b.pod5": 50})
    assert report["basecalled"]["mixed_models"]
    assert report["warnings"][0] == (
        "basecalled with 2 models (dna_r10.4.1_e8.2_400bps_hac@v5.0.0, "
        "dna_r10.4.1_e8.2_400bps_sup@v5.0.0): its reads are not all alike"
    )
    page = render_html(report)
    assert '<ul class="warn alert" id="warnings">' in page
    assert page.index("basecalled with 2 models") < page.index('id="headline"')


def test_reads_out_against_reads_in_and_what_is_missing_are_warned_about() -> None:
    reads = known_reads(300, seed=13)
    ledger = ledger_of([reads])
    ledger.add_without_stats("77", "no bcm-stats.json")
    report = report_of(
        ledger,
        {"a.pod5": 150, "b.pod5": None},
        files_done=3,
        quarantined=[Quarantined("c.pod5", "exit 1: segfault")],
    )
    assert report["reads_in"] == {"files": 1, "reads": 150, "files_unknown": 2}
    assert report["warnings"] == [
        "1 done jobs left no readable statistics: their reads are missing from every number here",
        "2 done raw files' read counts are unknown",
        "1 raw files were quarantined and not basecalled",
    ]
    whole = report_of(ledger_of([reads]), {"a.pod5": 320})
    assert whole["warnings"] == ["reads out (300) differ from reads in (320) by -20"]


class Elements(HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_page_escapes_what_came_from_disk_and_fetches_nothing() -> None:
    odd_name = os.fsdecode(b"caf\xe9.pod5")
    reads = [Read(1000 + index, 15.0, HOSTILE) for index in range(20)]
    stats = job_stats(reads)
    stats["basecaller"] = {"name": HOSTILE, "version": HOSTILE, "model": HOSTILE}
    ledger = RunYield()
    ledger.add(JobStats.model_validate(stats), T0, engine="gpu1")
    ledger.add_without_stats("5", HOSTILE)
    report = report_of(
        ledger,
        {"a.pod5": 20},
        run=HOSTILE,
        quarantined=[Quarantined(odd_name, HOSTILE), Quarantined(HOSTILE, "exit 1")],
    )
    page = render_html(report)
    parsed = Elements()
    parsed.feed(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert not any(name in ("src", "href", "onerror") for name, _ in parsed.attributes)
    assert HOSTILE in "".join(parsed.text)  # shown as text, where a person can read it
    assert "caf\\xe9.pod5" in page
    # Nothing to fetch: no URL but the SVG namespace, and a policy that forbids loading.
    assert page.count("http") == page.count("http://www.w3.org/2000/svg") + 1
    assert "default-src 'none'" in page
    page.encode()  # no lone surrogate survived


def test_a_run_without_reads_still_has_a_report() -> None:
    report = report_of(RunYield(), {}, files_done=0)
    assert report["basecalled"]["n50"] is None and report["basecalled"]["mean_q"] is None
    page = render_html(report)
    assert "no yield yet" in page and "no reads yet" in page


def test_both_files_are_written_whole(tmp_path: Path) -> None:
    reads = known_reads(500, seed=14, barcodes=BARCODES)
    report = report_of(ledger_of([reads[:250], reads[250:]]), {"a.pod5": 500})
    (tmp_path / REPORT_HTML).write_text("an older report")
    json_path, html_path = write_report(tmp_path, report)
    assert (json_path, html_path) == (tmp_path / REPORT_JSON, tmp_path / REPORT_HTML)
    assert json.loads(json_path.read_text()) == report
    assert html_path.read_text() == render_html(report)
    assert sorted(os.listdir(tmp_path)) == [REPORT_HTML, REPORT_JSON]
    # The page can be drawn again from report.json alone (as `bcmanager report` would).
    assert render_html(json.loads(json_path.read_text())) == html_path.read_text()


def test_the_page_shows_in_a_browser_with_no_network(tmp_path: Path) -> None:
    """Opened from disk in headless Chromium with every request but loopback failing: the charts
    are drawn, the figures shown, nothing hostile runs and nothing is reported broken."""
    reads = known_reads(3000, seed=15, barcodes=BARCODES)
    ledger = ledger_of([reads[:1000], reads[1000:2000]])
    ledger.add(
        JobStats.model_validate(job_stats(reads[2000:], model="dna_r10.4.1_e8.2_400bps_sup@v5")),
        T0 + 7200,
    )
    report = report_of(ledger, {"a.pod5": 3000}, quarantined=[Quarantined(HOSTILE, HOSTILE)])
    _, html_path = write_report(tmp_path, report)
    driver = chromium(*OFFLINE_ARGS)
    try:
        driver.get(html_path.as_uri())
        shown = driver.find_element(By.ID, "headline").text
        assert f"{3000:,}" in shown and "mean Q" in shown
        assert "2 models" in driver.find_element(By.ID, "warnings").text
        for chart in ("yield-chart", "read-length-chart", "mean-Q-chart", "barcode-chart"):
            bars = driver.find_elements(By.CSS_SELECTOR, f"#{chart} rect")
            assert bars and all(bar.size["width"] > 0 for bar in bars[:5]), chart
        assert HOSTILE in driver.find_element(By.ID, "quarantined").text
        assert driver.execute_script("return document.scripts.length") == 0
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
