"""Restarts of a real ``bcmanager serve`` process: clean and by kill -9 (docs/design.md,
invariants 1, 4, 5, 6)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bcmanager.core.manager import Manager
from bcmanager.http.app import create_app
from bcmanager.lock import AlreadyManaged, RunLock
from bcmanager.paths import RunPaths
from conftest import Run, Server, free_port, serving, tree


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


def test_second_manager_refuses_to_start(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    first = start_server()
    elsewhere = tmp_path / "other_output"
    env = {**first.env, "BCM_OUTPUT_DIR": str(elsewhere), "BCM_PORT": str(free_port())}
    second = serve_until_it_exits(env)
    assert second.returncode == 1
    assert first.process is not None
    assert f"pid {first.process.pid}" in second.stderr
    assert f"127.0.0.1:{first.port}" in second.stderr
    assert not elsewhere.exists()  # refused before it made anything
    assert first.get("/heartbeat").status_code == 200


def test_second_manager_on_the_same_output_dir_refuses_and_changes_nothing(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Two runs, one OUTPUT_DIR: the second manager would set the first one's running output
    aside as unclaimed. It must refuse before it touches either folder."""
    run.add_many(2)
    first = start_server(BCM_REPORT_BACK_PERIOD="30")
    job = assign(first, "gpu1", 1)
    other = Run(tmp_path / "other_run", run.output_dir)
    other.input_dir.mkdir()
    other.add("other.pod5")
    before = tree(other.input_dir), tree(run.output_dir), tree(run.input_dir)
    env = {**first.env, "BCM_INPUT_DIR": str(other.input_dir), "BCM_PORT": str(free_port())}
    second = serve_until_it_exits(env)
    assert second.returncode == 1
    [line] = second.stderr.strip().splitlines()
    assert first.process is not None
    assert str(run.output_dir) in line and "already managed" in line
    assert f"pid {first.process.pid} on {socket.gethostname()}" in line
    assert re.search(rf"serving http://127\.0\.0\.1:{first.port}, since \d{{4}}-\d\d-\d\dT", line)
    assert (tree(other.input_dir), tree(run.output_dir), tree(run.input_dir)) == before
    assert first.get("/keepalive", job_id=job["jobid"], job_state="PROCESSING").json() == {
        "late": False
    }


async def test_the_app_takes_both_locks_itself(run: Run) -> None:
    """Without locks passed in (the demo, the tests), the app's start-up takes the same two."""
    paths = RunPaths(run.input_dir.resolve(), run.output_dir.resolve())
    run.output_dir.mkdir()
    with RunLock.acquire(paths.output_lock_file, "http://127.0.0.1:1"):
        app = create_app(run.settings())
        with pytest.raises(AlreadyManaged, match=f"pid {os.getpid()}"):
            async with app.router.lifespan_context(app):
                pass
        assert RunLock.holder(paths.lock_file) is None  # nothing taken, or given back
    async with serving(Manager(run.settings())):
        assert RunLock.holder(paths.lock_file) is not None
        assert RunLock.holder(paths.output_lock_file) is not None
    assert RunLock.holder(paths.output_lock_file) is None


def same_folder(run: Run) -> tuple[Path, Path]:
    return run.input_dir, run.input_dir


def same_folder_through_a_symlink(run: Run) -> tuple[Path, Path]:
    alias = run.input_dir.with_name("alias")
    alias.symlink_to(run.input_dir)
    return run.input_dir, alias


def output_inside_input(run: Run) -> tuple[Path, Path]:
    return run.input_dir, run.input_dir / "basecalled"


def input_inside_output(run: Run) -> tuple[Path, Path]:
    (run.output_dir / "pod5").mkdir(parents=True)
    return run.output_dir / "pod5", run.output_dir


def input_missing(run: Run) -> tuple[Path, Path]:
    return run.input_dir.with_name("nowhere"), run.output_dir


def input_is_a_file(run: Run) -> tuple[Path, Path]:
    return run.add("a.pod5"), run.output_dir


def output_is_a_file(run: Run) -> tuple[Path, Path]:
    run.output_dir.write_text("not a folder")
    return run.input_dir, run.output_dir


def output_cannot_be_created(run: Run) -> tuple[Path, Path]:
    run.output_dir.write_text("not a folder")
    return run.input_dir, run.output_dir / "fastq"


def input_read_only(run: Run) -> tuple[Path, Path]:
    run.input_dir.chmod(0o555)
    return run.input_dir, run.output_dir


def pass_is_a_file(run: Run) -> tuple[Path, Path]:
    run.output_dir.mkdir()
    (run.output_dir / "pass").write_text("not a folder")
    return run.input_dir, run.output_dir


SAME = "INPUT_DIR and OUTPUT_DIR are the same folder, {input}"
ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
UNUSABLE = [
    pytest.param(folders, words, marks=marks, id=folders.__name__)
    for folders, words, marks in [
        (same_folder, SAME, ()),
        (same_folder_through_a_symlink, SAME, ()),
        (output_inside_input, "OUTPUT_DIR {output} is inside INPUT_DIR {input}", ()),
        (input_inside_output, "INPUT_DIR {input} is inside OUTPUT_DIR {output}", ()),
        (input_missing, "INPUT_DIR {input} does not exist", ()),
        (input_is_a_file, "INPUT_DIR {input} is not a folder", ()),
        (input_read_only, "INPUT_DIR {input} is not readable and writable by this user", ROOT),
        (output_is_a_file, "OUTPUT_DIR {output} is not a folder", ()),
        (output_cannot_be_created, "OUTPUT_DIR {output} cannot be created: Not a directory", ()),
        (pass_is_a_file, "OUTPUT_DIR {output}/pass is not a folder", ()),
    ]
]


@pytest.mark.parametrize(("folders", "words"), UNUSABLE)
def test_unusable_or_overlapping_folders_stop_start_up_with_one_line(
    run: Run, tmp_path: Path, folders: Callable[[Run], tuple[Path, Path]], words: str
) -> None:
    input_dir, output_dir = folders(run)
    before = tree(tmp_path)
    env = {
        **os.environ,
        "BCM_INPUT_DIR": str(input_dir),
        "BCM_OUTPUT_DIR": str(output_dir),
        "BCM_PORT": str(free_port()),
    }
    result = serve_until_it_exits(env)
    assert result.returncode == 2
    expected = words.format(input=input_dir.resolve(), output=output_dir.resolve())
    [line] = result.stderr.splitlines()
    assert line.startswith(f"bcmanager: {expected}")
    assert tree(tmp_path) == before


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
