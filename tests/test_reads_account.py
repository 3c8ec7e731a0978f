"""Every read accounted for, end to end: a real ``bcmanager serve`` and a real agent running the
simulated Dorado, which skips POD5 files it "cannot open" (exit 0) and splits reads. The run is
judged by the test's own ledger of read ids (from the POD5 files it wrote) against the BAM files
in pass/ and fail/, read with pysam by the test itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pysam

from bcmanager.sim.basecaller import file_unreadable
from bcmanager.sim.reads import split_children
from conftest import Run, Server, simulated_agent, wait_for

SKIP, SPLIT = 0.3, 0.3
OPTIONS = f"--format bam --layout dorado --unreadable-fraction {SKIP} --split-fraction {SPLIT}"


def merged_parents(output: Path) -> Counter[str]:
    """The raw read each merged record stands for (its ``pi`` parent, else its own id)."""
    found: Counter[str] = Counter()
    for folder in ("pass", "fail"):
        for path in sorted((output / folder).rglob("*.bam")):
            with pysam.AlignmentFile(str(path), "rb", check_sq=False) as reads:
                for record in reads.fetch(until_eof=True):
                    parent = record.get_tag("pi") if record.has_tag("pi") else None
                    found[str(parent or record.query_name)] += 1
    return found


def test_files_dorado_skips_are_rejected_named_and_quarantined_the_rest_done_once(
    run: Run, start_server: type[Server], tmp_path: Path
) -> None:
    names = [run.add(f"raw_{index:02d}.pod5", read_count=5).name for index in range(8)]
    skipped = [name for name in names if file_unreadable(name[:-5], 0, SKIP)]
    assert 0 < len(skipped) < len(names)
    kept = [name for name in names if name not in skipped]
    summary = run.input_dir / "final_summary_FAX00000_0123abcd_89abcdef.txt"
    summary.write_text(f"instrument=X1\npod5_files_in_final_dest={len(names)}\n")
    server = start_server(BCM_QUARANTINE_ATTEMPTS="2", BCM_DEFAULT_BATCH_SIZE="4")
    with (tmp_path / "agent.log").open("ab") as log:
        agent = simulated_agent(
            server.url, "gpu1", log, seconds_per_read=0, poll=0.1, basecaller_options=OPTIONS
        )
        try:

            def settled() -> bool:
                status = server.get("/status").json()
                files, [entry] = status["files"], status["runs"]
                rejected = entry["reads"]["account"]["files_rejected"] if entry["reads"] else 0
                # Each skipped file rejected once, in its first batch, as its account is read;
                # alone, Dorado finds no read to basecall and exits 1: a plain failure.
                return bool(
                    files["done"] == len(kept)
                    and files["failed"] == len(skipped)
                    and rejected == len(skipped)
                    and (run.output_dir / "report.json").exists()
                )

            wait_for(settled, 90, "the good files done and the skipped ones quarantined")
            status = server.get("/status").json()
        finally:
            agent.kill()
            agent.wait(10)
    # The reads: every read of every kept file once (whole or split), none of a skipped file.
    parents = merged_parents(run.output_dir)
    splits = {
        read: len(split_children(read, 0, SPLIT)) for name in kept for read in run.reads[name]
    }
    assert set(parents) == set(splits)
    assert parents == Counter({read: max(1, pieces) for read, pieces in splits.items()})
    # What the manager says of them, exactly.
    [entry] = status["runs"]
    account = entry["reads"]["account"]
    assert account["reads_in"] == sum(len(run.reads[name]) for name in kept)
    assert account["records_out"] == sum(parents.values())
    assert account["split_reads"] == sum(1 for pieces in splits.values() if pieces > 1) > 0
    assert account["reads_missing"] == 0
    assert account["files_rejected"] == len(skipped)
    assert sorted(line.split(":")[0] for line in account["rejections"]) == sorted(skipped)
    assert all("the basecaller could not open it" in line for line in account["rejections"])
    assert {each["file"] for each in status["quarantined"]} == set(skipped)
    rejected = [p for p in status["recent_problems"] if "could not open it" in p["reason"]]
    assert {p["reason"].split(":")[0] for p in rejected} == set(skipped)
    # The report says the same, and its warning names the files.
    report = json.loads((run.output_dir / "report.json").read_text())
    assert report["basecalled"]["account"] == account
    [warning] = [line for line in report["warnings"] if "did not all come out" in line]
    assert all(name in warning for name in skipped)
    page = (run.output_dir / "report.html").read_text()
    assert 'id="account"' in page and all(name in page for name in skipped)
    # bcmanager status says it in a line.
    shown = subprocess.run(
        [sys.executable, "-m", "bcmanager", "status", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0, shown.stderr
    assert f"{account['reads_in']:,} raw reads in" in shown.stdout
    assert f"{account['files_rejected']:,} files rejected" in shown.stdout


def test_an_engine_that_exits_0_and_writes_nothing_is_benched_and_the_run_completes(
    run: Run, start_server: type[Server], tmp_path: Path
) -> None:
    """One agent's basecaller is ``true``: every DONE of it comes with nothing written. Its
    files are failed attempts (no loop, no pile of folders), it is benched within a few jobs,
    and the other agent basecalls the whole run."""
    names = [run.add(f"raw_{index:02d}.pod5", read_count=3).name for index in range(16)]
    server = start_server(BCM_DEFAULT_BATCH_SIZE="2", BCM_BENCH_SECONDS="600")
    with (tmp_path / "agents.log").open("ab") as log:
        good = simulated_agent(server.url, "good", log, seconds_per_read=0.05, poll=0.1)
        empty = None
        try:
            wait_for(lambda: server.get("/status").json()["files"]["done"] >= 2, 30, "a first job")
            empty = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bcmanager", "agent", "--manager", server.url),
                    *("--engine-id", "empty", "--command", "true", "--poll-interval", "0.1"),
                ],
                stdout=log,
                stderr=log,
            )

            def done() -> bool:
                return bool(server.get("/status").json()["files"]["done"] == len(names))

            wait_for(done, 90, "the run basecalled by the good engine")
            status = server.get("/status").json()
        finally:
            for agent in (empty, good):
                if agent is not None:
                    agent.kill()
                    agent.wait(10)
    assert status["files"]["failed"] == 0  # one engine's word is no evidence against a file
    assert [entry["engine"] for entry in status["benched"]] == ["empty"]
    failed = list(run.input_dir.glob("FAILED_*"))
    assert 0 < len(failed) <= 3 * 2  # a few jobs' files, then no more
    assert not list(run.output_dir.glob("EMPTYOUTPUT_*"))
    parents = merged_parents(run.output_dir)  # FASTQ here: read by the test itself
    assert not parents  # the simulated basecaller wrote FASTQ, not BAM
    merged = Counter(
        line[1:].split()[0]
        for path in (run.output_dir / "pass").rglob("*.fastq")
        for line in path.read_text().splitlines()[::4]
    )
    assert merged == Counter(read for name in names for read in run.reads[name])
