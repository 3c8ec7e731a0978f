"""Whole runs with real processes: the manager, the simulated sequencer, agents running the
simulated basecaller, and the demo that puts them together."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pod5
import pysam
import pytest

from conftest import Run, Server, free_port, simulated_agent, wait_for

BCM = [sys.executable, "-m", "bcmanager"]


def read_ids_in(input_dir: Path) -> list[str]:
    ids = []
    for raw in sorted(input_dir.glob("*.pod5")):
        with pod5.Reader(raw) as reader:
            ids.extend(str(record.read_id) for record in reader.reads())
    return ids


def fastq_names(output_dir: Path) -> collections.Counter[str]:
    names: collections.Counter[str] = collections.Counter()
    for sub in ("pass", "fail"):
        for fastq in (output_dir / sub).iterdir():
            lines = fastq.read_text().splitlines()
            names.update(line[1:].split()[0] for line in lines[::4])
    return names


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_every_read_once_with_an_agent_killed_mid_run(
    run: Run,
    start_server: Callable[..., Server],
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    log = (tmp_path / "processes.log").open("ab")
    sequencer = subprocess.Popen(
        [
            *BCM,
            "simulate",
            "sequencer",
            str(run.input_dir),
            "--files",
            "12",
            "--reads-per-file",
            "3",
            "--interval",
            "0.1",
            "--write-seconds",
            "0.2",
        ],
        stdout=log,
        stderr=log,
    )
    processes.append(sequencer)
    # Started first, so that its start-up overlaps the manager's: its first files may be
    # half-written when the manager starts, as after a restart mid-run.
    server = start_server(BCM_REPORT_BACK_PERIOD="3", BCM_DEFAULT_BATCH_SIZE="2")
    agents = {}
    for number in range(3):
        engine = f"gpu-{number}"
        agents[engine] = simulated_agent(server.url, engine, log, seconds_per_read=0.1, poll=0.2)
        processes.append(agents[engine])

    def gpu0_holds_a_job() -> bool:
        jobs = server.get("/status").json()["jobs"]
        return any(job["engine"] == "gpu-0" for job in jobs)

    wait_for(gpu0_holds_a_job, 30, "gpu-0 to hold a job")
    agents["gpu-0"].kill()

    def drained() -> bool:
        files = server.get("/status").json()["files"]
        busy = files["waiting"] + files["pending"] + files["leased"]
        return sequencer.poll() is not None and busy == 0 and files["done"] + files["failed"] == 12

    wait_for(drained, 90, "the run to drain")
    expected = read_ids_in(run.input_dir)
    basecalled = fastq_names(run.output_dir)
    assert len(expected) == 36
    assert sorted(basecalled) == sorted(expected)
    assert set(basecalled.values()) == {1}, "a read was basecalled twice"
    expired = [n for n in os.listdir(run.output_dir) if n.startswith("EXPIREDOUTPUT_")]
    assert any(name.endswith("_gpu-0") for name in expired), "gpu-0's job was not taken back"


def test_demo_runs_to_completion_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "demo"
    demo = subprocess.Popen(
        [
            *BCM,
            "demo",
            "--folder",
            str(folder),
            "--files",
            "6",
            "--minutes",
            "0.02",
            "--port",
            str(port),
            "--engines",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            lines.append(line)
            if "run complete" in line or not line:
                break
        assert "run complete: all 6 files basecalled" in lines[-1], "".join(lines)
        assert any("files/min" in line for line in lines)
        # The yield as it goes, then where the run's report is: there, and whole.
        assert any(" | reads " in line for line in lines), "".join(lines)
        assert ", reads 60 · " in lines[-1]
        report = folder / "output" / "report.html"
        assert f"Report: {report}. " in lines[-1]
        assert report.read_text().rstrip().endswith("</html>")
        status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
        assert status["files"]["done"] == 6
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5).status_code == 200
        agents = agent_pids(f"127.0.0.1:{port}")
        assert len(agents) == 3
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
        wait_for(lambda: not agent_pids(f"127.0.0.1:{port}"), 10, "the agents to exit")
    finally:
        if demo.poll() is None:
            demo.kill()
    merged = list((folder / "output").glob("*/barcode0[1-4]/job_id_*.bam"))
    assert merged, "the demo's basecaller writes Dorado's BAM tree, with barcodes"
    read_ids: collections.Counter[str] = collections.Counter()
    for path in (folder / "output").glob("*/*/job_id_*.bam"):
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
            read_ids.update(record.query_name or "" for record in bam.fetch(until_eof=True))
    sequenced = set()
    for raw in (folder / "input").glob("*.pod5"):
        with pod5.Reader(raw) as reader:
            sequenced.update(str(read.read_id) for read in reader.reads())
    assert read_ids.keys() == sequenced and len(sequenced) == 60
    assert set(read_ids.values()) == {1}, "a read was merged twice"


def agent_pids(url_part: str) -> list[int]:
    """Processes whose command line is a ``bcmanager agent`` talking to ``url_part``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in words and any(url_part.encode() in word for word in words):
            found.append(int(entry.name))
    return found
