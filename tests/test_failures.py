"""Failures that sort themselves out: a failed batch is retried in halves until a bad file stands
alone, a file is quarantined on two engines' evidence, an engine that fails everything is
benched, and an operator sends files back without a restart.

The bisection runs end to end: a real ``bcmanager serve``, two real ``bcmanager agent``
processes running the simulated basecaller, and one POD5 file broken inside (its signatures
intact), which the basecaller cannot read. The run is judged by the test's own ledger of read
ids, read from the FASTQ with the test's own few lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from bcmanager.core.benching import Benching
from bcmanager.core.events import Benched, Ended
from bcmanager.core.jobs import Job
from bcmanager.core.manager import Manager
from bcmanager.models import JobState
from conftest import Clock, Run, Server, serving, simulated_agent, wait_for

BCM = [sys.executable, "-m", "bcmanager"]


def break_inside(path: Path) -> None:
    """Keep the POD5 signatures at both ends, zero everything between: complete, unreadable."""
    data = bytearray(path.read_bytes())
    data[24:-24] = bytes(len(data) - 48)
    path.write_bytes(bytes(data))


def fastq_read_ids(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.fastq")):
        found += [line[1:].split()[0] for line in path.read_text().splitlines()[::4]]
    return found


def job_folders(run: Run, prefix: str) -> list[Path]:
    return sorted(run.input_dir.glob(f"{prefix}*"))


@pytest.fixture
def agents(run: Run, tmp_path: Path) -> Iterator[Callable[[Server, str], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(server: Server, engine: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"agent-{engine}.log").open("ab")
        process = simulated_agent(server.url, engine, log, seconds_per_read=0.01, poll=0.1)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


async def job_of(
    client: httpx.AsyncClient, run: Run, engine: str, outcome: str, *, size: int
) -> dict[str, Any]:
    """One job of ``engine``: basecalled (DONE) or not (FAILED), and reported as ``outcome``."""
    batch: dict[str, Any] = (
        await client.get("/assignwork", params={"engineid": engine, "batchsize": size})
    ).json()
    if batch["batch_size"]:
        if outcome == "DONE":
            run.basecall(batch["job_output_dir"], batch["batch"])
        done = {"job_id": batch["jobid"], "job_state": outcome}
        assert (await client.get("/completed", params=done)).status_code == 200
    return batch


def status(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = server.get("/status").json()
    return body


def test_one_bad_file_in_a_batch_of_ten_ends_alone_quarantined_and_the_nine_done(
    run: Run,
    start_server: Callable[..., Server],
    agents: Callable[[Server, str], subprocess.Popen[bytes]],
) -> None:
    names = run.add_many(10)
    bad = names[6]
    break_inside(run.input_dir / bad)
    server = start_server(BCM_DEFAULT_BATCH_SIZE="10", BCM_REPORT_BACK_PERIOD="20")
    for engine in ("gpu1", "gpu2"):
        agents(server, engine)

    def settled() -> bool:
        files = status(server)["files"]
        return files["done"] == 9 and files["failed"] == 1

    wait_for(settled, 60, "9 files done and 1 quarantined")
    snapshot = status(server)
    assert [item["file"] for item in snapshot["quarantined"]] == [bad]
    assert sorted(set(snapshot["quarantined"][0]["failed_on"])) == ["gpu1", "gpu2"]
    # The first batch, then two jobs per halving (10, 5, 3, 2, 1) and a second engine's word.
    jobs = [*job_folders(run, "DONE_"), *job_folders(run, "FAILED_")]
    jobs += job_folders(run, "QUARANTINED_")
    assert len(jobs) <= 1 + 2 * 4 + 1
    [quarantined] = job_folders(run, "QUARANTINED_")
    assert os.listdir(quarantined) == [bad]
    good = [read for name in names if name != bad for read in run.reads[name]]
    assert sorted(fastq_read_ids(run.output_dir / "pass")) == sorted(good)
    # Why: the agent's record, shown per failed job.
    failed = [job for job in snapshot["recent_problems"] if job["outcome"] == "QUARANTINED"]
    assert failed and failed[0]["exit_code"] == 1
    assert "cannot read POD5" in failed[0]["last_line"]

    # Survives kill -9: nothing retried forever, no count forgotten.
    server.kill()
    server.start()
    again = status(server)
    assert again["files"]["done"] == 9 and again["files"]["failed"] == 1
    assert [item["file"] for item in again["quarantined"]] == [bad]

    # The operator mends the file and sends it back, without a restart.
    run.add(bad, read_count=2)
    shown = subprocess.run(
        [*BCM, "retry", bad, "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **server.env},
    )
    assert shown.returncode == 0, shown.stderr
    assert bad in shown.stdout
    wait_for(lambda: status(server)["files"]["done"] == 10, 60, "the mended file done")
    assert sorted(fastq_read_ids(run.output_dir / "pass")) == sorted(
        read for name in names for read in run.reads[name]
    )
    assert job_folders(run, "EXCUSED_")  # the attempts it failed are kept, out of the count


def test_retry_works_on_a_stopped_runs_folders(
    run: Run, start_server: Callable[..., Server]
) -> None:
    names = run.add_many(2)
    server = start_server(BCM_QUARANTINE_ATTEMPTS="2")
    for _ in range(2):  # one engine alone: quarantined after two attempts
        batch = server.get("/assignwork", engineid="gpu1", batchsize=1).json()
        assert batch["batch"] == [names[0]]
        assert (
            server.get("/completed", job_id=batch["jobid"], job_state="FAILED").status_code == 200
        )
    assert status(server)["files"]["failed"] == 1
    server.stop()
    shown = subprocess.run(
        [*BCM, "retry", "--input-dir", str(run.input_dir), "--output-dir", str(run.output_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert names[0] in shown.stdout and "next start" in shown.stdout
    assert not job_folders(run, "QUARANTINED_") and not job_folders(run, "FAILED_")
    assert len(job_folders(run, "EXCUSED_")) == 2
    server.start()
    assert status(server)["files"]["failed"] == 0
    batch = server.get("/assignwork", engineid="gpu1", batchsize=5).json()
    assert sorted(batch["batch"]) == names  # offered again, as a file never tried


def test_the_retry_route_needs_the_token(run: Run, start_server: Callable[..., Server]) -> None:
    run.add_many(1)
    server = start_server(BCM_API_TOKEN="s3cret")
    assert server.get("/heartbeat").status_code == 200
    refused = httpx.post(f"{server.url}/retry", json={"files": None}, timeout=10)
    allowed = httpx.post(
        f"{server.url}/retry", json={}, headers={"Authorization": "Bearer s3cret"}, timeout=10
    )
    assert refused.status_code == 401
    assert allowed.status_code == 200 and allowed.json() == {"retried": []}


async def test_an_engine_failing_everything_while_others_succeed_is_benched(run: Run) -> None:
    run.add_many(12)
    clock = Clock()
    manager = Manager(run.settings(bench_seconds=60, report_back_period=600), clock=clock)

    async with serving(manager) as client:
        job = partial(job_of, client, run, size=1)

        await job("good", "DONE")
        for _ in range(3):
            await job("bad", "FAILED")
            clock.now += 1
        benched = await job("bad", "FAILED")
        snapshot = (await client.get("/status")).json()
        assert benched["batch_size"] == 0  # the no-work reply
        [entry] = snapshot["benched"]
        assert entry["engine"] == "bad" and "3 jobs in a row failed" in entry["reason"]
        assert 55 < entry["seconds_left"] <= 60
        assert snapshot["files"]["failed"] == 0  # its failures count against no file
        clock.now += 61
        assert (await job("bad", "FAILED"))["batch_size"] == 1
        for _ in range(2):
            await job("bad", "FAILED")
        again = (await client.get("/status")).json()["benched"]
        assert again and 115 < again[0]["seconds_left"] <= 120  # twice as long
        for _ in range(12):
            await job("good", "DONE")
        final = (await client.get("/status")).json()
    assert final["files"]["done"] == 12 and final["files"]["failed"] == 0


def test_benching_forgets_engines_that_succeed_or_went_quiet() -> None:
    benching = Benching(after=2, seconds=10, longest=100, window=30)

    def end(engine: str, outcome: JobState, now: float) -> Benched | None:
        job = Job("1", engine, ("a.pod5",), outcome, deadline=now, started=now)
        return benching.apply(Ended(job, outcome, counted=True), now)

    assert end("bad", JobState.FAILED, now=1) is None
    end("good", JobState.DONE, now=1.5)
    assert end("bad", JobState.FAILED, now=2) is not None
    # Alone (nobody else succeeded since its streak began), an engine is never benched.
    assert end("lonely", JobState.FAILED, now=3) is None
    end("lonely", JobState.DONE, now=3.5)
    assert benching.benched("bad", now=5) is not None
    end("bad", JobState.DONE, now=20)
    assert benching.benched("bad", now=21) is None
    for index in range(1000):
        end(f"pod-{index}", JobState.FAILED, now=200 + index)
    assert len(benching._streaks) < 150  # older than `longest`: forgotten


async def test_an_engine_that_writes_nothing_is_benched_and_the_run_completes(run: Run) -> None:
    """Exit 0 and no output: each file a failed attempt, counted for benching, never a loop."""
    names = run.add_many(8)
    clock = Clock()
    manager = Manager(run.settings(bench_seconds=600, report_back_period=600), clock=clock)
    async with serving(manager) as client:

        async def job(engine: str) -> int:
            batch = (
                await client.get("/assignwork", params={"engineid": engine, "batchsize": 2})
            ).json()
            if batch["batch_size"] and engine == "good":
                run.basecall(batch["job_output_dir"], batch["batch"])
            if batch["batch_size"]:
                done = {"job_id": batch["jobid"], "job_state": "DONE"}
                assert (await client.get("/completed", params=done)).json() == {"ok": True}
            clock.now += 1
            return int(batch["batch_size"])

        sizes = [await job("empty"), await job("good"), await job("empty"), await job("empty")]
        benched = (await client.get("/status")).json()["benched"]
        refused = await job("empty")
        while await job("good"):
            pass
        snapshot = (await client.get("/status")).json()
    assert sizes[0] == 2 and all(sizes) and refused == 0
    [entry] = benched
    assert entry["engine"] == "empty" and "reads came out" in entry["reason"]
    assert snapshot["files"]["done"] == len(names) and snapshot["files"]["failed"] == 0
    # One failed attempt per file it took, then no more: no pile of empty attempts.
    assert len(job_folders(run, "FAILED_")) == sizes[0] + sizes[2] + sizes[3]
    assert sorted(fastq_read_ids(run.output_dir / "pass")) == sorted(
        read for name in names for read in run.reads[name]
    )


async def test_an_engine_drawing_the_halves_of_its_own_failures_is_benched(run: Run) -> None:
    run.add_many(8)
    clock = Clock()
    settings = run.settings(bench_seconds=600, report_back_period=10, quarantine_attempts=9)
    manager = Manager(settings, clock=clock)
    async with serving(manager) as client:
        job = partial(job_of, client, run, size=4)

        first = await job("bad", "FAILED")
        await job("good", "DONE")  # another engine succeeds since
        clock.now += 30  # and goes quiet: the bad one draws its own halves
        half = await job("bad", "FAILED")
        quarter = await job("bad", "FAILED")
        benched = await job("bad", "FAILED")
        snapshot = (await client.get("/status")).json()
    assert len(first["batch"]) == 4 and len(half["batch"]) == 2 and len(quarter["batch"]) == 1
    assert set(half["batch"]) < set(first["batch"]) and set(quarter["batch"]) < set(half["batch"])
    assert benched["batch_size"] == 0
    assert [entry["engine"] for entry in snapshot["benched"]] == ["bad"]
