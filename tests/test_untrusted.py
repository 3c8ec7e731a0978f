"""Engines and operators are not polite: what they leave in the run's folders never stops the
manager, never moves what is not the job's own output, and never counts as done without reads.

Each test plays one misbehaviour seen in the field against real folders: in-process where the
manager's answer is what matters, with a real ``bcmanager serve`` killed and restarted where a
start-up must cope with the leftovers.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bcmanager.cli.check import CheckReport, inspect
from bcmanager.core.folders import DiskOps, RunFolders
from bcmanager.core.jobs import FileState
from bcmanager.core.manager import Manager
from bcmanager.paths import RunPaths
from conftest import Clock, Run, Server, serving, wait_for


def assign(server: Server, engine: str, size: int) -> dict[str, Any]:
    reply = server.get("/assignwork", engineid=engine, batchsize=size)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def lease(client: httpx.AsyncClient, engine: str, size: int) -> dict[str, Any]:
    reply = await client.get("/assignwork", params={"engineid": engine, "batchsize": size})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def read_ids(folder: Path) -> list[str]:
    """Every read id of every FASTQ below ``folder``: the test's own reading, header lines only."""
    found = []
    for path in sorted(folder.rglob("*.fastq")):
        lines = path.read_text().splitlines()
        found += [line[1:].split()[0] for line in lines[::4]]
    return found


def check(run: Run) -> CheckReport:
    """What ``bcmanager check`` finds in the run's folders, found in-process: the command itself
    is run in tests/test_check.py."""
    return inspect(RunPaths(run.input_dir.resolve(), run.output_dir.resolve()))


# -- start-up copes with what engines leave behind ------------------------------------------


def test_a_late_engine_recreating_its_folder_again_and_again_never_stops_a_start(
    run: Run, start_server: Callable[..., Server]
) -> None:
    run.add_many(2)
    server = start_server(BCM_REPORT_BACK_PERIOD="1", BCM_RESCAN_INTERVAL="0.2")
    job = assign(server, "gpu1", 2)
    output = run.output_dir / job["job_output_dir"]
    expired = output.with_name(output.name.replace("TMPOUTPUT_", "EXPIREDOUTPUT_"))
    wait_for(expired.is_dir, 10, "the lease to run out and the reaper to set its output aside")
    assert not output.exists()
    # The suspended node wakes up: its script makes the folder again and writes into it, and
    # does so after every restart of the manager.
    for attempt in (1, 2):
        (output / "pass").mkdir(parents=True)
        (output / "pass" / "late.fastq").write_text(f"@late{attempt}\nA\n+\n!\n")
        # Lease lost (409), or forgotten by the restart before (404): never merged either way.
        reply = server.get("/completed", job_id=job["jobid"], job_state="DONE")
        assert reply.status_code in (409, 404)
        server.kill()
        server.start()
        aside = expired.with_name(f"{expired.name}.~{attempt}~")
        assert (aside / "pass" / "late.fastq").read_text() == f"@late{attempt}\nA\n+\n!\n"
        assert not output.exists()
    assert os.listdir(run.output_dir / "pass") == []
    assert (expired.parent / f"{expired.name}.~1~").is_dir()
    assert check(run).ok
    again = assign(server, "gpu2", 2)
    assert sorted(again["batch"]) == sorted(job["batch"])


def test_a_straggler_writing_after_done_is_set_aside_not_merged_twice(
    run: Run, start_server: Callable[..., Server]
) -> None:
    run.add_many(2)
    server = start_server()
    job = assign(server, "gpu1", 2)
    run.basecall(job["job_output_dir"], job["batch"])
    assert server.get("/completed", job_id=job["jobid"], job_state="DONE").json() == {"ok": True}
    merged = sorted(os.listdir(run.output_dir / "pass"))
    # The same engine's script runs once more (a retried Slurm step) and writes it all again.
    run.basecall(job["job_output_dir"], job["batch"])
    server.kill()
    server.start()
    assert sorted(os.listdir(run.output_dir / "pass")) == merged
    assert sorted(read_ids(run.output_dir / "pass")) == sorted(
        read for name in job["batch"] for read in run.reads[name]
    )
    logs = run.output_dir / job["job_output_dir"].replace("TMPOUTPUT_", "LOGOUTPUT_")
    assert sorted(os.listdir(logs.with_name(f"{logs.name}.~1~") / "pass")) == sorted(
        name.replace(".pod5", ".fastq") for name in job["batch"]
    )
    assert server.get("/status").json()["files"]["done"] == 2
    assert check(run).ok


class RefusingOps(DiskOps):
    """A disk that refuses every rename of one folder (EIO) until told to stop."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.refusing = True

    def rename(self, source: Path, destination: Path) -> None:
        if self.refusing and source.name == self.refused:
            raise OSError(errno.EIO, "refused by the test", str(source))
        super().rename(source, destination)


async def test_one_job_whose_leftovers_cannot_be_handled_is_shown_and_the_rest_served(
    run: Run,
) -> None:
    names = run.add_many(4)
    first = Manager(run.settings())
    first.folders.prepare()
    for name in names:
        first.state.observe(name, complete=True)
    job = first.assign("gpu1", 2)
    run.basecall(job.job_output_dir, job.batch)
    # A crash right after the commit of its DONE: the output is still to be moved.
    os.rename(
        run.input_dir / job.job_input_dir,
        run.input_dir / job.job_input_dir.replace("ASSIGNED_", "DONE_"),
    )
    ops = RefusingOps(job.job_output_dir)
    settings = run.settings(rescan_interval=0.1)
    manager = Manager(settings, RunFolders(RunPaths(run.input_dir, run.output_dir), ops))
    async with serving(manager) as client:
        status = (await client.get("/status")).json()
        beat = await client.get("/heartbeat")
        other = (
            await client.get("/assignwork", params={"engineid": "gpu2", "batchsize": 4})
        ).json()
        assert sorted(other["batch"]) == sorted(set(names) - set(job.batch))
        assert status["files"]["done"] == 2
        [problem] = status["job_problems"]
        assert job.jobid in problem and "refused by the test" in problem
        assert beat.status_code == 200 and beat.json()["problems"] == [problem]
        found = check(run)
        assert not found.ok and any(line.startswith("REPAIR") for line in found.lines())
        ops.refusing = False  # the disk is mended: the next rescan finishes the job
        for _ in range(100):
            status = (await client.get("/status")).json()
            if not status["job_problems"]:
                break
            await asyncio.sleep(0.05)
        assert status["job_problems"] == []
    assert sorted(read_ids(run.output_dir / "pass")) == sorted(
        read for name in job.batch for read in run.reads[name]
    )


# -- the merge moves only the job's own reads ------------------------------------------------


async def test_a_symlinked_pass_folder_is_never_followed(run: Run, tmp_path: Path) -> None:
    names = run.add_many(2)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "elsewhere.fastq").write_text("@x\nA\n+\n!\n")
    async with serving(Manager(run.settings())) as client:
        for target in (run.input_dir, scratch):
            batch = (
                await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2})
            ).json()
            output = run.output_dir / batch["job_output_dir"]
            (output / "pass").symlink_to(target)
            done = {"job_id": batch["jobid"], "job_state": "DONE"}
            assert (await client.get("/completed", params=done)).json() == {"ok": True}
            status = (await client.get("/status")).json()
            assert status["files"]["pending"] == 2 and status["files"]["done"] == 0
            problem = status["recent_problems"][0]
            assert problem["outcome"] == "FAILED" and " reads came out" in problem["reason"]
            kept = output.with_name(output.name.replace("TMPOUTPUT_", "FAILEDOUTPUT_"))
            assert (kept / "pass").is_symlink()
    assert sorted(p.name for p in run.input_dir.glob("*.pod5")) == sorted(names)
    assert os.listdir(run.output_dir / "pass") == []
    assert os.listdir(scratch) == ["elsewhere.fastq"]
    assert check(run).ok


async def test_links_and_odd_files_inside_the_output_stay_with_the_logs(run: Run) -> None:
    run.add_many(2)
    async with serving(Manager(run.settings())) as client:
        batch = (
            await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2})
        ).json()
        output = run.output_dir / batch["job_output_dir"]
        run.basecall(batch["job_output_dir"], batch["batch"])
        raw = run.input_dir / batch["batch"][0]
        (output / "pass" / "raw.fastq").symlink_to(raw)
        os.mkfifo(output / "pass" / "pipe.fastq")
        (output / "dorado.log").write_text("log\n")
        done = {"job_id": batch["jobid"], "job_state": "DONE"}
        assert (await client.get("/completed", params=done)).json() == {"ok": True}
        assert (await client.get("/status")).json()["files"]["done"] == 2
    merged = sorted(os.listdir(run.output_dir / "pass"))
    assert merged == sorted(
        f"job_id_{batch['jobid']}_{name.replace('.pod5', '.fastq')}" for name in batch["batch"]
    )
    logs = output.with_name(output.name.replace("TMPOUTPUT_", "LOGOUTPUT_"))
    assert (logs / "pass" / "raw.fastq").is_symlink() and raw.is_file()
    assert (logs / "pass" / "pipe.fastq").exists() and (logs / "dorado.log").is_file()


async def test_a_name_taken_in_pass_leaves_the_newcomer_with_the_logs(run: Run) -> None:
    run.add_many(2)
    async with serving(Manager(run.settings())) as client:
        batch = (
            await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2})
        ).json()
        run.basecall(batch["job_output_dir"], batch["batch"])
        stem = batch["batch"][0].replace(".pod5", ".fastq")
        taken = run.output_dir / "pass" / f"job_id_{batch['jobid']}_{stem}"
        taken.write_text("made by someone else\n")
        done = {"job_id": batch["jobid"], "job_state": "DONE"}
        assert (await client.get("/completed", params=done)).json() == {"ok": True}
    assert taken.read_text() == "made by someone else\n"
    logs = run.output_dir / batch["job_output_dir"].replace("TMPOUTPUT_", "LOGOUTPUT_")
    assert read_ids(logs) == run.reads[batch["batch"][0]]


def other_filesystem(near: Path) -> Path | None:
    """A folder on another device than ``near`` (tmpfs under /dev/shm), or None."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == near.stat().st_dev:
        return None
    return shm


async def test_pass_on_another_filesystem_is_copied_then_renamed_into_place(
    run: Run, tmp_path: Path
) -> None:
    shm = other_filesystem(tmp_path)
    if shm is None:
        pytest.skip("no second filesystem (tmpfs at /dev/shm) on this machine")
    run.add_many(3)
    project = Path(tempfile.mkdtemp(prefix="bcm-project-", dir=shm))
    try:
        run.output_dir.mkdir()
        (run.output_dir / "pass").symlink_to(project)
        async with serving(Manager(run.settings())) as client:
            batch = (
                await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 3})
            ).json()
            run.basecall(batch["job_output_dir"], batch["batch"])
            done = {"job_id": batch["jobid"], "job_state": "DONE"}
            assert (await client.get("/completed", params=done)).json() == {"ok": True}
            status = (await client.get("/status")).json()
        assert status["files"]["done"] == 3 and status["job_problems"] == []
        assert sorted(read_ids(project)) == sorted(
            read for name in batch["batch"] for read in run.reads[name]
        )
        assert not any(name.startswith(".") for name in os.listdir(project))
        logs = run.output_dir / batch["job_output_dir"].replace("TMPOUTPUT_", "LOGOUTPUT_")
        assert read_ids(logs) == []
    finally:
        shutil.rmtree(project)


# -- DONE without reads ----------------------------------------------------------------------


async def test_done_without_any_reads_file_is_not_done(run: Run) -> None:
    """Every file's reads are missing: each is a failed attempt of its own, retried alone."""
    names = run.add_many(2)
    async with serving(Manager(run.settings())) as client:
        batch = (
            await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2})
        ).json()
        (run.output_dir / batch["job_output_dir"] / "dorado.log").write_text("wrote BAM to stdout")
        done = {"job_id": batch["jobid"], "job_state": "DONE"}
        first = await client.get("/completed", params=done)
        again = await client.get("/completed", params=done)
        status = (await client.get("/status")).json()
        offered = (
            await client.get("/assignwork", params={"engineid": "gpu2", "batchsize": 2})
        ).json()
    assert first.json() == again.json() == {"ok": True}
    assert status["files"]["done"] == 0 and status["files"]["pending"] == 2
    problems = status["recent_problems"]
    assert [problem["outcome"] for problem in problems] == ["FAILED", "FAILED"]
    assert batch["jobid"] in {problem["jobid"] for problem in problems}
    assert sorted(problem["reason"] for problem in problems) == [
        f"{name}: 0 of {len(run.reads[name])} reads came out" for name in names
    ]
    assert len(offered["batch"]) == 1 and offered["batch"][0] in names  # a retry, alone
    assert not list(run.input_dir.glob("DONE_*"))
    assert len(list(run.input_dir.glob("FAILED_*"))) == 2
    kept = run.output_dir / batch["job_output_dir"].replace("TMPOUTPUT_", "FAILEDOUTPUT_")
    assert (kept / "dorado.log").read_text() == "wrote BAM to stdout"


# -- raw files an operator moves or deletes --------------------------------------------------


async def test_raw_files_that_disappear_are_missing_never_leased(run: Run, tmp_path: Path) -> None:
    names = run.add_many(4)
    # No watcher, a rescan that never comes: only the check at lease time can see it.
    manager = Manager(run.settings(force_polling=True, rescan_interval=3600))
    async with serving(manager) as client:
        moved = tmp_path / names[0]
        os.rename(run.input_dir / names[0], moved)
        batch = (
            await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2})
        ).json()
        status = (await client.get("/status")).json()
        assert batch["batch"] == names[1:3]
        assert status["files"]["missing"] == 1 and status["files"]["pending"] == 1
        assert status["bytes"]["missing"] == 0
        # The operator puts it back: a scan sees it again and it is offered.
        os.rename(moved, run.input_dir / names[0])
        await manager._rescan()
        again = (
            await client.get("/assignwork", params={"engineid": "gpu2", "batchsize": 5})
        ).json()
    assert sorted(again["batch"]) == sorted([names[0], names[3]])


async def test_deleted_raw_files_are_seen_by_events_and_by_rescans(run: Run) -> None:
    names = run.add_many(4)
    for settings in (run.settings(), run.settings(force_polling=True, rescan_interval=0.1)):
        manager = Manager(settings)
        async with serving(manager) as client:
            gone = [name for name in names if (run.input_dir / name).exists()][:1]
            (run.input_dir / gone[0]).unlink()
            for _ in range(100):
                files = (await client.get("/status")).json()["files"]
                if files["missing"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert files["missing"] == 1 and manager.state.file_state(gone[0]) is FileState.MISSING


# -- no change of one job blocks the loop, and none interleaves with another of it ----------


class GatedOps(DiskOps):
    """Renames into pass/ wait for the test to open the gate, and note the thread they ran on."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: set[str] = set()

    def rename(self, source: Path, destination: Path) -> None:
        if destination.parent.name == "pass":
            self.threads.add(threading.current_thread().name)
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        super().rename(source, destination)


async def test_a_long_merge_runs_off_the_loop_and_nothing_interleaves_with_it(run: Run) -> None:
    run.add_many(3)
    ops = GatedOps()
    clock = Clock()
    manager = Manager(
        run.settings(report_back_period=5),
        RunFolders(RunPaths(run.input_dir, run.output_dir), ops),
        clock=clock,
    )
    async with serving(manager) as client:
        batch = (
            await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2})
        ).json()
        run.basecall(batch["job_output_dir"], batch["batch"])
        done = {"job_id": batch["jobid"], "job_state": "DONE"}
        failed = {"job_id": batch["jobid"], "job_state": "FAILED"}
        first = asyncio.create_task(client.get("/completed", params=done))
        await asyncio.to_thread(ops.entered.wait, 10)
        # While the merge waits on the disk: other calls are answered, the lease runs out on
        # the clock but the reaper leaves the job alone, and repeated reports wait their turn.
        clock.now += 60
        beat = await client.get("/heartbeat")
        other = (
            await client.get("/assignwork", params={"engineid": "gpu2", "batchsize": 1})
        ).json()
        await asyncio.sleep(0.3)  # the reaper ticks
        repeat = asyncio.create_task(client.get("/completed", params=done))
        conflicting = asyncio.create_task(client.get("/completed", params=failed))
        await asyncio.sleep(0.1)
        assert not (first.done() or repeat.done() or conflicting.done())
        ops.gate.set()
        replies = await asyncio.gather(first, repeat, conflicting)
        status = (await client.get("/status")).json()
    assert beat.status_code == 200 and other["batch_size"] == 1
    assert [reply.status_code for reply in replies] == [200, 200, 409]
    assert status["files"]["done"] == 2
    assert "MainThread" not in ops.threads
