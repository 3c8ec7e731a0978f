"""One log line per event, with job id, engine and the run's counts: as plain text by default and
as JSON lines with BCM_LOG_FORMAT=json."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from bcmanager.core.manager import Manager
from bcmanager.sim.sequencer import write_pod5
from conftest import Run, Server, serving

COUNTS = {"waiting", "pending", "leased", "done", "failed", "missing"}


def events(caplog: pytest.LogCaptureFixture) -> dict[str, list[logging.LogRecord]]:
    found: dict[str, list[logging.LogRecord]] = {}
    for record in caplog.records:
        event = getattr(record, "bcm_event", {}).get("event")
        if event is not None:
            found.setdefault(event, []).append(record)
    return found


async def call(client: httpx.AsyncClient, route: str, **params: Any) -> dict[str, Any]:
    reply: dict[str, Any] = (await client.get(route, params=params)).json()
    return reply


async def test_every_event_is_one_line_with_job_engine_and_counts(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bcmanager")
    run.add_many(8)
    async with serving(Manager(run.settings(report_back_period=1, rescan_interval=0.1))) as client:
        jobs = {}
        for engine in ("gpu1", "gpu2", "gpu3", "gpu4"):
            batch = await call(client, "/assignwork", engineid=engine, batchsize=2)
            jobs[engine] = batch["jobid"]
            run.basecall(batch["job_output_dir"], batch["batch"])
        for engine, state in (("gpu1", "DONE"), ("gpu2", "FAILED"), ("gpu3", "STOPPED")):
            await call(client, "/completed", job_id=jobs[engine], job_state=state)
        write_pod5(run.input_dir / "fresh.pod5", 1)
        (run.input_dir.parent / "final_summary_FAX1_a_b.txt").write_text("")
        deadline = time.monotonic() + 5
        while not {"expired", "arrived", "finished"} <= events(caplog).keys():
            assert time.monotonic() < deadline, sorted(events(caplog))
            await asyncio.sleep(0.05)
        late = await call(client, "/keepalive", job_id=jobs["gpu4"], job_state="PROCESSING")
        assert late == {"late": True}
    found = events(caplog)
    for event, engine in (
        ("done", "gpu1"),
        ("failed", "gpu2"),
        ("released", "gpu3"),
        ("expired", "gpu4"),
        ("late", "gpu4"),
    ):
        [record] = found[event]
        assert record.bcm_event["engine"] == engine  # type: ignore[attr-defined]
        assert record.getMessage().startswith(f"{event} jobid={jobs[engine]} engine={engine}")
    assert len(found["assigned"]) == 4
    [done] = found["done"]
    assert done.bcm_event["files"] == 2  # type: ignore[attr-defined]
    assert done.getMessage().endswith("| waiting=0 pending=0 leased=6 done=2 failed=0 missing=0")
    [arrived] = found["arrived"]
    assert arrived.getMessage().startswith("arrived file=fresh.pod5 bytes=")
    [finished] = found["finished"]
    assert "final_summary_FAX1_a_b.txt" in finished.getMessage()
    for records in found.values():
        for record in records:
            assert set(record.bcm_event["counts"]) == COUNTS  # type: ignore[attr-defined]


def do_one_job(server: Server) -> str:
    batch = server.get("/assignwork", engineid="gpu7", batchsize=2).json()
    server.run.basecall(batch["job_output_dir"], batch["batch"])
    assert server.get("/completed", job_id=batch["jobid"], job_state="DONE").json() == {"ok": True}
    jobid: str = batch["jobid"]
    return jobid


def wait_for_line(server: Server, wanted: Callable[[str], bool]) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        lines = server.log.read_text().splitlines()
        if any(wanted(line) for line in lines):
            return lines
        assert time.monotonic() < deadline, lines[-20:]
        time.sleep(0.05)


def test_serve_logs_plain_text_lines(run: Run, start_server: Callable[..., Server]) -> None:
    run.add_many(3)
    server = start_server()
    jobid = do_one_job(server)
    lines = wait_for_line(server, lambda line: " INFO done " in line)
    [done] = [line for line in lines if " INFO done " in line]
    assert done.endswith(
        f"done jobid={jobid} engine=gpu7 files=2 | "
        "waiting=0 pending=1 leased=0 done=2 failed=0 missing=0"
    )
    assert any("Uvicorn running on" in line for line in lines)


def test_serve_logs_json_lines(run: Run, start_server: Callable[..., Server]) -> None:
    run.add_many(3)
    server = start_server(BCM_LOG_FORMAT="json")
    jobid = do_one_job(server)
    lines = wait_for_line(server, lambda line: '"event": "done"' in line)
    records = [json.loads(line) for line in lines]  # every line, uvicorn's too, is JSON
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert any(record["logger"].startswith("uvicorn") for record in records)
    by_event = {record["event"]: record for record in records if "event" in record}
    assert by_event["assigned"]["jobid"] == by_event["done"]["jobid"] == jobid
    assert by_event["done"]["engine"] == "gpu7" and by_event["done"]["files"] == 2
    assert by_event["done"]["counts"] == {
        "waiting": 0,
        "pending": 1,
        "leased": 0,
        "done": 2,
        "failed": 0,
        "missing": 0,
    }
    assert by_event["ready"]["counts"]["pending"] == 3


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_library_chatter_stays_out_of_the_log(
    run: Run, start_server: Callable[..., Server], log_format: str
) -> None:
    """Files written while the manager watches make watchfiles report changes at INFO; those
    lines, and one per request, would bury the events."""
    server = start_server(BCM_LOG_FORMAT=log_format)
    for index in range(3):  # written in place in steps, as MinKNOW does
        path = run.add(f"late_{index}.pod5")
        body = path.read_bytes()
        path.write_bytes(body[:100])
        time.sleep(0.3)
        path.write_bytes(body)
    lines = wait_for_line(server, lambda line: "late_2.pod5" in line and "arrived" in line)
    do_one_job(server)
    lines = wait_for_line(server, lambda line: " done jobid=" in line or '"event": "done"' in line)
    assert not [line for line in lines if "change" in line and "detected" in line]
    assert not [line for line in lines if "GET /" in line]
    arrived = [line for line in lines if "late_1.pod5" in line]
    assert len(arrived) == 1 and "INFO" in arrived[0]
