"""A root of runs under what operators and the operating system do to it: a run deleted while it
is served, more folders than the kernel lets one process watch, the commands an operator runs on
a root (retry, check), an OPERATOR.log that cannot be written, and a completion command that
hangs. Where the behaviour crosses a process, a real ``bcmanager serve`` runs it; the runs are
laid out as MinKNOW lays them out, with real POD5 files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bcmanager.cli import main
from bcmanager.facility.facility import Facility
from bcmanager.http.app import create_app
from bcmanager.settings import Settings
from conftest import Run, Server, minknow_run, wait_for

BCM = [sys.executable, "-m", "bcmanager"]


def write_summary(folder: Path) -> None:
    """MinKNOW's final summary: the run stopped sequencing."""
    (folder / "final_summary_FAX00000_0123abcd_89abcdef.txt").write_text("instrument=X1\n")


def listed_runs(server: Server) -> list[str]:
    return [entry["path"] for entry in server.get("/runs").json()["runs"]]


def drain_server(server: Server, run: Run, headers: dict[str, str] | None = None) -> None:
    """Basecall every batch the real manager offers until it offers none."""
    for _ in range(50):
        batch = httpx.get(
            f"{server.url}/assignwork",
            params={"engineid": "gpu1", "batchsize": 10},
            headers=headers,
            timeout=10,
        ).json()
        if not batch["batch"]:
            return
        run.basecall(batch["job_output_dir"], batch["batch"])
        done = httpx.get(
            f"{server.url}/completed",
            params={"job_id": batch["jobid"], "job_state": "DONE"},
            headers=headers,
            timeout=10,
        )
        assert done.json() == {"ok": True}, done.text
    raise AssertionError("the runs never drained")


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Facility]]:
    """The app in-process, started and stopped around a client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        facility: Facility = app.state.facility
        deadline = time.monotonic() + 10
        while not facility.ready:
            assert time.monotonic() < deadline, "the first scans did not end"
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bcm") as client:
            yield client, facility


async def assign(client: httpx.AsyncClient, size: int = 10) -> dict[str, Any]:
    reply = await client.get("/assignwork", params={"engineid": "gpu1", "batchsize": size})
    assert reply.status_code == 200, reply.text
    batch: dict[str, Any] = reply.json()
    return batch


async def complete(client: httpx.AsyncClient, jobid: str, state: str = "DONE") -> None:
    reply = await client.get("/completed", params={"job_id": jobid, "job_state": state})
    assert reply.json() == {"ok": True}, reply.text


async def drain(client: httpx.AsyncClient, run: Run) -> None:
    for _ in range(50):
        batch = await assign(client)
        if not batch["batch"]:
            return
        run.basecall(batch["job_output_dir"], batch["batch"])
        await complete(client, batch["jobid"])
    raise AssertionError("the runs never drained")


async def quarantine_one(client: httpx.AsyncClient, settings_run: str | None = None) -> str:
    """Fail one file alone (a manager with BCM_QUARANTINE_ATTEMPTS=1 quarantines it at
    once); its path as the manager names it."""
    batch = await assign(client, size=1)
    if settings_run is not None:
        assert batch["run_path"] == settings_run
    await complete(client, batch["jobid"], "FAILED")
    [name] = batch["batch"]
    raw_folder = Path(batch["job_input_dir"]).parent.as_posix()
    return name if raw_folder == "." else f"{raw_folder}/{name}"


# -- 1. a run deleted while served -------------------------------------------------------------


@pytest.mark.parametrize("seen_by", ["events", "rescan"])
def test_a_run_deleted_while_served_is_dropped_in_one_line_and_holds_nothing(
    run: Run, start_server: Callable[..., Server], seen_by: str
) -> None:
    """An operator deletes a whole run (``rm -rf`` of its folder) while a real manager serves
    it and another: the run is dropped with one line of the log, /heartbeat answers 200 the
    whole time, and the facility's phase ends with the run that is left. So it goes whether
    the watcher's events tell, or the rescan (a network filesystem: no events)."""
    kept = minknow_run(run, "expA", "FAX11111")
    gone = minknow_run(run, "expB", "FAX22222", ("pod5_pass", "pod5_fail"))
    write_summary(run.input_dir / kept)
    polling = "true" if seen_by == "rescan" else "false"
    server = start_server(BCM_RESCAN_INTERVAL="0.3", BCM_FORCE_POLLING=polling)
    assert sorted(listed_runs(server)) == sorted([kept, gone])
    logged = len(server.log.read_text().splitlines())

    shutil.rmtree(run.input_dir / gone)
    deadline = time.monotonic() + 2.0  # the watcher's events, then several rescans
    while time.monotonic() < deadline:
        beat = server.get("/heartbeat")
        assert beat.status_code == 200 and beat.json()["problems"] == [], beat.text
        time.sleep(0.05)
    assert listed_runs(server) == [kept]
    lines = server.log.read_text().splitlines()[logged:]
    assert len(lines) == 1 and f"run gone run={gone} " in lines[0], lines

    drain_server(server, run)
    wait_for(lambda: server.get("/heartbeat").json()["phase"] == "complete", 10, "the end")
    assert server.get("/heartbeat").status_code == 200


# -- 2. more folders than the kernel lets the manager watch ------------------------------------


def in_user_namespace(watches: int) -> list[str]:
    """A command prefix that runs the rest of its command line in a user namespace of its own,
    whose inotify watch limit (``/proc/sys/user/max_inotify_watches``, counted per user
    namespace) is ``watches``. Its root may set that limit; the host's stays as it is."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    limit = f'echo {watches} > /proc/sys/user/max_inotify_watches && exec "$@"'
    prefix = ["unshare", "--user", "--map-root-user", "sh", "-c", limit, "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace with a watch limit: {probe.stderr.strip()}")
    return prefix


def test_beyond_the_watch_limit_the_manager_says_so_once_and_rescans_the_rest(
    run: Run, tmp_path: Path
) -> None:
    """A root of 25 folders (6 runs) under a kernel that lets the manager watch 4. The limit is
    a real one, lowered for the manager alone: it runs in a user namespace of its own, whose
    inotify watch limit its root may set (the host's global /proc/sys/fs/inotify limit is never
    touched). The watcher cannot watch every folder: the manager says so in one line, keeps
    serving (/heartbeat 200), and a new file in a raw folder it does not watch (it watches
    three raw folders, the first by name) and a new run at the top are found by the rescan."""
    prefix = in_user_namespace(4)
    paths = [minknow_run(run, f"exp{index}", f"FAX{index:05d}") for index in range(6)]
    server = Server(run, tmp_path / "serve.log", BCM_RESCAN_INTERVAL="0.3")
    server.prefix = prefix
    try:
        server.start()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            beat = server.get("/heartbeat")
            assert beat.status_code == 200 and beat.json()["problems"] == [], beat.text
            time.sleep(0.1)
        said = [line for line in server.log.read_text().splitlines() if "cannot watch" in line]
        assert len(said) == 1, server.log.read_text()
        assert "BCM_RESCAN_INTERVAL" in said[0]

        run.add(f"{paths[-1]}/pod5/late.pod5", 1)
        minknow_run(run, "expNew", "FAX99999", files=1)
        wait_for(lambda: server.get("/status").json()["files"]["pending"] == 14, 10, "rescan")
        assert server.get("/heartbeat").status_code == 200
    finally:
        server.stop()


# -- 3. an operator's commands on a root -------------------------------------------------------


async def test_retry_on_a_stopped_managers_root_sends_each_runs_files_back(
    run: Run, tmp_path: Path
) -> None:
    """Two runs, each with a quarantined file, one of them complete and sealed; the manager
    stops. ``bcmanager retry`` on the root finds the quarantined files in every run's raw
    folders, sends them back run by run (the sealed run unsealed), records it in OPERATOR.log,
    and the next start offers both."""
    sealed = minknow_run(run, "expA", "FAX11111")
    live = minknow_run(run, "expB", "FAX22222", ("pod5_pass", "pod5_fail"))
    write_summary(run.input_dir / sealed)
    settings = run.settings(quarantine_attempts=1, rescan_interval=0.2)
    quarantined = []
    async with serving(settings) as (client, facility):
        for mine, other in ((sealed, live), (live, sealed)):
            await client.post("/runs/pause", json={"run": other})
            quarantined.append(await quarantine_one(client, mine))
            await client.post("/runs/resume", json={"run": other})
        await drain(client, run)
        seal = run.output_dir / sealed / "bcm-run.json"
        deadline = time.monotonic() + 10
        while not seal.exists():
            assert time.monotonic() < deadline, "the complete run was never sealed"
            await asyncio.sleep(0.05)
        assert facility.status().files.failed == 2

    env = {key: value for key, value in os.environ.items() if not key.startswith("BCM_")}
    shown = subprocess.run(
        [*BCM, "retry", "--input-dir", str(run.input_dir), "--output-dir", str(run.output_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "2 file(s) sent back; the next start of the manager offers them"
    assert lines[1:] == [
        f"run {sealed}: 1 file(s)",
        f"  {quarantined[0]}",
        f"run {live}: 1 file(s)",
        f"  {quarantined[1]}",
    ]
    assert not seal.exists(), "a run an operator sent files back in is no longer sealed"
    record = json.loads((run.input_dir / "OPERATOR.log").read_text().splitlines()[-1])
    assert (record["token"], record["asked"], record["files"]) == ("local", None, quarantined)

    async with serving(settings) as (client, facility):
        assert facility.status().files.failed == 0
        offered = [(await assign(client, size=1))["batch"][0] for _ in range(2)]
    assert sorted(offered) == sorted(path.rpartition("/")[2] for path in quarantined)


async def test_retry_between_a_runs_deletion_and_its_drop_sends_the_other_runs_files_back(
    run: Run,
) -> None:
    """An operator deletes a run, and sends files back before the watcher or the rescan has
    dropped it: the gone run has nothing to send back, and the others' files go back."""
    kept = minknow_run(run, "expA", "FAX11111")
    gone = minknow_run(run, "expB", "FAX22222")
    settings = run.settings(quarantine_attempts=1, rescan_interval=60, force_polling=True)
    async with serving(settings) as (client, facility):
        await client.post("/runs/pause", json={"run": gone})
        quarantined = await quarantine_one(client, kept)
        shutil.rmtree(run.input_dir / gone.split("/")[0])
        reply = await client.post("/retry")
        assert reply.status_code == 200, reply.text
        assert reply.json()["retried"] == [quarantined]
        assert facility.status(kept).files.failed == 0


async def test_an_engine_asking_as_a_run_goes_gets_another_runs_batch(run: Run) -> None:
    """The scheduler's choice is a run whose folder an operator just deleted (the watcher or
    the rescan has not dropped it yet): the engine gets a batch of another run, not a 503."""
    gone = minknow_run(run, "expA", "FAX11111")  # its files are older: it goes first
    kept = minknow_run(run, "expB", "FAX22222")
    settings = run.settings(rescan_interval=60, force_polling=True)
    async with serving(settings) as (client, _):
        shutil.rmtree(run.input_dir / gone.split("/")[0])
        batch = await assign(client, size=1)
        assert batch["run_path"] == kept


async def test_a_done_as_its_run_moves_is_refused_as_late_not_503(run: Run) -> None:
    """An engine reports DONE just after an operator moved its run, before the watcher or the
    rescan saw the move: 409, as for a late job (the job is given back once the move is
    followed, and its files go to the next engine from the new place), never a 5xx."""
    path = minknow_run(run, "expA", "FAX11111")
    settings = run.settings(rescan_interval=60, force_polling=True)
    async with serving(settings) as (client, _):
        batch = await assign(client, size=1)
        run.basecall(batch["job_output_dir"], batch["batch"])
        moved = run.input_dir / "expA" / "moved" / path.rpartition("/")[2]
        moved.parent.mkdir()
        (run.input_dir / path).rename(moved)
        reply = await client.get(
            "/completed", params={"job_id": batch["jobid"], "job_state": "DONE"}
        )
        assert reply.status_code == 409, reply.text


def test_check_on_a_root_with_no_run_yet_says_so_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MinKNOW made the experiment's folders, no POD5 file is written yet, no manager ran."""
    (tmp_path / "root" / "exp" / "sample").mkdir(parents=True)
    code = main(["check", "--input", str(tmp_path / "root"), "--output", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    assert "no run yet" in out


# -- 4. operator changes are recorded before they take effect ----------------------------------


@pytest.mark.parametrize("layout", ["root", "one run"])
async def test_an_operator_change_that_cannot_be_recorded_is_not_made(
    run: Run, layout: str
) -> None:
    """OPERATOR.log cannot be written (an operator made a folder of that name): a retry, a
    pause and a priority are each refused with 503 and change nothing, in memory or on disk;
    once the log can be written, they are recorded and made."""
    if layout == "root":
        path = minknow_run(run, "expA", "FAX11111")
    else:
        path = "."
        run.add_many(2)
    async with serving(run.settings(quarantine_attempts=1)) as (client, facility):
        bad = await quarantine_one(client)
        log = run.input_dir / "OPERATOR.log"
        log.mkdir()

        for route, body in (
            ("/retry", {"files": None}),
            ("/runs/pause", {"run": path}),
            ("/runs/priority", {"run": path, "priority": 7}),
        ):
            refused = await client.post(route, json=body)
            assert refused.status_code == 503, (route, refused.text)
            assert "nothing changed" in refused.json()["detail"]
        [entry] = (await client.get("/runs")).json()["runs"]
        assert (entry["paused"], entry["priority"], entry["files"]["failed"]) == (False, 0, 1)
        assert not list(run.input_dir.rglob("EXCUSED_*")), "the retry changed the folders"

        log.rmdir()
        sent = await client.post("/retry", json={"files": None})
        assert sent.status_code == 200 and sent.json() == {"retried": [bad]}
        paused = await client.post("/runs/pause", json={"run": path})
        assert paused.status_code == 200 and paused.json()["paused"] is True
        assert facility.run(path).paused
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["action"], line["files"]) for line in actions] == [
        ("retry", [bad]),
        ("pause", []),
    ]


# -- 5. a completion command that hangs --------------------------------------------------------

HANGING = """\
import json, os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(sys.argv[1] + ".tmp", "w") as out:
    json.dump({"pids": [os.getpid(), child.pid], "env": dict(os.environ)}, out)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""
SECRETS = {
    "BCM_API_TOKEN": "engine-secret-1",
    "BCM_OPERATOR_TOKEN": "operator-secret-2",
    "BCM_READ_TOKEN": "read-secret-3",
}


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie that nobody reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def start_hanging_command(
    run: Run, tmp_path: Path, start_server: Callable[..., Server], **env: str
) -> tuple[Server, dict[str, Any], Path]:
    """A complete run whose completion command starts a child and hangs, both in the command's
    process group; the server, what the command wrote (its pids and environment), and the
    run's output folder."""
    path = minknow_run(run, "expA", "FAX11111", files=1)
    write_summary(run.input_dir / path)
    script, wrote = tmp_path / "hang.py", tmp_path / "ran.json"
    script.write_text(HANGING)
    server = start_server(
        BCM_ON_RUN_COMPLETE=f"{sys.executable} {script} {wrote}",
        SITE_SETTING="kept",
        **SECRETS,
        **env,
    )
    drain_server(server, run, {"Authorization": f"Bearer {SECRETS['BCM_API_TOKEN']}"})
    wait_for(wrote.exists, 15, "the completion command")
    return server, json.loads(wrote.read_text()), run.output_dir / path


def test_a_completion_command_that_runs_over_is_killed_with_its_group_and_sees_no_token(
    run: Run, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """BCM_ON_RUN_COMPLETE_TIMEOUT bounds the command: its process group (it, and the child it
    started) is killed when it runs over, the record says so, and the manager goes on. The
    command's environment is the manager's without its BCM_ settings: no token reaches it."""
    server, wrote, output = start_hanging_command(
        run, tmp_path, start_server, BCM_ON_RUN_COMPLETE_TIMEOUT="1"
    )
    try:
        assert wrote["env"]["SITE_SETTING"] == "kept"
        assert [name for name in wrote["env"] if name.startswith("BCM_")] == []
        assert not set(SECRETS.values()) & set(wrote["env"].values())
        wait_for(lambda: not any(map(alive, wrote["pids"])), 15, "the command's group killed")
        record = json.loads((output / "bcm-run-complete.json").read_text())
        assert "timed out after 1" in str(record["exit_status"]), record
        assert server.get("/heartbeat").status_code == 200
    finally:
        for pid in wrote["pids"]:
            if alive(pid):
                os.kill(pid, 9)


def test_a_manager_that_stops_kills_its_completion_command_with_its_group(
    run: Run, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """A manager stopped (SIGTERM, as systemd and Kubernetes stop it) while a completion command
    runs takes the command and its child with it; the record keeps no exit status, so the next
    manager says so and does not run it again."""
    server, wrote, output = start_hanging_command(run, tmp_path, start_server)
    try:
        assert all(map(alive, wrote["pids"]))
        server.stop()
        wait_for(lambda: not any(map(alive, wrote["pids"])), 15, "the command's group killed")
        assert "exit_status" not in json.loads((output / "bcm-run-complete.json").read_text())
    finally:
        for pid in wrote["pids"]:
            if alive(pid):
                os.kill(pid, 9)


# -- 6. a run sealed by the running manager ----------------------------------------------------


async def test_runs_says_sealed_for_a_run_the_running_manager_sealed(run: Run) -> None:
    """A run the running manager completed and sealed is listed as sealed, as it is after a
    restart; a new raw file, which the watcher tells of, unseals it, in the list too."""
    path = minknow_run(run, "expA", "FAX11111")
    write_summary(run.input_dir / path)
    async with serving(run.settings(rescan_interval=60)) as (client, _):
        await drain(client, run)

        async def entry() -> dict[str, Any]:
            entries: list[dict[str, Any]] = (await client.get("/runs")).json()["runs"]
            return entries[0]

        deadline = time.monotonic() + 10
        while not (await entry())["sealed"]:
            assert time.monotonic() < deadline, f"never listed as sealed: {await entry()}"
            await asyncio.sleep(0.05)
        assert (await entry())["phase"] == "complete"
        assert (run.output_dir / path / "bcm-run.json").exists()

        run.add(f"{path}/pod5/late.pod5", 1)
        deadline = time.monotonic() + 10
        while (await entry())["files"]["pending"] != 1:
            assert time.monotonic() < deadline, "the late file was never seen"
            await asyncio.sleep(0.05)
        assert (await entry())["sealed"] is False
