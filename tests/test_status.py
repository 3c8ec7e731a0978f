"""GET /status as the run's snapshot, and the run's phase from MinKNOW's final summary, against
the app in-process on real folders."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_scaling import lines_executed

from bcmanager.core.jobs import FileState
from bcmanager.core.manager import Manager
from bcmanager.facility.facility import Facility
from bcmanager.models import JobState
from conftest import Clock, Run, serving


async def assign(client: httpx.AsyncClient, engine: str, size: int) -> dict[str, Any]:
    reply = await client.get("/assignwork", params={"engineid": engine, "batchsize": size})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def complete(client: httpx.AsyncClient, jobid: str, state: str) -> None:
    reply = await client.get("/completed", params={"job_id": jobid, "job_state": state})
    assert reply.json() == {"ok": True}


async def quarantine(client: httpx.AsyncClient, job: dict[str, Any], other: str) -> str:
    """Fail ``job`` (of one file), then its retry on engine ``other``: the file is quarantined
    on two engines' word. Returns the retry's job id."""
    await complete(client, job["jobid"], "FAILED")
    retry = await assign(client, other, 1)
    assert retry["batch"] == job["batch"]
    await complete(client, retry["jobid"], "FAILED")
    jobid: str = retry["jobid"]
    return jobid


async def status_when(
    client: httpx.AsyncClient, ready: Any, timeout: float = 5.0
) -> dict[str, Any]:
    """Poll /status until ``ready(status)`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = (await client.get("/status")).json()
        if ready(status):
            return status
        assert time.monotonic() < deadline, f"status never got there: {status}"
        await asyncio.sleep(0.05)


def sizes(run: Run, names: list[str]) -> int:
    return sum((run.input_dir / name).stat().st_size for name in names)


def minute_started() -> Callable[[], float]:
    """The monotonic clock, moved so that a minute begins one second ago: the test's few
    seconds (the files it writes first included) stay in one of the one-minute buckets."""
    shift = time.monotonic() - 6001.0
    return lambda: time.monotonic() - shift


async def test_status_snapshots_bytes_rates_engines_and_problems(run: Run) -> None:
    clock = minute_started()
    names = [run.add(f"raw_{index}.pod5", read_count=1 + index).name for index in range(8)]
    async with serving(Manager(run.settings(), clock=clock)) as client:
        done = await assign(client, "gpu1", 3)
        failed = await assign(client, "gpu2", 2)
        leased = await assign(client, "gpu3", 2)
        run.basecall(done["job_output_dir"], done["batch"])
        await complete(client, done["jobid"], "DONE")
        await complete(client, failed["jobid"], "FAILED")
        status = (await client.get("/status")).json()
    # A failed attempt is not a bad file: its two files are pending again, to be retried.
    assert status["files"] == {
        "waiting": 0,
        "pending": 3,
        "leased": 2,
        "done": 3,
        "failed": 0,
        "missing": 0,
    }
    assert status["bytes"] == {
        "waiting": 0,
        "pending": sizes(run, names[7:]) + sizes(run, failed["batch"]),
        "leased": sizes(run, leased["batch"]),
        "done": sizes(run, done["batch"]),
        "failed": 0,
        "missing": 0,
    }
    # The files were written just now, and the manager is seconds old: the rates are measured
    # over the shortest span a rate is taken over, 10 s.
    short = status["rates"]["last_5_minutes"]
    assert short["arrived"]["files_per_minute"] == pytest.approx(8 * 6)
    assert short["basecalled"]["files_per_minute"] == pytest.approx(3 * 6)
    assert short["basecalled"]["bytes_per_minute"] == pytest.approx(6 * sizes(run, done["batch"]))
    assert status["history"]["last_hour"]["arrived"][-1] == 8
    assert status["drain"]["backlog_files"] == 5
    assert status["drain"]["eta_seconds"] == pytest.approx(5 / 18 * 60, abs=0.1)
    engines = {engine["engine"]: engine for engine in status["engines"]}
    assert set(engines) == {"gpu1", "gpu2", "gpu3"}
    assert engines["gpu1"]["jobs_done"] == 1 and engines["gpu1"]["files_done"] == 3
    assert engines["gpu1"]["bytes_done"] == sizes(run, done["batch"])
    assert engines["gpu1"]["mean_seconds_per_file"] is not None
    assert engines["gpu2"]["jobs_failed"] == 1 and engines["gpu2"]["current_jobs"] == []
    assert engines["gpu3"]["current_jobs"] == [leased["jobid"]]
    assert all(engine["seconds_since_contact"] < 5 for engine in engines.values())
    [problem] = status["recent_problems"]
    assert problem["jobid"] == failed["jobid"] and problem["outcome"] == "FAILED"
    assert status["phase"] == "sequencing" and status["final_summary"] is None


async def test_the_run_finishes_then_completes(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    """MinKNOW writes its final summary into the run folder, INPUT_DIR's parent by default."""
    caplog.set_level(logging.INFO, logger="bcmanager")
    run.add_many(3)
    summary = run.input_dir.parent / "final_summary_FAX12345_a1b2c3d4_9f8e7d6c.txt"
    async with serving(Manager(run.settings(rescan_interval=0.1))) as client:
        job = await assign(client, "gpu1", 2)
        assert (await client.get("/heartbeat")).json()["phase"] == "sequencing"
        summary.write_text("instrument=PC24B123\n")
        status = await status_when(client, lambda s: s["phase"] != "sequencing")
        assert status["phase"] == "finished, basecalling"
        assert status["final_summary"] == str(summary)
        beat = (await client.get("/heartbeat")).json()
        assert beat["phase"] == "finished, basecalling" and beat["status"] == "false"
        run.basecall(job["job_output_dir"], job["batch"])
        await complete(client, job["jobid"], "DONE")
        assert (await client.get("/status")).json()["phase"] == "finished, basecalling"
        last = await assign(client, "gpu1", 5)
        run.basecall(last["job_output_dir"], last["batch"])
        await complete(client, last["jobid"], "DONE")
        assert (await client.get("/status")).json()["phase"] == "complete"
        assert (await client.get("/heartbeat")).json()["phase"] == "complete"
        await asyncio.sleep(0.3)  # a few more rescans: the news is logged once
    events = [getattr(record, "bcm_event", {}).get("event") for record in caplog.records]
    assert events.count("finished") == 1 and events.count("complete") == 1
    assert events.index("finished") < events.index("complete")


async def test_final_summary_dir_setting_and_a_restart_on_a_finished_run(
    run: Run, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "minknow_run"
    elsewhere.mkdir()
    run.add_many(2)
    settings = run.settings(rescan_interval=0.1, final_summary_dir=elsewhere)
    # With the setting, INPUT_DIR's parent is not looked at.
    (run.input_dir.parent / "final_summary_ignored.txt").write_text("")
    async with serving(Manager(settings)) as client:
        job = await assign(client, "gpu1", 2)
        run.basecall(job["job_output_dir"], job["batch"])
        await complete(client, job["jobid"], "DONE")
        await asyncio.sleep(0.3)
        assert (await client.get("/status")).json()["phase"] == "sequencing"
        (elsewhere / "final_summary_FAX1_x_y.txt").write_text("")
        await status_when(client, lambda s: s["phase"] == "complete")
    # A manager started on a finished, drained run says so as soon as it is ready.
    async with serving(Manager(settings)) as client:
        status = (await client.get("/status")).json()
        assert status["phase"] == "complete" and status["files"]["done"] == 2
        assert status["bytes"]["done"] == sizes(run, job["batch"])


async def test_a_restart_sizes_the_files_it_recovers(run: Run) -> None:
    names = [run.add(f"raw_{index}.pod5", read_count=2 + index).name for index in range(6)]
    async with serving(Manager(run.settings())) as client:
        done = await assign(client, "gpu1", 2)
        failed = await assign(client, "gpu2", 1)
        leased = await assign(client, "gpu3", 2)
        run.basecall(done["job_output_dir"], done["batch"])
        await complete(client, done["jobid"], "DONE")
        quarantined = await quarantine(client, failed, "gpu4")
        before = (await client.get("/status")).json()
    async with serving(Manager(run.settings())) as client:
        after = (await client.get("/status")).json()
    assert after["files"] == before["files"]
    assert after["bytes"] == before["bytes"]
    assert sum(after["bytes"].values()) == sizes(run, names)
    engines = {engine["engine"]: engine for engine in after["engines"]}
    assert engines["gpu3"]["current_jobs"] == [leased["jobid"]]
    [problem] = after["recent_problems"]
    assert problem["jobid"] == quarantined and problem["seconds_ago"] is None
    assert after["files"]["failed"] == 1


def status_cost(run: Run, size: int) -> int:
    """Lines of bcmanager run by one /status of a run with ``size`` pending and ``size`` done
    files, two engines and a live job, on a clock that the test holds still."""
    manager = Manager(run.settings(), clock=lambda: 5_000.0)
    facility = Facility(run.settings(), manager)
    asyncio.run(facility.start())  # an empty raw folder, served alone
    for index in range(size):
        manager.state.restore(f"done_{index}.pod5", FileState.DONE)
        manager.state.observe(f"raw_{index}.pod5", complete=True)
    for index in range(20):  # the files leased are looked at: those must be there
        (run.input_dir / f"raw_{index}.pod5").touch()
    finished = manager.assign("gpu1", 10)
    run.basecall(finished.job_output_dir, finished.batch)
    manager.complete(finished.jobid, JobState.DONE)
    manager.assign("gpu2", 10)
    facility.status()  # first-call costs (imports, caches) are not the run's size
    return lines_executed(facility.status)


def test_status_costs_the_same_in_a_small_and_a_large_run(tmp_path: Path) -> None:
    small = Run(tmp_path / "small_in", tmp_path / "small_out")
    large = Run(tmp_path / "large_in", tmp_path / "large_out")
    for each in (small, large):
        each.input_dir.mkdir()
    assert status_cost(small, 1_000) == status_cost(large, 100_000)


async def test_a_restart_rebuilds_tallies_and_the_last_hour_from_the_folders(run: Run) -> None:
    """Engines' tallies and the last hour's rate come back from DONE_ and QUARANTINED_
    folders, dated by the rename that ended each job; a clock moved by hand ages them out."""
    run.add_many(12)
    async with serving(Manager(run.settings())) as client:
        for engine in ("gpu1", "gpu1", "gpu2"):
            job = await assign(client, engine, 3)
            run.basecall(job["job_output_dir"], job["batch"])
            await complete(client, job["jobid"], "DONE")
        await quarantine(client, await assign(client, "gpu3", 1), "gpu4")

    clock = Clock()
    async with serving(Manager(run.settings(), clock=clock)) as client:
        status = (await client.get("/status")).json()
        engines = {engine["engine"]: engine for engine in status["engines"]}
        assert status["files"]["done"] == 9 and status["files"]["failed"] == 1
        assert {name: engines[name]["files_done"] for name in ("gpu1", "gpu2")} == {
            "gpu1": 6,
            "gpu2": 3,
        }
        assert engines["gpu1"]["jobs_done"] == 2 and engines["gpu4"]["files_failed"] == 1
        assert sum(engine["files_done"] for engine in engines.values()) == 9
        assert all(engine["seconds_since_contact"] < 60 for engine in engines.values())
        # Nine files in the seconds before the restart: 9 per 10 s, the shortest span.
        hour = status["rates"]["last_60_minutes"]["basecalled"]
        assert hour["files_per_minute"] == pytest.approx(54, rel=0.05)
        assert sum(status["history"]["last_hour"]["basecalled"]) == 9
        clock.now += 3600 + 60
        later = (await client.get("/status")).json()
        assert later["rates"]["last_60_minutes"]["basecalled"]["files_per_minute"] == 0
        assert sum(later["history"]["last_3_days"]["basecalled"]) == 9
