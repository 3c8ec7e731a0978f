"""A run's yield and its report, from Dorado-shaped output, judged by the test's own ledger.

The engines here do what the reference agent does: the simulated basecaller writes Dorado's
``--output-dir`` tree of BAM files with barcode folders, then the statistics file is counted
(``readstats``) before the job is reported DONE. The test's ledger is its own: the read ids it
wrote into the POD5 files, and the records it reads back from the merged BAM files with pysam,
not through bcmanager's parsers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bcmanager.sim.basecaller import OutputLayout, basecall
from bcmanager.sim.reads import ReadsFormat

pysam = pytest.importorskip("pysam")

from test_facility import assign, complete, serving, summary, until  # noqa: E402

from conftest import Root, simulated_dorado  # noqa: E402

MODEL = "dna_r10.4.1_e8.2_400bps_hac@v5.0.0"


class Hook(BaseHTTPRequestHandler):
    """A chat webhook on 127.0.0.1 that keeps what it was sent."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()


def engine_work(root: Root, batch: dict[str, Any], model: str = MODEL) -> None:
    """The simulated Dorado's BAM on the batch, then the statistics, as the agent counts them."""
    simulated_dorado(root.input_dir, root.output_dir, batch, model, ReadsFormat.BAM)


def merged_reads(run_output: Path) -> dict[str, int]:
    """Read id -> length of every record in the run's merged BAM files (pysam, not ours)."""
    found: dict[str, int] = {}
    for path in sorted(run_output.glob("[pf]a*/**/*.bam")):
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as reads:
            for read in reads:
                assert read.query_name not in found, f"{read.query_name} merged twice"
                found[read.query_name] = read.query_length
    return found


async def test_a_completed_run_gets_an_exact_report_and_a_word_to_the_webhook(
    root: Root, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 4, reads=3)
    summary(folder)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    async with serving(root.settings(notify_url=url)) as (client, _):
        for _ in range(4):
            batch = await assign(client, size=1)
            if not batch["batch"]:
                break
            engine_work(root, batch)
            await complete(client, batch["jobid"])
        await until(lambda: (out / "report.json").exists(), 10, "the report")
        entry = (await client.get("/runs")).json()["runs"][0]
        await until(lambda: len(received) >= 2, 10, "the notifications")

    ledger = merged_reads(out)
    assert sorted(ledger) == sorted(root.reads_in(folder)), "each read merged once"
    report = json.loads((out / "report.json").read_text())
    assert report["files_done"] == 4 and report["files_quarantined"] == 0
    assert report["reads_in"]["reads"] == 12 and report["reads_out"] == 12
    assert report["basecalled"]["bases"] == sum(ledger.values())
    assert report["basecalled"]["models"] == [MODEL]
    assert not report["basecalled"]["mixed_models"]
    assert entry["reads"]["reads"] == 12 and entry["reads"]["bases"] == sum(ledger.values())
    html = (out / "report.html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org", "")
    events = [message["event"] for message in received]
    assert events[:2] == ["run_sequencing_finished", "run_complete"], events
    assert "12 reads" in received[1]["text"] and str(out / "report.html") in received[1]["text"]

    # On demand, from the folders alone: the same numbers.
    (out / "report.json").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "bcmanager", "report", path],
        env={"BCM_INPUT_DIR": str(root.input_dir), "BCM_OUTPUT_DIR": str(root.output_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    again = json.loads((out / "report.json").read_text())
    assert (again["reads_out"], again["basecalled"]["bases"]) == (12, sum(ledger.values()))


async def test_a_run_basecalled_with_two_models_is_flagged(root: Root) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder)
    out = root.output_dir / folder.relative_to(root.input_dir)
    async with serving(root.settings()) as (client, _):
        for model in (MODEL, "dna_r10.4.1_e8.2_400bps_sup@v5.0.0"):
            batch = await assign(client, size=1)
            engine_work(root, batch, model)
            await complete(client, batch["jobid"])
        await until(lambda: (out / "report.json").exists(), 10, "the report")
    report = json.loads((out / "report.json").read_text())
    assert report["basecalled"]["mixed_models"]
    assert any("model" in warning for warning in report["warnings"])


async def test_yield_survives_a_restart_and_a_bad_stats_file_is_reported(root: Root) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 3, reads=2)
    path = folder.relative_to(root.input_dir).as_posix()
    async with serving(root.settings()) as (client, _):
        for index in range(3):
            batch = await assign(client, size=1)
            engine_work(root, batch)
            if index == 2:
                stats = root.output_dir / batch["job_output_dir"] / "bcm-stats.json"
                stats.write_text('{"format": "bcmanager-job-stats", "version": 1, "groups": 7}')
            await complete(client, batch["jobid"])
        await asyncio.sleep(0.2)
    async with serving(root.settings()) as (client, facility):
        run = facility.run(path)
        await until(lambda: not run.counting, 10, "the statistics read back")
        reads = (await client.get("/runs")).json()["runs"][0]["reads"]
    assert reads["jobs"] == 2 and reads["jobs_without_stats"] == 1
    assert reads["reads"] == 4


async def test_every_layout_an_engine_may_write_is_merged_by_the_output_contract(
    root: Root,
) -> None:
    """Today's pass/*.fastq, a wrapper's plain calls.bam, Dorado's --output-dir tree with
    barcodes, and a sample sheet's alias folder: reads (and an index with them) go to
    pass|fail/[barcode/]job_id_<jobid>_<name>; everything else stays with the logs."""
    root.add(root.input_dir, 4)
    async with serving(root.settings()) as (client, _):
        jobs = {}
        for layout in (OutputLayout.PASS_FAIL, OutputLayout.FLAT, OutputLayout.DORADO, None):
            batch = await assign(client, size=1)
            out = root.output_dir / batch["job_output_dir"]
            if layout is None:
                alias = out / "bam_pass" / "patient_A"
                alias.mkdir(parents=True)
                basecall(
                    root.input_dir / batch["job_input_dir"],
                    alias,
                    seconds_per_read=0,
                    reads_format=ReadsFormat.BAM,
                    layout=OutputLayout.FLAT,
                )
                (alias / "calls.bam").rename(alias / "reads.bam")
                (alias / "reads.bam.bai").write_bytes(b"BAI\x01")
                (out / "sequencing_summary.txt").write_text("read_id\n")
            else:
                basecall(
                    root.input_dir / batch["job_input_dir"],
                    out,
                    seconds_per_read=0,
                    reads_format=ReadsFormat.FASTQ
                    if layout is OutputLayout.PASS_FAIL
                    else ReadsFormat.BAM,
                    layout=layout,
                    barcodes=2 if layout is OutputLayout.DORADO else 0,
                )
            await complete(client, batch["jobid"])
            jobs[layout] = batch["jobid"]
    merged = {
        path.relative_to(root.output_dir).as_posix()
        for path in root.output_dir.glob("[pf]a*/**/*")
        if path.is_file()
    }
    assert any(
        name.startswith(f"pass/job_id_{jobs[OutputLayout.PASS_FAIL]}_") and name.endswith(".fastq")
        for name in merged
    )
    assert f"pass/job_id_{jobs[OutputLayout.FLAT]}_calls.bam" in merged
    dorado = [name for name in merged if f"job_id_{jobs[OutputLayout.DORADO]}_" in name]
    assert dorado and all(
        name.split("/")[1] in ("barcode01", "barcode02", "unclassified") for name in dorado
    )
    assert {
        f"pass/patient_A/job_id_{jobs[None]}_reads.bam",
        f"pass/patient_A/job_id_{jobs[None]}_reads.bam.bai",
    } <= merged
    logs = root.output_dir / f"LOGOUTPUT_{jobs[None]}_gpu1"
    assert (logs / "sequencing_summary.txt").exists()


async def test_a_quarantined_file_and_a_benched_engine_are_told_to_the_webhook(
    root: Root, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """A file that fails alone on two engines is quarantined, an engine that fails every fresh
    job while another succeeds is benched: each is one message, with its run and reason."""
    url, received = webhook
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 8)
    path = folder.relative_to(root.input_dir).as_posix()
    async with serving(root.settings(notify_url=url, report_back_period=600)) as (client, _):
        first = await assign(client, "bad", 1)
        await complete(client, first["jobid"], "FAILED")
        again = await assign(client, "other", 1)  # the failed file goes first, elsewhere
        assert again["batch"] == first["batch"]
        await complete(client, again["jobid"], "FAILED")
        await complete(client, (await assign(client, "bad", 1))["jobid"], "FAILED")
        redone = await assign(client, "good", 1)  # its retry, done by another engine
        root.basecall(redone)
        await complete(client, redone["jobid"])
        await complete(client, (await assign(client, "bad", 1))["jobid"], "FAILED")
        await until(lambda: len(received) >= 2, 10, "the messages")
    events = {message["event"]: message for message in received}
    assert set(events) == {"file_quarantined", "engine_benched"}
    assert events["engine_benched"]["engine"] == "bad"
    quarantined = events["file_quarantined"]
    assert quarantined["run"] == path
    assert quarantined["file"] == f"{path}/pod5/{first['batch'][0]}"
