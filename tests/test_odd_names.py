"""Names that are not UTF-8 (a POD5 file copied from a Latin-1 share, ``caf\\xe9.pod5``), which
Python lists with surrogate escapes and JSON cannot carry: never offered, never a 5xx, named once
in the log and by ``bcmanager check``, with the odd bytes shown as ``\\xNN``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bcmanager.cli.check import Severity, inspect
from bcmanager.core.manager import Manager
from bcmanager.paths import RunPaths
from conftest import Run, Server, fastq, serving, wait_for

LATIN1 = b"caf\xe9"  # "café" as a Latin-1 share spells it: not UTF-8
ODD_RAW = os.fsdecode(LATIN1 + b".pod5")  # how Python lists it: 'caf\udce9.pod5'
SHOWN = "caf\\xe9"  # how bcmanager shows it
ROUTES = ("/status", "/metrics", "/", "/heartbeat")


def write_named(folder: Path, name: bytes, content: bytes) -> str:
    """A file whose name is raw bytes, made through a bytes path as a copy from a share would
    make it; returns the name as Python lists it."""
    fd = os.open(os.fsencode(folder) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as sink:
        sink.write(content)
    return os.fsdecode(name)


def write_fastq(run: Run, output: Path, batch: list[str]) -> None:
    """A FASTQ per raw file of ``batch``, with its reads (the test's own ledger)."""
    (output / "pass").mkdir(exist_ok=True)
    for name in batch:
        (output / "pass" / name.replace(".pod5", ".fastq")).write_text(fastq(run.reads[name]))


def notes(paths: RunPaths) -> list[str]:
    """What ``bcmanager check`` says of the run: its notes, and that nothing else is wrong."""
    report = inspect(paths)
    assert report.ok, report.lines()
    return [str(problem) for problem in report.problems if problem.severity is Severity.NOTE]


def test_a_raw_file_named_in_latin1_is_never_offered_and_breaks_no_route(
    run: Run, start_server: Callable[..., Server]
) -> None:
    names = run.add_many(4)
    assert write_named(run.input_dir, LATIN1 + b".pod5", run.add("x.pod5").read_bytes()) == ODD_RAW
    names.append("x.pod5")
    # Polling only: a file written later is found by a rescan, so each one found proves that
    # another rescan listed the odd file again.
    server = start_server(BCM_FORCE_POLLING="true", BCM_RESCAN_INTERVAL="0.1")
    client = httpx.Client(base_url=server.url, timeout=10)

    def every_route_answers() -> None:
        for route in ROUTES:
            assert client.get(route).status_code == 200, route

    offered: list[str] = []
    with client:
        while True:
            every_route_answers()
            batch = client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 2}).json()
            every_route_answers()  # with the batch leased
            if not batch["batch"]:
                if len(names) == 8:
                    break
                names.append(run.add(f"late_{len(names)}.pod5").name)
                wait_for(
                    lambda: client.get("/status").json()["files"]["pending"] == 1, 5, "a rescan"
                )
                continue
            offered += batch["batch"]
            write_fastq(run, run.output_dir / batch["job_output_dir"], batch["batch"])
            done = client.get("/completed", params={"job_id": batch["jobid"], "job_state": "DONE"})
            assert done.json() == {"ok": True}
    status = server.get("/status").json()
    server.stop()
    assert sorted(offered) == sorted(names)
    assert status["files"] == {
        "waiting": 0,
        "pending": 0,
        "leased": 0,
        "done": 8,
        "failed": 0,
        "missing": 0,
    }
    named = [line for line in server.log.read_text().splitlines() if SHOWN in line]
    assert len(named) == 1, named
    assert " WARNING never offered: " in named[0]
    odd = f"{run.input_dir.resolve()}/{SHOWN}.pod5"
    assert f"{odd} is named in bytes that are not UTF-8" in named[0]
    assert notes(RunPaths(run.input_dir.resolve(), run.output_dir.resolve())) == [
        f"NOTE: {odd}: named in bytes that are not UTF-8: never offered to an engine"
    ]


async def every_route_answers(client: httpx.AsyncClient) -> None:
    for route in ROUTES:
        assert (await client.get(route)).status_code == 200, route


async def assign(client: httpx.AsyncClient, size: int) -> dict[str, Any]:
    reply = await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": size})
    assert reply.status_code == 200, reply.text
    batch: dict[str, Any] = reply.json()
    return batch


async def complete(client: httpx.AsyncClient, jobid: str) -> None:
    reply = await client.get("/completed", params={"job_id": jobid, "job_state": "DONE"})
    assert reply.json() == {"ok": True}


async def test_odd_links_in_job_folders_are_no_files_of_their_jobs(run: Run) -> None:
    """Job folders a crash left (an older manager leased such a file): adopted and restored
    without the odd link, which is never offered after."""
    names = run.add_many(3)
    write_named(run.input_dir, LATIN1 + b".pod5", (run.input_dir / names[0]).read_bytes())
    for folder, name in (("ASSIGNED_7_gpu9", names[0]), ("DONE_8_gpu9", names[1])):
        (run.input_dir / folder).mkdir()
        for each in (name, ODD_RAW):
            (run.input_dir / folder / each).symlink_to(f"../{each}")
    async with serving(Manager(run.settings())) as client:
        status = (await client.get("/status")).json()
        assert [job["files"] for job in status["jobs"]] == [[names[0]]]
        assert status["files"] == {
            "waiting": 0,
            "pending": 1,
            "leased": 1,
            "done": 1,
            "failed": 0,
            "missing": 0,
        }
        await every_route_answers(client)
        assert (await assign(client, 5))["batch"] == [names[2]]
        write_fastq(run, run.output_dir / "TMPOUTPUT_7_gpu9", [names[0]])
        await complete(client, "7")
        assert (await assign(client, 5))["batch"] == []
        await every_route_answers(client)
    root = run.input_dir.resolve()
    assert sorted(notes(RunPaths(root, run.output_dir.resolve()))) == [
        *(
            f"NOTE: {root}/{folder}/{SHOWN}.pod5: named in bytes that are not UTF-8: "
            "not a file of this job"
            for folder in ("DONE_7_gpu9", "DONE_8_gpu9")
        ),
        f"NOTE: {root}/{SHOWN}.pod5: named in bytes that are not UTF-8: never offered to an engine",
    ]


async def test_odd_fastq_names_are_merged_and_stand_for_no_raw_file(run: Run) -> None:
    """FASTQ made by other means under an odd name, and an engine that writes one."""
    run.add_many(2)
    (run.output_dir / "pass").mkdir(parents=True)
    odd_fastq = write_named(run.output_dir / "pass", LATIN1 + b".fastq", b"@r\nA\n+\n!\n")
    async with serving(Manager(run.settings())) as client:
        batch = await assign(client, 2)
        output = run.output_dir / batch["job_output_dir"]
        write_fastq(run, output, batch["batch"][:1])
        second = fastq(run.reads[batch["batch"][1]]).encode()
        engine_fastq = write_named(output / "pass", b"r\xe9ads.fastq", second)
        await complete(client, batch["jobid"])
        await every_route_answers(client)
    merged = f"job_id_{batch['jobid']}_{engine_fastq}"
    assert {odd_fastq, merged} < set(os.listdir(run.output_dir / "pass"))
    async with serving(Manager(run.settings())) as client:
        status = (await client.get("/status")).json()
        await every_route_answers(client)
    assert status["files"] == {
        "waiting": 0,
        "pending": 0,
        "leased": 0,
        "done": 2,
        "failed": 0,
        "missing": 0,
    }
    shown_merged = f"job_id_{batch['jobid']}_r\\xe9ads.fastq"
    pass_dir = run.output_dir.resolve() / "pass"
    assert sorted(notes(RunPaths(run.input_dir.resolve(), run.output_dir.resolve()))) == [
        f"NOTE: {pass_dir}/{name}: named in bytes that are not UTF-8: stands for no raw file"
        for name in sorted([f"{SHOWN}.fastq", shown_merged])
    ]


async def test_an_odd_final_summary_name_finishes_the_run(run: Run) -> None:
    run.add_many(1)
    write_named(run.input_dir.parent, b"final_summary_" + LATIN1 + b".txt", b"stopped\n")
    async with serving(Manager(run.settings(rescan_interval=0.05))) as client:
        batch = await assign(client, 1)
        write_fastq(run, run.output_dir / batch["job_output_dir"], batch["batch"])
        await complete(client, batch["jobid"])
        deadline = time.monotonic() + 5
        while (status := (await client.get("/status")).json())["phase"] != "complete":
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.02)
        await every_route_answers(client)
        beat = (await client.get("/heartbeat")).json()
    summary = f"{run.input_dir.parent.resolve()}/final_summary_{SHOWN}.txt"
    assert status["final_summary"] == summary
    assert beat["phase"] == "complete"


async def test_odd_bytes_in_the_run_folders_path_reach_no_reply_raw(tmp_path: Path) -> None:
    root = tmp_path / os.fsdecode(LATIN1)
    odd = Run(root / "input", root / "output")
    odd.input_dir.mkdir(parents=True)
    odd.add_many(3)
    shown_root = f"{tmp_path.resolve()}/{SHOWN}"
    async with serving(Manager(odd.settings())) as client:
        batch = await assign(client, 1)
        status = (await client.get("/status")).json()
        await every_route_answers(client)
        root.rename(tmp_path / "unmounted")  # the share goes away under the manager
        refused = await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": 1})
        beat = await client.get("/heartbeat")
        (tmp_path / "unmounted").rename(root)
        await every_route_answers(client)
    folders = (f"{shown_root}/input", f"{shown_root}/output")
    assert (batch["input_dir"], batch["output_dir"]) == folders
    assert (status["input_dir"], status["output_dir"]) == folders
    assert refused.status_code == 503 and "refused a change" in refused.json()["detail"]
    assert beat.status_code == 503
    assert beat.json()["problems"] == [f"INPUT_DIR {shown_root}/input is not a readable folder"]
