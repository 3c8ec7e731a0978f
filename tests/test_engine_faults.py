"""Engines that misbehave (docs/design.md, invariants 2 and 4): one dies mid-job, one comes back
after its lease ran out, one loses the reply to its completion, and 500 send keepalives at once.
In every case each raw file is basecalled into pass/ exactly once."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bcmanager.cli.check import inspect
from bcmanager.core.jobs import FileState
from bcmanager.core.manager import Manager
from bcmanager.paths import RunPaths
from bcmanager.sim.basecaller import basecall
from bcmanager.sim.sequencer import pod5_bytes
from conftest import Clock, Run, Server, serving


async def get(client: httpx.AsyncClient, route: str, **params: str | int) -> httpx.Response:
    return await client.get(route, params=params)


async def assign(client: httpx.AsyncClient, engine: str, size: int) -> dict:
    reply = await get(client, "/assignwork", engineid=engine, batchsize=size)
    assert reply.status_code == 200, reply.text
    body: dict = reply.json()
    return body


def work_on(batch: dict) -> None:
    """What an engine does with a batch: the simulated basecaller, one FASTQ per raw file."""
    basecall(
        Path(batch["input_dir"]) / batch["job_input_dir"],
        Path(batch["output_dir"]) / batch["job_output_dir"],
        seconds_per_read=0,
    )


async def until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def merged_reads(run: Run) -> list[str]:
    """Read ids of every FASTQ record in pass/ and fail/."""
    reads = []
    for sub in ("pass", "fail"):
        for path in (run.output_dir / sub).iterdir():
            reads += [line[1:].split()[0] for line in path.read_text().splitlines()[::4]]
    return reads


def all_reads(run: Run) -> list[str]:
    return sorted(read for reads in run.reads.values() for read in reads)


def expired_folder(run: Run, batch: dict) -> Path:
    return run.output_dir / batch["job_output_dir"].replace("TMPOUTPUT_", "EXPIREDOUTPUT_")


async def test_an_engine_that_dies_mid_job_has_its_work_done_by_another(run: Run) -> None:
    for index in range(3):
        run.add(f"raw_{index}.pod5", read_count=3)
    clock = Clock()
    manager = Manager(run.settings(report_back_period=10), clock=clock)
    async with serving(manager) as client:
        dead = await assign(client, "gpu1", 2)
        output = run.output_dir / dead["job_output_dir"]
        (output / "pass").mkdir()
        (output / "pass" / "raw_0.fastq").write_text("@half-done\nA\n+\n!\n")
        clock.now += 11  # gpu1 sends nothing more
        await until(lambda: manager.counts()[FileState.PENDING] == 3)
        heir = await assign(client, "gpu2", 3)
        work_on(heir)
        done = await get(client, "/completed", job_id=heir["jobid"], job_state="DONE")
        late = await get(client, "/keepalive", job_id=dead["jobid"], job_state="PROCESSING")
    assert heir["batch"][:2] == dead["batch"]  # returned work goes out first
    assert done.json() == {"ok": True} and late.json() == {"late": True}
    assert sorted(merged_reads(run)) == all_reads(run)
    assert os.listdir(expired_folder(run, dead) / "pass") == ["raw_0.fastq"]
    assert inspect(manager.paths).ok


async def test_a_late_engine_is_refused_and_its_output_kept_aside(run: Run) -> None:
    for index in range(2):
        run.add(f"raw_{index}.pod5", read_count=2)
    clock = Clock()
    manager = Manager(run.settings(report_back_period=10), clock=clock)
    async with serving(manager) as client:
        slow = await assign(client, "gpu1", 2)
        work_on(slow)
        clock.now += 10  # the lease ran out while gpu1 worked, reaped or not yet
        refused = await get(client, "/completed", job_id=slow["jobid"], job_state="DONE")
        await until(lambda: manager.counts()[FileState.PENDING] == 2)
        heir = await assign(client, "gpu2", 2)
        work_on(heir)
        again = await get(client, "/completed", job_id=slow["jobid"], job_state="DONE")
        done = await get(client, "/completed", job_id=heir["jobid"], job_state="DONE")
        after = await get(client, "/completed", job_id=slow["jobid"], job_state="DONE")
    for reply in (refused, again, after):
        assert reply.status_code == 409
        assert reply.headers["content-type"] == "application/json"
        assert "lost its lease" in reply.json()["detail"]
    assert done.json() == {"ok": True}
    assert sorted(os.listdir(run.output_dir / "pass")) == [
        f"job_id_{heir['jobid']}_raw_{index}.fastq" for index in range(2)
    ]
    assert sorted(merged_reads(run)) == all_reads(run)
    kept = expired_folder(run, slow) / "pass"
    assert sorted(os.listdir(kept)) == ["raw_0.fastq", "raw_1.fastq"]
    assert inspect(manager.paths).ok


def send_and_hang_up(server: Server, route: str) -> None:
    """Send a request and close the connection without reading a byte of the reply."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET {route} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_RDWR)


def test_a_completion_whose_reply_is_lost_is_retried_and_merged_once(
    run: Run, start_server: Callable[..., Server]
) -> None:
    for index in range(4):
        run.add(f"raw_{index}.pod5", read_count=2)
    server = start_server()
    first = server.get("/assignwork", engineid="gpu1", batchsize=2).json()
    second = server.get("/assignwork", engineid="gpu2", batchsize=2).json()
    for batch in (first, second):
        work_on(batch)
    # 1: the reply is lost on the network; the engine retries.
    send_and_hang_up(server, f"/completed?job_id={first['jobid']}&job_state=DONE")
    deadline = time.monotonic() + 5
    while server.get("/status").json()["files"]["done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    retried = server.get("/completed", job_id=first["jobid"], job_state="DONE")
    # 2: the manager dies right after it answered; the engine retries with the next one.
    answered = server.get("/completed", job_id=second["jobid"], job_state="DONE")
    server.kill()
    server.start()
    after_restart = server.get("/completed", job_id=second["jobid"], job_state="DONE")
    server.stop()
    assert retried.json() == answered.json() == after_restart.json() == {"ok": True}
    assert sorted(os.listdir(run.output_dir / "pass")) == sorted(
        f"job_id_{batch['jobid']}_raw_{index}.fastq"
        for batch, indexes in ((first, (0, 1)), (second, (2, 3)))
        for index in indexes
    )
    assert sorted(merged_reads(run)) == all_reads(run)
    assert inspect(RunPaths(run.input_dir, run.output_dir)).ok


def test_a_keepalive_storm_from_500_engines_keeps_every_lease(
    run: Run, start_server: Callable[..., Server]
) -> None:
    engines, rounds = 500, 3
    data, _ = pod5_bytes("template.pod5", 1)  # one real POD5 file, copied under 500 names
    names = [f"raw_{index:03d}.pod5" for index in range(engines)]
    for name in names:
        (run.input_dir / name).write_bytes(data)
    server = start_server(BCM_REPORT_BACK_PERIOD="60")
    # A fresh connection per call: a reused one can race the server closing it when idle.
    limits = httpx.Limits(max_connections=engines, max_keepalive_connections=0)

    async def storm() -> tuple[list[dict], list[httpx.Response], float, float, dict]:
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            batches = await asyncio.gather(
                *(assign(client, f"gpu{index:03d}", 1) for index in range(engines))
            )
            started = time.monotonic()
            replies: list[httpx.Response] = []
            slowest_heartbeat = 0.0
            for _ in range(rounds):
                calls = [
                    get(client, "/keepalive", job_id=batch["jobid"], job_state="PROCESSING")
                    for batch in batches
                ]
                before = time.monotonic()
                heartbeat, *answers = await asyncio.gather(get(client, "/heartbeat"), *calls)
                assert heartbeat.status_code == 200
                slowest_heartbeat = max(slowest_heartbeat, time.monotonic() - before)
                replies += answers
            took = time.monotonic() - started
            held = (await get(client, "/status")).json()
            ends = await asyncio.gather(
                *(
                    get(client, "/completed", job_id=b["jobid"], job_state="STOPPED")
                    for b in batches
                )
            )
            assert all(end.json() == {"ok": True} for end in ends)
            return list(batches), replies, took, slowest_heartbeat, held

    batches, replies, took, slowest_heartbeat, held = asyncio.run(storm())
    status = server.get("/status").json()
    print(f"{engines * rounds} keepalives from {engines} engines in {took:.2f} s")
    assert sorted(name for batch in batches for name in batch["batch"]) == names
    assert held["files"]["leased"] == engines and len(held["jobs"]) == engines
    assert [reply.json() for reply in replies] == [{"late": False}] * (engines * rounds)
    assert took < 30 and slowest_heartbeat < 15
    assert status["files"]["pending"] == engines and status["jobs"] == []
