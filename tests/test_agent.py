"""The reference agent against a real manager.

Each test starts ``bcmanager serve`` on 127.0.0.1 over real POD5 files in tmp_path and runs the
agent as a process (``bcmanager agent``) or in-process (``Agent``). The basecaller is a small
Python script that is a real process tree: a child and a grandchild that ignores SIGTERM, so the
tests can see that the agent stops a whole process group; or a one-line ``sh -c`` where the test
needs an exit code, a signal or stderr of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bcmanager.agent.basecaller import STDERR_TAIL_BYTES, StderrTee
from bcmanager.agent.cli import settings_from_args
from bcmanager.agent.client import Backoff, BatchReply, resolve_job
from bcmanager.agent.errors import (
    EXIT_CANNOT_RUN,
    EXIT_FAILURES_IN_A_ROW,
    ConfigurationError,
    ProtocolViolation,
)
from bcmanager.agent.loop import Agent
from bcmanager.agent.settings import AgentSettings, render_command, split_template
from bcmanager.cli import build_parser, main
from bcmanager.paths import (
    ATTEMPT_FILE,
    PASS,
    FolderKind,
    final_fastq_name,
    job_folder,
    parse_job_folder,
    raw_stem,
)
from bcmanager.sim.sequencer import write_pod5
from conftest import Run, Server, real_server, wait_for

ENGINE = "gpu-test"

FAKE_BASECALLER = '''\
"""A basecaller stand-in, run as: MODE INPUT_DIR OUTPUT_DIR JOBID WORKDIR.

ok: one FASTQ per raw file (a record per read) into OUTPUT_DIR/pass, exit 0. fail: exit 1,
write nothing.
hang: start a grandchild that ignores SIGTERM, record both pids in WORKDIR, wait for WORKDIR/go,
then do as ok. stubborn: as hang, and ignore SIGTERM too. Every wait ends after 60 s.
sequence: the nth job of the test does as the nth letter of WORKDIR/sequence says: F fail, O ok.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pod5

mode, input_dir, output_dir, jobid, work = sys.argv[1:6]
input_dir, output_dir, work = Path(input_dir), Path(output_dir), Path(work)
go = work / "go"


def record(path, text):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def wait_for_go():
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


if mode == "grandchild":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record(work / f"{jobid}.grandchild.pid", str(os.getpid()))
    wait_for_go()
    sys.exit(0)
record(work / f"{jobid}.argv", json.dumps(sys.argv[1:]))
if mode == "sequence":
    nth = len(list(work.glob("*.argv"))) - 1
    mode = "fail" if (work / "sequence").read_text()[nth] == "F" else "ok"
if mode == "fail":
    sys.exit(1)
if mode in ("hang", "stubborn"):
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen([sys.executable, __file__, "grandchild", *sys.argv[2:]])
    while not (work / f"{jobid}.grandchild.pid").exists():
        time.sleep(0.02)
    record(work / f"{jobid}.child.pid", str(os.getpid()))
    wait_for_go()
(output_dir / "pass").mkdir(exist_ok=True)
for raw in sorted(input_dir.iterdir()):
    if raw.name.endswith(".pod5"):
        fastq = output_dir / "pass" / (raw.name[: -len(".pod5")] + ".fastq")
        with pod5.Reader(raw) as reader:
            fastq.write_text("".join(f"@{read}\\nACGT\\n+\\n!!!!\\n" for read in reader.read_ids))
'''


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie may wait for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def job_folders(root: Path, kind: FolderKind) -> dict[str, list[str]]:
    """jobid -> sorted entries, for each folder of ``kind`` in ``root``."""
    found = {}
    for entry in root.iterdir():
        parsed = parse_job_folder(entry.name)
        if parsed is not None and parsed.kind is kind:
            found[parsed.jobid] = sorted(child.name for child in entry.iterdir())
    return found


def file_counts(server: Server) -> dict[str, int]:
    counts: dict[str, int] = server.get("/status").json()["files"]
    return counts


def final_fastq(root: Path) -> set[str]:
    pass_dir = root / PASS
    return {path.name for path in pass_dir.iterdir()} if pass_dir.is_dir() else set()


def attempt_record(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((folder / ATTEMPT_FILE).read_text())
    return record


def jobids(log: str) -> list[str]:
    """The jobs an agent got, in order, from its log."""
    return re.findall(r"job=([0-9]+) got batch", log)


@dataclass
class AgentProcess:
    """``bcmanager agent`` as a process; its log lines go to a file the test reads."""

    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent is still running:\n{self.text()}") from None


@dataclass
class Bench:
    """One test's run, manager, fake basecaller and the agents started on them."""

    root: Path
    run: Run
    start_server: Callable[..., Server]
    agents: list[AgentProcess]

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def raw_names(self) -> list[str]:
        return sorted(self.run.reads)

    def manager(self, files: int, lease: int) -> Server:
        self.run.add_many(files)
        server = self.start_server(BCM_REPORT_BACK_PERIOD=str(lease))
        wait_for(lambda: file_counts(server)["pending"] == files, 10, f"{files} pending files")
        return server

    def command(self, mode: str) -> str:
        script = [sys.executable, str(self.root / "fake_basecaller.py"), mode]
        return f"{shlex.join(script)} {{input_dir}} {{output_dir}} {{jobid}} {self.work}"

    def agent(self, manager: Server, mode: str, *flags: str) -> AgentProcess:
        return self.agent_running(manager, self.command(mode), *flags)

    def agent_running(self, manager: Server, command: str, *flags: str) -> AgentProcess:
        """An agent whose command template is ``command``."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("BCM_")}
        env["BCM_AGENT_COMMAND"] = command
        log = self.root / f"agent{len(self.agents)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "bcmanager", "agent"),
                    *("--manager", manager.url, "--engine-id", ENGINE),
                    *("--until-empty", "--poll-interval", "0.2", *flags),
                ],
                env=env,
                cwd=self.root,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        agent = AgentProcess(process, log)
        self.agents.append(agent)
        return agent

    def basecaller_pids(self) -> tuple[str, int, int]:
        """The first job's id and the pids of its basecaller and of that one's child."""
        wait_for(lambda: any(self.work.glob("*.child.pid")), 20, "the basecaller to start")
        child_file = next(self.work.glob("*.child.pid"))
        jobid = child_file.name.split(".")[0]
        grandchild = int((self.work / f"{jobid}.grandchild.pid").read_text())
        return jobid, int(child_file.read_text()), grandchild

    def release_everything(self) -> None:
        """Let every basecaller still waiting finish, and kill what is left running."""
        (self.work / "go").touch()
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.kill()
                agent.process.wait(10)
        for pid_file in self.work.glob("*.pid"):
            pid = int(pid_file.read_text())
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def bench(tmp_path: Path, run: Run, start_server: Callable[..., Server]) -> Iterator[Bench]:
    (tmp_path / "work").mkdir()
    (tmp_path / "fake_basecaller.py").write_text(FAKE_BASECALLER)
    bench = Bench(tmp_path, run, start_server, [])
    yield bench
    bench.release_everything()


def test_until_empty_basecalls_every_file_and_exits_0(bench: Bench) -> None:
    manager = bench.manager(files=5, lease=5)
    agent = bench.agent(manager, "ok", "--batch-size", "2")

    assert agent.wait(60) == 0, agent.text()

    done = job_folders(bench.run.input_dir, FolderKind.DONE)
    assert sorted(len(names) for names in done.values()) == [1, 2, 2]
    assert sorted(name for names in done.values() for name in names) == bench.raw_names
    assert final_fastq(bench.run.output_dir) == {
        final_fastq_name(jobid, raw_stem(name) + ".fastq")
        for jobid, names in done.items()
        for name in names
    }
    assert not job_folders(bench.run.input_dir, FolderKind.ASSIGNED)
    assert not job_folders(bench.run.input_dir, FolderKind.FAILED)
    assert file_counts(manager)["done"] == 5
    log = agent.text()
    for jobid in done:
        assert f"job={jobid} completed DONE" in log
        record = attempt_record(
            bench.run.output_dir / job_folder(FolderKind.LOGOUTPUT, jobid, ENGINE)
        )
        assert (record["outcome"], record["exit_code"], record["signal"]) == ("DONE", 0, None)
    assert "no work left, exiting" in log


async def test_a_basecaller_exiting_1_fails_its_job(bench: Bench) -> None:
    """Alone, an engine whose basecaller fails every file: the batch, then each half alone,
    until each file failed BCM_QUARANTINE_ATTEMPTS (3) times and is quarantined."""
    manager = bench.manager(files=2, lease=5)
    settings = AgentSettings(
        manager=manager.url,  # type: ignore[arg-type]
        engine_id=ENGINE,
        command=bench.command("fail"),
        until_empty=True,
        poll_interval=0.2,
        max_failures_in_a_row=0,
    )

    async with httpx.AsyncClient(base_url=manager.url, timeout=5) as client:
        await asyncio.wait_for(Agent(client, settings).run(), 30)

    failed = sorted(
        sorted(files) for files in job_folders(bench.run.input_dir, FolderKind.FAILED).values()
    )
    expected = [bench.raw_names] + [[name] for name in bench.raw_names for _ in range(2)]
    assert failed == sorted(expected)
    quarantined = job_folders(bench.run.input_dir, FolderKind.QUARANTINED)
    assert sorted(quarantined.values()) == [[name] for name in bench.raw_names]
    assert not job_folders(bench.run.input_dir, FolderKind.DONE)
    assert not final_fastq(bench.run.output_dir)
    assert file_counts(manager)["failed"] == 2


def test_a_late_job_loses_its_whole_process_group_and_is_not_completed(bench: Bench) -> None:
    manager = bench.manager(files=2, lease=2)
    agent = bench.agent(manager, "hang", "--stop-grace", "5")
    late_jobid, child, grandchild = bench.basecaller_pids()

    # Freeze the agent (not its basecaller, which has a session of its own) past the lease.
    os.kill(agent.process.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: file_counts(manager)["pending"] == 2, 15, "the lease to run out")
    finally:
        os.kill(agent.process.pid, signal.SIGCONT)

    wait_for(
        lambda: not is_running(child) and not is_running(grandchild),
        10,
        "the basecaller's process group to be killed",
    )
    assert f"job={late_jobid} keepalive late" in agent.text()
    (bench.work / "go").touch()
    assert agent.wait(30) == 0, agent.text()

    done = job_folders(bench.run.input_dir, FolderKind.DONE)
    assert late_jobid not in done
    assert sorted(name for names in done.values() for name in names) == bench.raw_names
    assert not job_folders(bench.run.input_dir, FolderKind.FAILED)
    assert not any(
        name.startswith(f"job_id_{late_jobid}_") for name in final_fastq(bench.run.output_dir)
    )
    assert f"job={late_jobid} completed" not in agent.text()


def test_sigterm_stops_the_group_gives_the_batch_back_and_exits_0(bench: Bench) -> None:
    manager = bench.manager(files=2, lease=30)
    agent = bench.agent(manager, "stubborn", "--stop-grace", "1")
    jobid, child, grandchild = bench.basecaller_pids()

    agent.process.send_signal(signal.SIGTERM)

    assert agent.wait(15) == 0, agent.text()
    assert not is_running(child)
    assert not is_running(grandchild)
    log = agent.text()
    assert f"job={jobid} stopping reason=SIGTERM" in log
    assert f"job={jobid} basecaller ignored SIGTERM, killing" in log
    assert f"job={jobid} completed STOPPED" in log
    # A 30 s lease has not run out: only STOPPED can have made the files pending already.
    counts = file_counts(manager)
    assert (counts["pending"], counts["leased"], counts["done"], counts["failed"]) == (2, 0, 0, 0)
    for kind in (FolderKind.ASSIGNED, FolderKind.DONE, FolderKind.FAILED):
        assert not job_folders(bench.run.input_dir, kind)


def test_a_second_signal_exits_at_once_and_kills_the_group(bench: Bench) -> None:
    manager = bench.manager(files=1, lease=30)
    agent = bench.agent(manager, "stubborn", "--stop-grace", "60")
    jobid, child, grandchild = bench.basecaller_pids()
    agent.process.send_signal(signal.SIGTERM)
    wait_for(lambda: f"job={jobid} stopping basecaller" in agent.text(), 10, "the first stop")

    started = time.monotonic()
    agent.process.send_signal(signal.SIGINT)

    assert agent.wait(5) == 128 + signal.SIGINT
    assert time.monotonic() - started < 5
    wait_for(
        lambda: not is_running(child) and not is_running(grandchild), 5, "the group to be killed"
    )


def test_a_manager_restart_within_the_lease_costs_nothing(bench: Bench) -> None:
    """A keepalive every 10 s, a 20 s lease: at least 10 s for the manager to come back, which
    a busy machine needs (with a 10 s lease the agent gave up before the restart was ready)."""
    manager = bench.manager(files=2, lease=20)
    agent = bench.agent(manager, "hang", "--retry-max-delay", "0.5")
    jobid, child, _ = bench.basecaller_pids()

    manager.kill()
    wait_for(lambda: f"job={jobid} retrying /keepalive" in agent.text(), 15, "a keepalive to fail")
    assert is_running(child)
    manager.start()
    wait_for(
        lambda: f"job={jobid} reached /keepalive again" in agent.text(),
        20,
        "the restarted manager to renew the lease",
    )
    assert is_running(child)
    (bench.work / "go").touch()

    assert agent.wait(30) == 0, agent.text()
    assert job_folders(bench.run.input_dir, FolderKind.DONE) == {jobid: bench.raw_names}
    assert final_fastq(bench.run.output_dir) == {
        final_fastq_name(jobid, raw_stem(name) + ".fastq") for name in bench.raw_names
    }
    assert "dropping job" not in agent.text()


def test_input_and_output_dir_flags_place_the_job_where_this_node_mounts_them(
    bench: Bench,
) -> None:
    manager = bench.manager(files=1, lease=5)
    mount = bench.root / "mnt"
    mount.mkdir()
    (mount / "in").symlink_to(bench.run.input_dir)
    (mount / "out").symlink_to(bench.run.output_dir)
    agent = bench.agent(
        manager, "ok", "--input-dir", str(mount / "in"), "--output-dir", str(mount / "out")
    )

    assert agent.wait(30) == 0, agent.text()
    [argv_file] = bench.work.glob("*.argv")
    jobid = argv_file.name.split(".")[0]
    argv = json.loads(argv_file.read_text())
    assert argv[1:4] == [
        str(mount / "in" / f"ASSIGNED_{jobid}_{ENGINE}"),
        str(mount / "out" / f"TMPOUTPUT_{jobid}_{ENGINE}"),
        jobid,
    ]
    assert list(job_folders(bench.run.input_dir, FolderKind.DONE)) == [jobid]


def test_a_wrong_mount_gives_the_batch_back_and_exits_2(bench: Bench) -> None:
    manager = bench.manager(files=1, lease=30)
    agent = bench.agent(manager, "ok", "--input-dir", str(bench.root / "not-mounted"))

    assert agent.wait(30) == 2, agent.text()
    assert "--input-dir" in agent.text()
    assert file_counts(manager)["pending"] == 1
    assert not list(bench.work.glob("*.argv"))


def assert_given_back(bench: Bench, manager: Server, agent: AgentProcess, files: int) -> str:
    """The agent got one batch and gave it back: all files pending, none failed or leased, no
    FAILED_ or FAILEDOUTPUT_ folder. Returns the job id."""
    log = agent.text()
    [jobid] = jobids(log)
    assert f"job={jobid} completed STOPPED" in log
    counts = file_counts(manager)
    assert (counts["pending"], counts["leased"], counts["failed"]) == (files, 0, 0)
    assert not job_folders(bench.run.input_dir, FolderKind.FAILED)
    assert not job_folders(bench.run.output_dir, FolderKind.FAILEDOUTPUT)
    return jobid


def rendered(bench: Bench, jobid: str, *words: str) -> str:
    """The command a job ran, as the agent logs it: ``words`` then the job's two folders."""
    input_dir = bench.run.input_dir / job_folder(FolderKind.ASSIGNED, jobid, ENGINE)
    output_dir = bench.run.output_dir / job_folder(FolderKind.TMPOUTPUT, jobid, ENGINE)
    return shlex.join([*words, str(input_dir), str(output_dir)])


@pytest.mark.parametrize("problem", ["missing", "not executable"])
def test_a_command_that_cannot_start_gives_the_batch_back_and_exits_3(
    bench: Bench, problem: str
) -> None:
    manager = bench.manager(files=2, lease=30)
    basecaller = bench.root / "dorado-wrapper.sh"
    if problem == "not executable":
        basecaller.write_text("#!/bin/sh\nexit 0\n")
        basecaller.chmod(0o644)
    agent = bench.agent_running(manager, f"{basecaller} {{input_dir}} {{output_dir}}")

    assert agent.wait(30) == EXIT_CANNOT_RUN, agent.text()

    jobid = assert_given_back(bench, manager, agent, files=2)
    error = next(line for line in agent.text().splitlines() if " ERROR " in line)
    assert "this node cannot run the basecaller: cannot start" in error
    assert f"`{rendered(bench, jobid, str(basecaller))}`" in error
    reason = "No such file or directory" if problem == "missing" else "Permission denied"
    assert reason in error


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("exit 127", 127),
        ("exit 126", 126),
        ('no-such-dorado-bcm-test basecaller "$1"', 127),  # the shell's own "not found"
    ],
)
def test_a_shell_that_cannot_run_the_command_gives_the_batch_back_and_exits_3(
    bench: Bench, script: str, code: int
) -> None:
    manager = bench.manager(files=2, lease=30)
    agent = bench.agent_running(
        manager, shlex.join(["sh", "-c", script, "sh"]) + " {input_dir} {output_dir}"
    )

    assert agent.wait(30) == EXIT_CANNOT_RUN, agent.text()

    jobid = assert_given_back(bench, manager, agent, files=2)
    error = next(line for line in agent.text().splitlines() if " ERROR " in line)
    assert "this node cannot run the basecaller" in error
    assert f"`{rendered(bench, jobid, 'sh', '-c', script, 'sh')}` exited {code}" in error
    if "no-such-dorado" in script:
        assert "no-such-dorado-bcm-test: not found" in error  # the shell's stderr says which


@pytest.mark.parametrize(
    ("flags", "sequence", "jobs"),
    [
        ((), "FFFFFF", 3),
        (("--max-failures-in-a-row", "2"), "FFFFFF", 2),
        (("--max-failures-in-a-row", "2"), "FOFFFF", 4),  # a DONE starts the count again
    ],
)
def test_failing_job_after_job_stops_the_agent(
    bench: Bench, flags: tuple[str, ...], sequence: str, jobs: int
) -> None:
    manager = bench.manager(files=6, lease=30)
    (bench.work / "sequence").write_text(sequence)
    agent = bench.agent(manager, "sequence", "--batch-size", "1", *flags)

    assert agent.wait(30) == EXIT_FAILURES_IN_A_ROW, agent.text()

    log = agent.text()
    assert len(jobids(log)) == jobs
    assert log.count(" completed FAILED") == sequence[:jobs].count("F")
    assert log.count(" completed DONE") == sequence[:jobs].count("O")
    in_a_row = 3 if not flags else 2
    assert log.splitlines()[-1].endswith(
        f"giving up: {in_a_row} jobs in a row failed on this node: last exit code 1, stopping"
    )
    assert log.count("asking for work") == jobs  # stopped asking
    counts = file_counts(manager)
    # A failed file is tried again (alone, this engine being the only one): never lost.
    assert (counts["done"], counts["leased"]) == (sequence[:jobs].count("O"), 0)
    assert counts["pending"] + counts["failed"] + counts["done"] == 6


def test_0_failures_in_a_row_never_stops(bench: Bench) -> None:
    manager = bench.manager(files=4, lease=30)
    agent = bench.agent(manager, "fail", "--batch-size", "1", "--max-failures-in-a-row", "0")

    assert agent.wait(30) == 0, agent.text()
    assert agent.text().count(" completed FAILED") >= 4
    assert "in a row" not in agent.text()


def failed_attempt(bench: Bench, script: str) -> tuple[str, dict[str, Any], AgentProcess]:
    """Run ``sh -c script sh {output_dir}`` on one file; return its job, the record of its
    attempt in the FAILEDOUTPUT_ folder, and the agent (stopped after that one failure)."""
    manager = bench.manager(files=1, lease=30)
    command = shlex.join(["sh", "-c", script, "sh"]) + " {output_dir}"
    agent = bench.agent_running(manager, command, "--max-failures-in-a-row", "1")
    assert agent.wait(30) == EXIT_FAILURES_IN_A_ROW, agent.text()
    [jobid] = jobids(agent.text())
    failed = bench.run.output_dir / job_folder(FolderKind.FAILEDOUTPUT, jobid, ENGINE)
    record = attempt_record(failed)
    output_dir = bench.run.output_dir / job_folder(FolderKind.TMPOUTPUT, jobid, ENGINE)
    assert record["command"] == ["sh", "-c", script, "sh", str(output_dir)]
    assert (record["jobid"], record["engine"], record["outcome"]) == (jobid, ENGINE, "FAILED")
    started = datetime.fromisoformat(record["started"])
    ended = datetime.fromisoformat(record["ended"])
    assert started.utcoffset() == ended.utcoffset() == timedelta(0)
    assert 0 < record["seconds"] < 30
    assert (ended - started).total_seconds() == pytest.approx(record["seconds"], abs=0.1)
    return jobid, record, agent


def test_the_record_of_a_failed_attempt_keeps_the_exit_code_and_the_end_of_stderr(
    bench: Bench,
) -> None:
    line = 'echo "progress line $i of a chatty basecaller" >&2'
    chatty = f"i=0; while [ $i -lt 200 ]; do {line}; i=$((i+1)); done"
    script = f'{chatty}; printf "\\nCUDA error: out of memory\\n\\n" >&2; exit 3'
    _, record, agent = failed_attempt(bench, script)

    assert (record["exit_code"], record["signal"]) == (3, None)
    tail = record["stderr_tail"]
    assert record["stderr_bytes"] > STDERR_TAIL_BYTES
    assert len(tail.encode()) <= STDERR_TAIL_BYTES
    assert tail.endswith(
        "progress line 199 of a chatty basecaller\n\nCUDA error: out of memory\n\n"
    )
    assert "progress line 0 " not in tail
    assert record["stderr_last_line"] == "CUDA error: out of memory"
    # All of stderr reached the agent's own, as before.
    log = agent.text()
    assert "progress line 0 of a chatty basecaller" in log
    assert "progress line 199 of a chatty basecaller" in log
    assert "stderr_last_line='CUDA error: out of memory'" in log


def test_the_record_of_a_killed_basecaller_names_the_signal(bench: Bench) -> None:
    _, record, agent = failed_attempt(bench, 'echo "about to die" >&2; kill -9 $$')

    assert (record["exit_code"], record["signal"]) == (None, "SIGKILL")
    assert record["stderr_last_line"] == "about to die"
    assert (
        "1 job in a row failed on this node: last SIGKILL ('about to die'), stopping"
        in agent.text()
    )


def test_an_output_folder_that_cannot_take_the_record_is_warned_about_and_the_job_reported(
    bench: Bench,
) -> None:
    manager = bench.manager(files=1, lease=30)
    # A folder where the record should go: the rename onto it fails.
    script = f'mkdir "$1/{ATTEMPT_FILE}"; exit 1'
    command = shlex.join(["sh", "-c", script, "sh"]) + " {output_dir}"
    agent = bench.agent_running(manager, command, "--max-failures-in-a-row", "1")

    assert agent.wait(30) == EXIT_FAILURES_IN_A_ROW, agent.text()
    log = agent.text()
    [jobid] = jobids(log)
    assert f"job={jobid} could not write {ATTEMPT_FILE}" in log
    assert f"job={jobid} completed FAILED" in log


def test_a_process_left_holding_stderr_does_not_hold_up_the_job(bench: Bench) -> None:
    manager = bench.manager(files=1, lease=30)
    # A helper left running with the basecaller's stderr (its pid recorded to be killed after).
    script = (
        f"sleep 60 & echo $! > {shlex.quote(str(bench.work))}/helper.pid; "
        f"{shlex.quote(sys.executable)} -m bcmanager simulate basecaller "
        '--seconds-per-read 0 "$1" "$2" 2>/dev/null; echo "basecalled" >&2'
    )
    command = shlex.join(["sh", "-c", script, "sh"]) + " {input_dir} {output_dir}"
    agent = bench.agent_running(manager, command)

    assert agent.wait(30) == 0, agent.text()
    log = agent.text()
    [jobid] = jobids(log)
    assert f"job={jobid} completed DONE" in log
    assert "left a process holding its stderr" in log
    record = attempt_record(bench.run.output_dir / job_folder(FolderKind.LOGOUTPUT, jobid, ENGINE))
    assert record["stderr_last_line"] == "basecalled"
    run_time = datetime.fromisoformat(record["ended"]) - datetime.fromisoformat(record["started"])
    assert run_time.total_seconds() < 1  # the end of the run, not of the wait for stderr


def test_a_basecaller_failing_as_the_agent_stops_gives_the_batch_back(bench: Bench) -> None:
    """Slurm signals every process of the step: the basecaller may die of it before the agent
    stops it, and that death says nothing about the batch."""
    manager = bench.manager(files=2, lease=30)
    agent = bench.agent_running(manager, "sh -c 'kill -TERM $PPID; exit 1'")

    assert agent.wait(30) == 0, agent.text()

    assert_given_back(bench, manager, agent, files=2)
    assert "completed FAILED" not in agent.text()


async def test_the_tee_passes_everything_on_and_keeps_only_the_tail(tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    with sink.open("wb") as out:
        tee, pipe, write_end = await StderrTee.open(out.fileno())
        try:
            process = await asyncio.create_subprocess_exec(
                "sh", "-c", "head -c 5000000 /dev/urandom >&2; echo end >&2", stderr=write_end
            )
        finally:
            os.close(write_end)
        try:
            assert await process.wait() == 0
            assert await tee.drained(10)
        finally:
            pipe.close()
    written = sink.read_bytes()
    assert len(written) == tee.total == 5_000_004
    assert tee.tail == written[-STDERR_TAIL_BYTES:]
    assert tee.tail.endswith(b"end\n")


def test_the_template_is_split_before_its_placeholders_are_filled() -> None:
    words = split_template("run_dorado.sh {input_dir} {output_dir} sup --tag={jobid}@{engine_id}")
    values = {
        "input_dir": "/runs/my run/ASSIGNED_1_gpu",
        "output_dir": "/out/TMPOUTPUT_1_gpu",
        "jobid": "1",
        "engine_id": "gpu",
    }
    assert render_command(words, values) == [
        "run_dorado.sh",
        "/runs/my run/ASSIGNED_1_gpu",
        "/out/TMPOUTPUT_1_gpu",
        "sup",
        "--tag=1@gpu",
    ]
    shell = split_template("""sh -c 'awk "{print}" "$1" > "$2/${X}"' sh {input_dir} {output_dir}""")
    assert render_command(shell, values) == [
        "sh",
        "-c",
        'awk "{print}" "$1" > "$2/${X}"',
        "sh",
        "/runs/my run/ASSIGNED_1_gpu",
        "/out/TMPOUTPUT_1_gpu",
    ]


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCM_AGENT_MANAGER", "http://manager.example:1")
    monkeypatch.setenv("BCM_AGENT_ENGINE_ID", "gpu-from-env")
    monkeypatch.setenv("BCM_AGENT_COMMAND", "basecall {input_dir}")
    monkeypatch.setenv("BCM_AGENT_BATCH_SIZE", "7")
    monkeypatch.setenv("BCM_AGENT_UNTIL_EMPTY", "true")

    args = build_parser().parse_args(
        ["agent", "--manager", "http://127.0.0.1:2", "--batch-size", "3", "--no-until-empty"]
    )
    settings = settings_from_args(args)

    assert str(settings.manager) == "http://127.0.0.1:2/"
    assert settings.batch_size == 3
    assert settings.until_empty is False
    assert settings.engine_id == "gpu-from-env"
    assert settings.command == "basecall {input_dir}"


def test_a_bad_setting_exits_2_naming_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("MANAGER", "ENGINE_ID", "COMMAND"):
        monkeypatch.delenv(f"BCM_AGENT_{name}", raising=False)
    argv = ["agent", "--manager", "http://127.0.0.1:2", "--engine-id", "../gpu", "--command", "x"]

    assert main(argv) == 2
    assert "--engine-id / BCM_AGENT_ENGINE_ID" in capsys.readouterr().err


def test_an_original_managers_reply_needs_the_paths_as_flags(tmp_path: Path) -> None:
    reply: dict[str, Any] = {
        "report_back_period": 90,
        "report_back_interval": 90,
        "jobid": "12",
        "job_input_dir": "ASSIGNED_12_gpu",
        "job_output_dir": "TMPOUTPUT_12_gpu",
        "bc_engine_id": "gpu",
        "batch_size": 1,
        "batch": ["a.pod5"],
    }
    original = BatchReply.model_validate(reply)
    with pytest.raises(ConfigurationError, match="--input-dir"):
        resolve_job(original, None, None)
    job = resolve_job(original, tmp_path / "in", tmp_path / "out")
    assert (job.input_dir, job.output_dir) == (
        tmp_path / "in" / "ASSIGNED_12_gpu",
        tmp_path / "out" / "TMPOUTPUT_12_gpu",
    )

    ours = BatchReply.model_validate({**reply, "input_dir": "/m/in", "output_dir": "/m/out"})
    assert resolve_job(ours, None, None).input_dir == Path("/m/in/ASSIGNED_12_gpu")
    assert resolve_job(ours, tmp_path, None).input_dir == tmp_path / "ASSIGNED_12_gpu"
    assert resolve_job(ours, tmp_path, None).output_dir == Path("/m/out/TMPOUTPUT_12_gpu")


def test_backoff_doubles_up_to_its_cap_and_jitters_down_to_half() -> None:
    backoff = Backoff(first=0.5, cap=4.0)
    assert [backoff.delay(attempt, 0.0) for attempt in range(6)] == [0.25, 0.5, 1, 2, 2, 2]
    assert backoff.delay(3, 0.999) == pytest.approx(4.0, rel=1e-3)
    assert backoff.delay(10_000, 0.5) == 3.0


def test_systemd_does_not_restart_an_agent_that_needs_a_person() -> None:
    unit = Path(__file__).resolve().parent.parent / "deploy/systemd/bcmanager-agent@.service"
    [codes] = [
        line.removeprefix("RestartPreventExitStatus=").split()
        for line in unit.read_text().splitlines()
        if line.startswith("RestartPreventExitStatus=")
    ]
    assert {int(code) for code in codes} == {2, EXIT_CANNOT_RUN, EXIT_FAILURES_IN_A_ROW}


def manager_of_runs(root: Path, batches: list[dict[str, Any]]) -> tuple[FastAPI, list[str]]:
    """A manager of several runs, reduced to what one agent sees: ``batches`` handed out in
    turn (each with its job folders made, as a manager does), then no work. The jobs reported
    are listed as 'jobid STATE'."""
    app = FastAPI()
    pending = list(batches)
    reported: list[str] = []

    @app.get("/assignwork")
    def assign(engineid: str, batchsize: int) -> dict[str, Any]:
        if not pending:
            return {
                **{"report_back_period": 90, "report_back_interval": 90, "jobid": "-1"},
                **{"job_input_dir": "", "job_output_dir": "", "bc_engine_id": engineid},
                **{"batch_size": 0, "batch": []},
            }
        batch = pending.pop(0)
        jobid = batch["jobid"]
        (root / "in" / f"ASSIGNED_{jobid}_{engineid}").mkdir(parents=True)
        (root / "out" / f"TMPOUTPUT_{jobid}_{engineid}").mkdir(parents=True)
        return {
            **{"report_back_period": 90, "report_back_interval": 90, "bc_engine_id": engineid},
            **{"job_input_dir": f"ASSIGNED_{jobid}_{engineid}", "batch_size": 1},
            **{"job_output_dir": f"TMPOUTPUT_{jobid}_{engineid}", "batch": ["a.pod5"]},
            **{"input_dir": str(root / "in"), "output_dir": str(root / "out")},
            **batch,
        }

    @app.get("/keepalive")
    def keepalive(job_id: str, job_state: str) -> dict[str, bool]:
        return {"late": False}

    @app.get("/completed")
    def completed(job_id: str, job_state: str) -> dict[str, bool]:
        reported.append(f"{job_id} {job_state}")
        return {"ok": True}

    return app, reported


def test_one_agent_basecalls_each_run_with_its_own_model(tmp_path: Path) -> None:
    sup = {"run_path": "PROJ_A/s1/20261124_1200_1A_PAO1_a/pod5", "model": "sup@v5.0.0"}
    hac = {"run_path": "PROJ_B/s2/20261124_1300_2A_PAO2_b/pod5", "model": "hac@v5.0.0"}
    facts = {"sample_rate": 5000, "flow_cell_product": "FLO-PRO114M"}
    batches = [
        {"jobid": "1", **sup, "modified_bases": "5mCG_5hmCG", "kit": "SQK-NBD114-24", **facts},
        {"jobid": "2", **hac, "sequencing_kit": "SQK-LSK114", "priority": 9},
        {"jobid": "3"},  # from a manager that sends none of them
    ]
    app, reported = manager_of_runs(tmp_path, batches)
    names = "run_path model modified_bases kit sample_rate flow_cell_product sequencing_kit"
    placeholders = " ".join(f"{{{name}}}" for name in names.split())
    # The basecaller writes the words it was given, one per line, into its output folder.
    command = f'sh -c \'printf "%s\\n" "$@" > "$0/argv.txt"\' {{output_dir}} {placeholders}'

    with real_server(app) as url:
        agent = subprocess.run(
            [
                *(sys.executable, "-m", "bcmanager", "agent", "--manager", url),
                *("--engine-id", ENGINE, "--command", command, "--until-empty"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert agent.returncode == 0, agent.stderr
    assert reported == ["1 DONE", "2 DONE", "3 DONE"]
    given = {
        jobid: (tmp_path / "out" / f"TMPOUTPUT_{jobid}_{ENGINE}" / "argv.txt").read_text()
        for jobid in "123"
    }
    assert given["1"].splitlines() == [
        *(sup["run_path"], "sup@v5.0.0", "5mCG_5hmCG", "SQK-NBD114-24"),
        *("5000", "FLO-PRO114M", ""),
    ]
    assert given["2"].splitlines() == [hac["run_path"], "hac@v5.0.0", "", "", "", "", "SQK-LSK114"]
    assert given["3"] == "\n" * 7  # an older manager: every run placeholder empty
    record = attempt_record(tmp_path / "out" / f"TMPOUTPUT_2_{ENGINE}")
    assert record["command"][-7:] == given["2"].splitlines()


def test_job_folders_below_the_root_are_followed_and_no_way_out_is(tmp_path: Path) -> None:
    reply: dict[str, Any] = {
        **{"report_back_period": 90, "report_back_interval": 90, "jobid": "12"},
        **{"bc_engine_id": "gpu", "batch_size": 1, "batch": ["a.pod5"]},
        **{"input_dir": str(tmp_path / "in"), "output_dir": str(tmp_path / "out")},
    }
    run = "exp/sample/20261124_1200_1A_PAO12345_abcdef12"
    below = BatchReply.model_validate(
        {
            **reply,
            "job_input_dir": f"{run}/pod5/ASSIGNED_12_gpu",
            "job_output_dir": f"{run}/TMPOUTPUT_12_gpu",
        }
    )
    job = resolve_job(below, None, None)
    assert job.input_dir == tmp_path / "in" / run / "pod5" / "ASSIGNED_12_gpu"
    assert job.output_dir == tmp_path / "out" / run / "TMPOUTPUT_12_gpu"
    for bad in ("", ".", "..", "../ASSIGNED_12_gpu", "a/../../b", "/etc", "a//b", "a/./b"):
        odd = BatchReply.model_validate(
            {**reply, "job_input_dir": bad, "job_output_dir": "TMPOUTPUT_12_gpu"}
        )
        with pytest.raises(ProtocolViolation, match="not a folder below the root"):
            resolve_job(odd, None, None)


def test_one_agent_pool_basecalls_each_run_of_a_root_with_its_rule_s_model(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """A real manager of a root with two runs and a runs file, and one real agent: each job's
    basecaller is told its own run's model, and each run's reads land in its own output."""
    runs = {
        "PROJ_A/s1/20261124_1200_1A_PAO12345_abcdef12": "sup@v5",
        "PROJ_B/s2/20261124_1300_2B_PAO67890_12345678": "hac@v5",
    }
    for number, path in enumerate(runs):
        (run.input_dir / path / "pod5").mkdir(parents=True)
        for index in range(3):
            write_pod5(run.input_dir / path / "pod5" / f"{index}.pod5", 1, seed=10 * number + index)
    runs_file = tmp_path / "runs.toml"
    runs_file.write_text(
        '[defaults]\nmodel = "hac@v5"\n[[run]]\nmatch = "PROJ_A/**"\nmodel = "sup@v5"\n'
    )
    manager = start_server(BCM_RUNS_FILE=str(runs_file))
    # The basecaller notes the model it was given, then basecalls (simulated).
    script = 'echo "$3" > "$2/model.txt" && exec "$0" -m bcmanager simulate basecaller "$1" "$2"'
    words = ["sh", "-c", script, sys.executable, "{input_dir}", "{output_dir}", "{model}"]

    agent = subprocess.run(
        [
            *(sys.executable, "-m", "bcmanager", "agent", "--manager", manager.url),
            *("--engine-id", ENGINE, "--command", shlex.join(words)),
            *("--batch-size", "2", "--until-empty"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert agent.returncode == 0, agent.stderr
    assert manager.get("/status").json()["files"]["done"] == 6
    for path, model in runs.items():
        output = run.output_dir / path
        told = {note.read_text() for note in output.glob("LOGOUTPUT_*/model.txt")}
        assert told == {f"{model}\n"}, path
        assert len(list((output / PASS).glob("*.fastq"))) == 3
