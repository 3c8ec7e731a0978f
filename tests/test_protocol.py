"""The four routes of docs/protocol.md and /status, against the app in-process on real folders."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx

from bcmanager.core.manager import Manager
from conftest import Clock, Run, serving, tree

BATCH_KEYS = {
    "report_back_period": int,
    "report_back_interval": int,
    "jobid": str,
    "job_input_dir": str,
    "job_output_dir": str,
    "bc_engine_id": str,
    "batch_size": int,
    "batch": list,
}


def write_fastq(folder: Path, sub: str, name: str, read_ids: list[str]) -> None:
    (folder / sub).mkdir(parents=True, exist_ok=True)
    body = "".join(f"@{read}\nACGT\n+\n!!!!\n" for read in read_ids)
    (folder / sub / name).write_text(body)


async def assign(client: httpx.AsyncClient, engine: str = "gpu004", size: int = 2) -> dict:
    reply = await client.get("/assignwork", params={"engineid": engine, "batchsize": size})
    assert reply.status_code == 200, reply.text
    body: dict = reply.json()
    return body


async def test_assignwork_reply_and_folders_follow_the_protocol(run: Run) -> None:
    names = run.add_many(3)
    async with serving(Manager(run.settings())) as client:
        batch = await assign(client, size=2)
    for key, kind in BATCH_KEYS.items():
        assert isinstance(batch[key], kind), key
    jobid = batch["jobid"]
    assert jobid.isdigit() and int(jobid) > 0
    assert batch["report_back_period"] == batch["report_back_interval"] == 90
    assert batch["batch"] == names[:2] and batch["batch_size"] == 2
    assert batch["bc_engine_id"] == "gpu004"
    assert batch["job_input_dir"] == f"ASSIGNED_{jobid}_gpu004"
    assert batch["job_output_dir"] == f"TMPOUTPUT_{jobid}_gpu004"
    assert batch["input_dir"] == str(run.input_dir) and batch["output_dir"] == str(run.output_dir)
    folder = run.input_dir / batch["job_input_dir"]
    assert sorted(os.listdir(folder)) == names[:2]
    for name in names[:2]:
        link = folder / name
        assert link.is_symlink() and link.resolve() == (run.input_dir / name).resolve()
    output = run.output_dir / batch["job_output_dir"]
    assert output.is_dir() and os.listdir(output) == []
    assert not [n for n in os.listdir(run.input_dir) if n.startswith(".bcm-tmp")]


async def test_batch_sizes_default_cap_and_no_work(run: Run) -> None:
    run.add_many(10)
    settings = run.settings(default_batch_size=3, max_batch_size=4)
    async with serving(Manager(settings)) as client:
        assert (await assign(client, size=0))["batch_size"] == 3
        assert (await assign(client, size=-5))["batch_size"] == 3
        assert (await assign(client, size=100))["batch_size"] == 4
        nothing = await assign(client, size=10)
    assert nothing == {
        "report_back_period": 90,
        "report_back_interval": 90,
        "jobid": "-1",
        "job_input_dir": "",
        "job_output_dir": "",
        "bc_engine_id": "gpu004",
        "batch_size": 0,
        "batch": [],
        "input_dir": str(run.input_dir),
        "output_dir": str(run.output_dir),
        # The keys of a batch's run, as none: no work belongs to no run.
        **{"run_path": "", "priority": 0, "model": "", "modified_bases": "", "kit": ""},
        **{"sample_rate": None, "flow_cell_product": "", "sequencing_kit": ""},
    }


async def test_completed_done_merges_output_once(run: Run) -> None:
    run.add_many(2)
    async with serving(Manager(run.settings())) as client:
        batch = await assign(client)
        jobid, out = batch["jobid"], run.output_dir / batch["job_output_dir"]
        write_fastq(out, "pass", "raw_00000.fastq", run.reads["raw_00000.pod5"])
        write_fastq(out, "fail", "raw_00001.fastq", run.reads["raw_00001.pod5"])
        (out / "dorado.log").write_text("log")
        params = {"job_id": jobid, "job_state": "DONE"}
        first = await client.get("/completed", params=params)
        after_first = tree(run.input_dir), tree(run.output_dir)
        second = await client.get("/completed", params=params)
        status = (await client.get("/status")).json()
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == {"ok": True}
    assert (tree(run.input_dir), tree(run.output_dir)) == after_first
    assert os.listdir(run.output_dir / "pass") == [f"job_id_{jobid}_raw_00000.fastq"]
    assert os.listdir(run.output_dir / "fail") == [f"job_id_{jobid}_raw_00001.fastq"]
    assert (run.input_dir / f"DONE_{jobid}_gpu004").is_dir()
    assert not (run.input_dir / batch["job_input_dir"]).exists()
    logs = run.output_dir / f"LOGOUTPUT_{jobid}_gpu004"
    assert (logs / "dorado.log").read_text() == "log" and not out.exists()
    assert status["files"]["done"] == 2 and status["jobs"] == []


async def test_completed_failed_keeps_the_attempt_and_retries_its_files_in_halves(
    run: Run,
) -> None:
    names = run.add_many(2)
    async with serving(Manager(run.settings())) as client:
        batch = await assign(client)
        jobid = batch["jobid"]
        write_fastq(run.output_dir / batch["job_output_dir"], "pass", "partial.fastq", ["r"])
        params = {"job_id": jobid, "job_state": "FAILED"}
        assert (await client.get("/completed", params=params)).json() == {"ok": True}
        assert (await client.get("/completed", params=params)).json() == {"ok": True}
        status = (await client.get("/status")).json()
        halves = [await assign(client, "gpu005", 10) for _ in range(2)]
    assert (run.input_dir / f"FAILED_{jobid}_gpu004").is_dir()
    kept = run.output_dir / f"FAILEDOUTPUT_{jobid}_gpu004" / "pass" / "partial.fastq"
    assert kept.is_file()
    assert os.listdir(run.output_dir / "pass") == []
    assert status["files"]["failed"] == 0 and status["files"]["pending"] == 2
    assert [half["batch"] for half in halves] == [[names[0]], [names[1]]]


async def test_stopped_gives_the_batch_back_at_once(run: Run) -> None:
    names = run.add_many(3)
    async with serving(Manager(run.settings())) as client:
        batch = await assign(client, size=2)
        write_fastq(run.output_dir / batch["job_output_dir"], "pass", "x.fastq", ["r"])
        params = {"job_id": batch["jobid"], "job_state": "STOPPED"}
        assert (await client.get("/completed", params=params)).json() == {"ok": True}
        again = await assign(client, size=3)
    assert again["batch"] == names
    assert not (run.output_dir / batch["job_output_dir"]).exists()
    assert os.listdir(run.output_dir / "pass") == []
    job_folders = [n for n in os.listdir(run.input_dir) if n[0] != "." and "pod5" not in n]
    assert job_folders == [again["job_input_dir"]]


async def test_reaper_takes_back_a_silent_job(run: Run) -> None:
    names = run.add_many(4)
    async with serving(Manager(run.settings(report_back_period=1))) as client:
        silent = await assign(client, "gpu1", 2)
        alive = await assign(client, "gpu2", 1)
        out = run.output_dir / silent["job_output_dir"]
        write_fastq(out, "pass", "raw_00000.fastq", ["r1"])
        for _ in range(6):
            await asyncio.sleep(0.3)
            reply = await client.get(
                "/keepalive", params={"job_id": alive["jobid"], "job_state": "PROCESSING"}
            )
            assert reply.json() == {"late": False}
        status = (await client.get("/status")).json()
        late = await client.get(
            "/keepalive", params={"job_id": silent["jobid"], "job_state": "PROCESSING"}
        )
        done = await client.get(
            "/completed", params={"job_id": silent["jobid"], "job_state": "DONE"}
        )
        again = await assign(client, "gpu3", 3)
    assert [job["jobid"] for job in status["jobs"]] == [alive["jobid"]]
    assert late.json() == {"late": True}
    assert done.status_code == 409 and "lease" in done.json()["detail"]
    assert os.listdir(run.output_dir / "pass") == []
    assert not (run.input_dir / silent["job_input_dir"]).exists()
    aside = run.output_dir / f"EXPIREDOUTPUT_{silent['jobid']}_gpu1" / "pass" / "raw_00000.fastq"
    assert aside.is_file()
    # The expired files come back ahead of the newer one that was never leased.
    assert again["batch"] == [names[0], names[1], names[3]]


async def test_heartbeat_goes_idle_and_back(run: Run) -> None:
    """On the test's clock: a manager slow to start (a busy machine) is not idle already."""
    run.add_many(1)
    clock = Clock()
    async with serving(Manager(run.settings(shutdown_interval=0.5), clock=clock)) as client:
        fresh = (await client.get("/heartbeat")).json()
        clock.now += 0.7
        idle = (await client.get("/heartbeat")).json()
        await assign(client)
        busy = (await client.get("/heartbeat")).json()
    assert fresh["status"] == "false" and isinstance(fresh["inactivity_interval"], float)
    assert idle["status"] == "true" and idle["inactivity_interval"] >= 0.5
    assert busy["status"] == "false" and busy["inactivity_interval"] < 0.5


async def test_heartbeat_answers_503_when_input_dir_is_gone(run: Run) -> None:
    async with serving(Manager(run.settings())) as client:
        assert (await client.get("/heartbeat")).status_code == 200
        shutil.rmtree(run.input_dir)
        reply = await client.get("/heartbeat")
    assert reply.status_code == 503
    assert any("INPUT_DIR" in problem for problem in reply.json()["problems"])


async def test_status_counts_every_state_and_lists_leases(run: Run) -> None:
    run.add_many(5)
    (run.input_dir / "half.pod5").write_bytes(b"\x8bPOD\r\n\x1a\n" + b"partial")
    async with serving(Manager(run.settings())) as client:
        done = await assign(client, "gpu1", 1)
        failed = await assign(client, "gpu2", 1)
        leased = await assign(client, "gpu3", 2)
        run.basecall(done["job_output_dir"], done["batch"])
        for job, state in ((done, "DONE"), (failed, "FAILED")):
            await client.get("/completed", params={"job_id": job["jobid"], "job_state": state})
        # The failed file, alone, fails on a second engine too: quarantined.
        retry = await assign(client, "gpu4", 1)
        assert retry["batch"] == failed["batch"]
        await client.get("/completed", params={"job_id": retry["jobid"], "job_state": "FAILED"})
        status = (await client.get("/status")).json()
    assert status["files"] == {
        "waiting": 1,
        "pending": 1,
        "leased": 2,
        "done": 1,
        "failed": 1,
        "missing": 0,
    }
    assert status["ready"] is True
    [job] = status["jobs"]
    assert job["jobid"] == leased["jobid"] and job["engine"] == "gpu3"
    assert job["files"] == leased["batch"] and job["state"] == "ASSIGNED"
    assert 85 < job["seconds_left"] <= 90
