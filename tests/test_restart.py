"""Restarts of a real ``bcmanager serve`` process: clean and by kill -9 (docs/design.md,
invariants 1, 4, 5, 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from bcmanager.manager import Manager
from conftest import Run, Server, free_port, serving


def assign(server: Server, engine: str, size: int) -> dict:
    reply = server.get("/assignwork", engineid=engine, batchsize=size)
    assert reply.status_code == 200, reply.text
    body: dict = reply.json()
    return body


@pytest.mark.parametrize("how", ["clean", "kill -9"])
def test_restart_keeps_every_state(run: Run, start_server: Callable[..., Server], how: str) -> None:
    names = run.add_many(10)
    server = start_server(BCM_REPORT_BACK_PERIOD="30")
    done = assign(server, "gpu1", 2)
    run.basecall(done["job_output_dir"], done["batch"])
    assert server.get("/completed", job_id=done["jobid"], job_state="DONE").json() == {"ok": True}
    failed = assign(server, "gpu2", 2)
    leased = assign(server, "gpu3", 2)
    half = assign(server, "gpu4", 2)
    assert server.get("/completed", job_id=failed["jobid"], job_state="FAILED").status_code == 200
    run.basecall(half["job_output_dir"], half["batch"])
    building = run.input_dir / ".bcm-tmp-ASSIGNED_77_gpu5"
    building.mkdir()
    (building / names[8]).symlink_to(f"../{names[8]}")
    if how == "clean":
        server.stop()
    else:
        server.kill()
    # What a crash right after the commit of a completion leaves: DONE_ renamed, output not moved.
    os.rename(run.input_dir / half["job_input_dir"], run.input_dir / f"DONE_{half['jobid']}_gpu4")

    server.start()
    status = server.get("/status").json()
    # The failed attempt's two files are pending, to be retried in halves.
    assert status["files"] == {
        "waiting": 0,
        "pending": 4,
        "leased": 2,
        "done": 4,
        "failed": 0,
        "missing": 0,
    }
    assert [job["jobid"] for job in status["jobs"]] == [leased["jobid"]]
    assert 25 < status["jobs"][0]["seconds_left"] <= 30
    keep = server.get("/keepalive", job_id=leased["jobid"], job_state="PROCESSING")
    assert keep.json() == {"late": False}
    # The failed batch's halves go first, each alone; then only never-leased files are
    # offered: nothing done or leased comes back.
    retries = [assign(server, "gpu6", 10)["batch"] for _ in range(2)]
    assert retries == [[name] for name in failed["batch"]]
    offered = assign(server, "gpu6", 10)
    assert offered["batch"] == names[8:]
    # The interrupted completion was rolled forward, and a retry of it changes nothing.
    pass_dir = sorted(os.listdir(run.output_dir / "pass"))
    expected = [
        f"job_id_{job['jobid']}_{n[:-5]}.fastq" for job in (done, half) for n in job["batch"]
    ]
    assert pass_dir == sorted(expected)
    assert (run.output_dir / f"LOGOUTPUT_{half['jobid']}_gpu4").is_dir()
    assert not (run.output_dir / half["job_output_dir"]).exists()
    for job, state in ((half, "DONE"), (done, "DONE"), (failed, "FAILED")):
        assert server.get("/completed", job_id=job["jobid"], job_state=state).json() == {"ok": True}
    assert sorted(os.listdir(run.output_dir / "pass")) == pass_dir
    assert not building.exists()
    # The adopted job completes normally.
    run.basecall(leased["job_output_dir"], leased["batch"])
    assert server.get("/completed", job_id=leased["jobid"], job_state="DONE").status_code == 200
    assert len(os.listdir(run.output_dir / "pass")) == 6


def test_dead_engine_work_comes_back_one_period_after_restart(
    run: Run, start_server: Callable[..., Server]
) -> None:
    names = run.add_many(2)
    server = start_server(BCM_REPORT_BACK_PERIOD="1")
    job = assign(server, "gpu1", 2)
    server.kill()
    server.start()
    assert server.get("/status").json()["files"]["leased"] == 2
    for _ in range(100):
        if server.get("/status").json()["files"]["pending"] == 2:
            break
        time.sleep(0.05)
    assert assign(server, "gpu2", 2)["batch"] == names
    assert server.get("/completed", job_id=job["jobid"], job_state="DONE").status_code == 409


def serve_until_it_exits(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``bcmanager serve`` expected to refuse to start: its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "bcmanager", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_second_manager_refuses_to_start(run: Run, start_server: Callable[..., Server]) -> None:
    first = start_server()
    env = {**first.env, "BCM_PORT": str(free_port())}
    second = serve_until_it_exits(env)
    assert second.returncode == 1
    assert first.process is not None
    assert f"pid {first.process.pid}" in second.stderr
    assert f"127.0.0.1:{first.port}" in second.stderr
    assert first.get("/heartbeat").status_code == 200


def test_invalid_setting_stops_start_up_with_one_line(run: Run) -> None:
    env = {
        **os.environ,
        "BCM_INPUT_DIR": str(run.input_dir),
        "BCM_OUTPUT_DIR": str(run.output_dir),
        "BCM_REPORT_BACK_PERIOD": "soon",
    }
    result = serve_until_it_exits(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BCM_REPORT_BACK_PERIOD" in lines[0] and "soon" in lines[0]


async def test_engine_named_like_a_raw_file_keeps_its_lease_over_a_restart(run: Run) -> None:
    run.add_many(3)
    async with serving(Manager(run.settings())) as client:
        params = {"engineid": "node7.pod5", "batchsize": 2}
        batch = (await client.get("/assignwork", params=params)).json()
    async with serving(Manager(run.settings())) as client:
        status = (await client.get("/status")).json()
        keep = await client.get(
            "/keepalive", params={"job_id": batch["jobid"], "job_state": "PROCESSING"}
        )
    assert keep.json() == {"late": False}
    assert status["files"] == {
        "waiting": 0,
        "pending": 1,
        "leased": 2,
        "done": 0,
        "failed": 0,
        "missing": 0,
    }
