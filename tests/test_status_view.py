"""``bcmanager status``: the run's snapshot in a terminal, against a real ``bcmanager serve``."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from test_facility import assign, complete, summary, until
from test_facility import serving as serving_root

from bcmanager.cli import main
from bcmanager.cli.status import human_bytes, human_duration, render
from bcmanager.core.manager import Manager
from bcmanager.core.progress import ENGINE_IDLE_SECONDS
from bcmanager.models import BenchedEngine, RunPhase, RunStatus
from bcmanager.paths import REPORT_HTML
from bcmanager.words import human_bases
from conftest import Clock, Root, Run, Server, minknow_run, n50, serving, simulated_dorado

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def status_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bcmanager", "status", *args]


def plain(text: str) -> str:
    return ANSI.sub("", text)


async def test_render_shows_progress_counts_rates_and_engines(run: Run) -> None:
    run.add_many(8)
    async with serving(Manager(run.settings())) as client:
        for engine, state in (("gpu1", "DONE"), ("gpu2", "FAILED"), ("gpu3", None)):
            batch = (
                await client.get("/assignwork", params={"engineid": engine, "batchsize": 2})
            ).json()
            run.basecall(batch["job_output_dir"], batch["batch"])
            if state:
                await client.get(
                    "/completed", params={"job_id": batch["jobid"], "job_state": state}
                )
        status = RunStatus.model_validate((await client.get("/status")).json())
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(render(status))
    text = console.export_text()
    assert "2 of 8 files basecalled" in text and "25.0%" in text
    # The failed attempt's files are pending again (gpu3 took one half): none quarantined.
    assert re.search(r"│ pending\s+│\s+5 │", text) and re.search(r"│ failed\s+│\s+0 │", text)
    assert "failed, retried" in text
    assert re.search(r"│ gpu1\s+│ idle\s+│\s+1 │\s+2 │", text)
    assert "sequencing" in text and "Failed, expired and empty jobs" in text
    assert human_bytes(999) == "999 B" and human_bytes(1_234_567) == "1.2 MB"
    assert human_duration(45) == "45 s" and human_duration(3 * 3600 + 300) == "3 h 05 min"


async def test_render_sums_the_retired_engines_in_one_row(run: Run) -> None:
    run.add_many(6)
    clock = Clock()
    async with serving(Manager(run.settings(), clock=clock)) as client:
        for engine, state in (("gpu1", "DONE"), ("gpu2", "DONE"), ("gpu3", "FAILED")):
            batch = (
                await client.get("/assignwork", params={"engineid": engine, "batchsize": 2})
            ).json()
            run.basecall(batch["job_output_dir"], batch["batch"])
            await client.get("/completed", params={"job_id": batch["jobid"], "job_state": state})
        clock.now += ENGINE_IDLE_SECONDS
        await client.get("/assignwork", params={"engineid": "gpu4", "batchsize": 2})
        status = RunStatus.model_validate((await client.get("/status")).json())
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(render(status))
    text = console.export_text()
    assert re.search(r"│ gpu4\s+│", text)  # it took the failed batch's first half
    assert re.search(r"│ 3 retired\s+│ -\s+│\s+2 │\s+4 │ [^│]+│\s+1 │\s+0 │\s+0 │\s+- │", text)
    assert "gpu1" not in text
    assert "Retired: engines idle for 15 min, or beyond the 128 idle ones active last" in text


def test_status_once_against_a_server(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    run.add_many(5)
    server = start_server()
    batch = server.get("/assignwork", engineid="gpu9", batchsize=3).json()
    run.basecall(batch["job_output_dir"], batch["batch"])
    server.get("/completed", job_id=batch["jobid"], job_state="DONE")
    shown = subprocess.run(
        status_command("--url", server.url),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "140"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "3 of 5 files basecalled" in shown.stdout
    assert re.search(r"│ done\s+│\s+3 │", shown.stdout)
    assert re.search(r"│ gpu9\s+│ idle\s+│\s+1 │\s+3 │", shown.stdout)
    unreachable = subprocess.run(
        status_command("--url", "http://127.0.0.1:9"), capture_output=True, text=True, timeout=30
    )
    assert unreachable.returncode == 1 and "no status from" in unreachable.stdout


def test_status_watch_refreshes_in_place(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    run.add_many(4)
    server = start_server()
    screen = tmp_path / "screen.txt"
    env = {**os.environ, "COLUMNS": "140", "LINES": "60", "FORCE_COLOR": "1"}
    with screen.open("w") as output:
        watch = subprocess.Popen(
            status_command("--url", server.url, "--watch", "--interval", "0.2"),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for(screen, "0 of 4 files basecalled")
        batch = server.get("/assignwork", engineid="gpu2", batchsize=4).json()
        server.run.basecall(batch["job_output_dir"], batch["batch"])
        server.get("/completed", job_id=batch["jobid"], job_state="DONE")
        wait_for(screen, "4 of 4 files basecalled")
    finally:
        watch.send_signal(signal.SIGINT)
        code = watch.wait(timeout=10)
    assert code == 0
    # Frames after the first move the cursor up and redraw: no scrolling pile of snapshots.
    assert "\x1b[2K" in screen.read_text()


def wait_for(screen: Path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in plain(screen.read_text()):
        assert time.monotonic() < deadline, plain(screen.read_text())[-3000:]
        time.sleep(0.05)


async def test_a_run_complete_with_quarantined_files_is_amber_not_green(run: Run) -> None:
    run.add_many(3)
    async with serving(Manager(run.settings())) as client:
        params = {"engineid": "gpu1", "batchsize": 2}
        done = (await client.get("/assignwork", params=params)).json()
        run.basecall(done["job_output_dir"], done["batch"])
        await client.get("/completed", params={"job_id": done["jobid"], "job_state": "DONE"})
        for engine in ("gpu2", "gpu3"):  # one file failed alone on two engines: quarantined
            params = {"engineid": engine, "batchsize": 1}
            bad = (await client.get("/assignwork", params=params)).json()
            await client.get("/completed", params={"job_id": bad["jobid"], "job_state": "FAILED"})
        status = RunStatus.model_validate((await client.get("/status")).json())
    assert status.files.failed == 1 and status.files.done == 2

    def shown(phase: RunPhase) -> str:
        console = Console(record=True, width=140, file=io.StringIO(), color_system="standard")
        console.print(render(status.model_copy(update={"phase": phase})))
        return console.export_text(styles=True)

    amber = shown(RunPhase.COMPLETE)
    assert re.search(r"\x1b\[[0-9;]*43m complete, 1 quarantined ", amber)
    assert "42m" not in amber  # no green anywhere
    assert "1 file quarantined: `bcmanager retry` sends them back" in plain(amber)
    clean = status.model_copy(update={"files": status.files.model_copy(update={"failed": 0})})
    console = Console(record=True, width=140, file=io.StringIO(), color_system="standard")
    console.print(render(clean.model_copy(update={"phase": RunPhase.COMPLETE})))
    assert re.search(r"\x1b\[[0-9;]*42m complete ", console.export_text(styles=True))


async def test_render_says_why_jobs_failed_which_files_wait_and_which_engines_rest(
    run: Run,
) -> None:
    """What the agent recorded of a failure, the quarantined files and the benched engines."""
    names = run.add_many(2)
    async with serving(Manager(run.settings())) as client:
        for engine in ("gpu1", "gpu2"):  # the same file fails alone on two engines
            batch = (
                await client.get("/assignwork", params={"engineid": engine, "batchsize": 1})
            ).json()
            output = run.output_dir / batch["job_output_dir"]
            record = {"exit_code": 127, "signal": None, "stderr_last_line": "sh: dorado: not found"}
            (output / "bcm-attempt.json").write_text(json.dumps(record))
            await client.get("/completed", params={"job_id": batch["jobid"], "job_state": "FAILED"})
        status = RunStatus.model_validate((await client.get("/status")).json())
    status.benched = [BenchedEngine(engine="gpu7", seconds_left=42, reason="3 jobs in a row")]
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(status))
    text = console.export_text()
    assert text.count("exit 127: sh: dorado: not found") == 2
    assert "quarantined" in text and f"quarantined (1): {names[0]}" in text
    assert "benched: gpu7: 3 jobs in a row" in text


def test_status_lists_the_runs_of_a_root_and_shows_one_run_alone(
    run: Run,
    start_server: Callable[..., Server],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A root of two runs: a runs table under the header, each run's counts on its line (its
    path shown as written, never read as markup); ``--run`` shows that run's own snapshot."""
    one = minknow_run(run, "expA", "FAX11111", files=3)
    two = minknow_run(run, "exp [bold]B", "FAX22222", ("pod5_pass", "pod5_fail"))
    server = start_server()
    batch = server.get("/assignwork", engineid="gpu1", batchsize=2).json()
    run.basecall(batch["job_output_dir"], batch["batch"])
    server.get("/completed", job_id=batch["jobid"], job_state="DONE")
    server.get("/assignwork", engineid="gpu2", batchsize=1)
    entries = {entry["path"]: entry for entry in server.get("/runs").json()["runs"]}
    assert set(entries) == {one, two}

    monkeypatch.setenv("COLUMNS", "200")

    def shown(*args: str) -> tuple[int, str]:
        """``bcmanager status`` in this process (a server runs apart): the exit code and what
        it printed."""
        code = main(["status", "--url", server.url, *args])
        return code, capsys.readouterr().out

    code, every = shown()
    assert code == 0, every
    assert "Runs" in every and "7 files basecalled" in every
    for path, entry in entries.items():
        files = entry["files"]
        counts = r"\s+│\s+".join(str(files[state]) for state in ("pending", "leased", "done"))
        assert re.search(rf"│ {re.escape(path)}\s+│\s+sequencing\s+│\s+0 │\s+{counts} │", every)
    code, alone = shown("--run", two)
    assert code == 0, alone
    two_files = entries[two]["files"]
    total = sum(two_files[state] for state in ("waiting", "pending", "leased", "done", "failed"))
    assert f"{two_files['done']} of {total} files basecalled" in alone
    assert str(run.input_dir / two) in alone
    assert "Runs" not in alone and one not in alone
    code, unknown = shown("--run", "no/such/run")
    assert code == 1 and "404: no run 'no/such/run'" in unknown


def merged_fastq(run_output: Path) -> dict[str | None, list[int]]:
    """The lengths of the reads merged into a run's pass/ and fail/, by barcode folder (None:
    none), read here rather than by bcmanager's parsers."""
    found: dict[str | None, list[int]] = {}
    for path in sorted(run_output.glob("[pf]a*/**/*.fastq")):
        parts = path.relative_to(run_output).parts
        barcode = parts[1] if len(parts) == 3 else None
        found.setdefault(barcode, []).extend(map(len, path.read_text().splitlines()[1::4]))
    return found


async def test_reads_of_each_run_and_of_the_run_shown_with_barcodes_models_and_report(
    root: Root,
) -> None:
    """Two runs: one basecalled by the simulated Dorado (FASTQ in its output tree, two barcodes)
    with two models, and complete; the other not basecalled yet. The runs table gives each its
    reads and bases and flags the two models; the first run's own snapshot has its reads line,
    the two models in red, where its report is, and its reads per barcode."""
    one = root.run("exp", "s1", "FAX11111")
    root.add(one / "pod5", 2, reads=6)
    summary(one)
    two = root.run("exp", "s2", "FAX22222")
    root.add(two / "pod5", 1)
    path_one, path_two = (run.relative_to(root.input_dir).as_posix() for run in (one, two))
    out = root.output_dir / path_one
    models = ("dna_r10.4.1_e8.2_400bps_hac@v5.0.0", "dna_r10.4.1_e8.2_400bps_sup@v5.0.0")
    async with serving_root(root.settings()) as (client, facility):
        facility.set_paused(path_two, True)
        for model in models:
            batch = await assign(client, size=1)
            simulated_dorado(root.input_dir, root.output_dir, batch, model)
            await complete(client, batch["jobid"])
        await until(lambda: (out / REPORT_HTML).exists(), 10, "the report")
        every = RunStatus.model_validate((await client.get("/status")).json())
        alone = RunStatus.model_validate(
            (await client.get("/status", params={"run": path_one})).json()
        )
    merged = merged_fastq(out)
    lengths = [length for found in merged.values() for length in found]
    assert len(lengths) == len(root.reads_in(one)) == 12

    def shown(status: RunStatus) -> str:
        console = Console(record=True, width=250, file=io.StringIO())
        console.print(render(status))
        return console.export_text()

    table = shown(every)
    bases = human_bases(sum(lengths))
    assert re.search(rf"│ {re.escape(path_one)}\s+│.*│\s+12 │\s+{bases} │ 2 models\s+│", table)
    assert re.search(rf"│ {re.escape(path_two)}\s+│.*│\s+0 │\s+0 b │ -\s+│", table)
    assert "Reads 12" not in table  # two runs together: no one run's reads line

    text = shown(alone)
    reads = alone.runs[0].reads
    assert reads is not None and reads.n50 is not None
    assert abs(reads.n50 - n50(lengths)) <= reads.n50_resolution
    passed = f"{reads.pass_reads / 12:.1%}"
    assert f"Reads 12 · {bases} · N50 {reads.n50:,} · mean Q " in text
    assert f" · {passed} pass  (from 2 jobs)" in text
    assert f"basecalled with 2 models ({', '.join(models)})" in text
    assert f"report: {out / REPORT_HTML}" in text
    for barcode, found in merged.items():
        name = re.escape(barcode or "no barcode")
        assert re.search(rf"│ {name}\s+│\s+{len(found)} │\s+{human_bases(sum(found))} │", text)
