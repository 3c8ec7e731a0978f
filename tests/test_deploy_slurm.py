"""The Slurm batch template, run for real on a one-node Slurm brought up for the test.

The cluster comes from Debian's packages (slurm-wlm, munge; `make slurm-packages` installs them
as root): munged with a key generated into a temporary folder, then slurmctld and slurmd in the
foreground with a generated slurm.conf on 127.0.0.1. The node offers two GPUs as generic
resources backed by character devices made for the test, so the template's per-GPU requests are
scheduled exactly as on a GPU node. Where Slurm cannot start (not root, packages missing) the
tests skip and say why; `make test-slurm` sets BCM_TEST_REQUIRE_SLURM=1 to make that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pod5
import pytest

from bcmanager.agent.settings import PLACEHOLDERS, split_template
from bcmanager.paths import FolderKind, parse_job_folder

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "deploy" / "slurm" / "bcmanager.sbatch"

SLURM_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")
PARTITION = "gpu"  # the template's default partition, so the test need not override it
FAKE_GPUS = 2
START_TIMEOUT = 30.0
# Its tests share one cluster (a module fixture): under xdist they run on one worker.
pytestmark = pytest.mark.xdist_group("slurm")
ENDED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def search_path() -> str:
    """PATH with the system folders where Debian puts the daemons, which a user's PATH may lack."""
    return os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])


def why_slurm_cannot_start() -> str | None:
    """A plain reason this machine cannot run the test cluster, or None when it can."""
    missing = [name for name in SLURM_PROGRAMS if shutil.which(name, path=search_path()) is None]
    if missing:
        return (
            f"Slurm/munge not installed ({', '.join(missing)} missing): "
            "`make slurm-packages` installs slurm-wlm and munge as root"
        )
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root (SlurmUser=root); not running as root"
    return None


@dataclass(frozen=True)
class SlurmJob:
    """What `scontrol show job` says about one job."""

    job_id: str
    fields: Mapping[str, str]

    @property
    def state(self) -> str:
        return self.fields.get("JobState", "UNKNOWN")

    @property
    def exit_code(self) -> str:
        return self.fields.get("ExitCode", "")


@dataclass(frozen=True)
class SlurmCluster:
    """A running one-node cluster: its folder, node name and the environment its clients need."""

    root: Path
    node: str
    env: Mapping[str, str]

    def run(self, *command: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            command, env=dict(self.env), cwd=cwd, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {done.stderr.strip()}")
        return done.stdout

    def submit(
        self, script: Path, *options: str, cwd: Path, env: Mapping[str, str] | None = None
    ) -> str:
        """sbatch the script from cwd; env joins the environment that sbatch exports to it."""
        submit_env = {**self.env, **(env or {})}
        done = subprocess.run(
            ["sbatch", "--parsable", *options, str(script)],
            env=submit_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, f"sbatch refused the job: {done.stderr.strip()}"
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> SlurmJob:
        line = self.run("scontrol", "--oneliner", "show", "job", job_id)
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        return SlurmJob(job_id, fields)

    def wait_until_ended(self, job_id: str, timeout: float) -> SlurmJob:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in ENDED_STATES:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job.state} after {timeout} s")
            time.sleep(0.25)

    def cancel_all(self) -> None:
        job_ids = self.run("squeue", "--noheader", "--format=%i").split()
        if job_ids:
            self.run("scancel", *job_ids)

    def log_tail(self, lines: int = 30) -> str:
        """The end of each daemon's log, to explain a failure."""
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)


def make_fake_gpus(folder: Path) -> list[Path]:
    """Character devices (null's numbers) that slurmd accepts as the node's GPU files."""
    null = os.stat("/dev/null").st_rdev
    devices = []
    for index in range(FAKE_GPUS):
        device = folder / f"fake-gpu{index}"
        os.mknod(device, 0o666 | stat.S_IFCHR, null)
        devices.append(device)
    return devices


def write_config(root: Path, node: str, node_hardware: str, gpus: list[Path]) -> Path:
    """slurm.conf and gres.conf for one node on 127.0.0.1, every path inside root."""
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=bcmtest",
                f"SlurmctldHost={node}(127.0.0.1)",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "GresTypes=gpu",
                "ReturnToService=2",
                "KillWait=2",
                f"{node_hardware} NodeAddr=127.0.0.1 Gres=gpu:{len(gpus)} State=UNKNOWN",
                f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    gres_files = ",".join(str(gpu) for gpu in gpus)
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File={gres_files}\n")
    return conf


def processes_of(slurm_conf: Path) -> list[int]:
    """Pids of every process started under this cluster: daemons, step daemons and job tasks.

    They all inherit SLURM_CONF pointing at this cluster's slurm.conf, which no other process
    on the machine has, so this finds exactly what the cluster left behind.
    """
    marker = f"SLURM_CONF={slurm_conf}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environment.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def stop(daemons: dict[str, subprocess.Popen[bytes]], slurm_conf: Path) -> None:
    """Stop the daemons newest first, then anything still running under the cluster."""
    for process in reversed(daemons.values()):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    for pid in processes_of(slurm_conf):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def wait_for_idle_node(cluster: SlurmCluster, daemons: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        for name, daemon in daemons.items():
            if daemon.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {daemon.returncode}\n{cluster.log_tail()}"
                )
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%T", f"--nodes={cluster.node}"],
            env=dict(cluster.env),
            capture_output=True,
            text=True,
            timeout=30,
        )
        state = done.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.25)
    raise AssertionError(
        f"node {cluster.node} not idle after {START_TIMEOUT} s (state {state!r})\n"
        + cluster.log_tail()
    )


def cannot_start(reason: str) -> NoReturn:
    """Skip, saying why; or fail where Slurm is required (`make test-slurm`)."""
    if os.environ.get("BCM_TEST_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm is required here but cannot start: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = why_slurm_cannot_start()
    if reason is not None:
        cannot_start(reason)
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir()
    (root / "munge").chmod(0o755)
    node = socket.gethostname().split(".")[0]
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env["PATH"] = search_path()
    hardware = subprocess.run(
        ["slurmd", "-C"], env=env, capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()[0]
    assert hardware.startswith(f"NodeName={node} "), hardware
    try:
        gpus = make_fake_gpus(root)
    except OSError as error:
        cannot_start(f"cannot make character devices for the simulated GPUs: {error}")
    conf = write_config(root, node, hardware, gpus)
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root, node, env)

    key = root / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], env=env, check=True, timeout=30)
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        daemons["munged"] = subprocess.Popen(
            [
                "munged",
                "--foreground",
                "--force",  # no complaint that tmp's parents are writable by others
                f"--key-file={key}",
                f"--socket={root / 'munge' / 'munge.socket'}",
                f"--pid-file={root / 'munge' / 'munged.pid'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
                f"--log-file={root / 'log' / 'munged.log'}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for daemon in ("slurmctld", "slurmd"):
            daemons[daemon] = subprocess.Popen(
                [daemon, "-D"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        wait_for_idle_node(cluster, daemons)
        yield cluster
    finally:
        with suppress(AssertionError, subprocess.TimeoutExpired):
            cluster.cancel_all()
        stop(daemons, conf)


def test_the_test_cluster_runs_a_batch_job_with_a_gpu_per_step(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    script = tmp_path / "probe.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --gres=gpu:{FAKE_GPUS} --ntasks-per-node={FAKE_GPUS}\n"
        "for gpu in 0 1; do\n"
        "  srun --nodes=1 --ntasks=1 --exact --gres=gpu:1 "
        'bash -c "echo gpu \\$CUDA_VISIBLE_DEVICES" >"step$gpu.txt" &\n'
        "done\n"
        "wait\n"
    )
    job_id = slurm_cluster.submit(script, "--output=probe.log", cwd=tmp_path)

    job = slurm_cluster.wait_until_ended(job_id, timeout=30)

    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), (tmp_path / "probe.log").read_text()
    seen = sorted((tmp_path / f"step{gpu}.txt").read_text().strip() for gpu in (0, 1))
    assert seen == ["gpu 0", "gpu 1"]


def read_ids_of_run(input_dir: Path) -> list[str]:
    ids: list[str] = []
    for path in sorted(input_dir.glob("*.pod5")):
        with pod5.Reader(path) as reader:
            ids.extend(str(read.read_id) for read in reader.reads())
    return ids


def read_ids_of_fastq(folder: Path) -> list[str]:
    ids: list[str] = []
    for path in sorted(folder.glob("*.fastq")):
        headers = path.read_text().splitlines()[::4]
        ids.extend(header[1:].split()[0] for header in headers)
    return ids


def test_the_template_basecalls_a_run_once_per_read_and_ends_by_itself(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    bcmanager = Path(sys.executable).with_name("bcmanager")
    input_dir, output_dir = tmp_path / "run" / "pod5", tmp_path / "run" / "basecalled"
    sequencer = [str(bcmanager), "simulate", "sequencer", str(input_dir), "--files", "6"]
    subprocess.run(
        [*sequencer, "--reads-per-file", "3", "--interval", "0", "--write-seconds", "0"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    settings = {
        "BCM_INPUT_DIR": str(input_dir),
        "BCM_OUTPUT_DIR": str(output_dir),
        "BCM_PORT": str(free_port()),
        # Agents keep asking for work, so the manager never goes idle: the job must end
        # because the run is complete (the simulated sequencer wrote its final summary).
        "BCM_SHUTDOWN_INTERVAL": "600",
        "BCMANAGER": str(bcmanager),
        "BCM_AGENT_COMMAND": f"{bcmanager} simulate basecaller {{input_dir}} {{output_dir}}",
        "BCM_AGENT_BATCH_SIZE": "2",
        "BCM_SLURM_WATCH_INTERVAL": "1",
    }
    # The test node: one node, its two GPUs, a CPU per agent, and a time limit as a backstop.
    shape = ["--nodes=1", f"--gres=gpu:{FAKE_GPUS}", f"--ntasks-per-node={FAKE_GPUS}"]
    shape += ["--cpus-per-task=1", "--time=5"]

    job_id = slurm_cluster.submit(TEMPLATE, *shape, cwd=tmp_path, env=settings)
    job = slurm_cluster.wait_until_ended(job_id, timeout=90)

    log = (tmp_path / f"bcmanager-{job_id}.log").read_text()
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), log
    assert "run complete: sequencing finished" in log
    # The manager served HTTPS with a certificate made for the job, which the job removed.
    assert re.search(r"manager on \S+ at https://", log), log
    assert not list(tmp_path.glob(".bcmanager-tls-*"))
    expected = read_ids_of_run(input_dir)
    basecalled = read_ids_of_fastq(output_dir / "pass") + read_ids_of_fastq(output_dir / "fail")
    assert len(expected) == 6 * 3
    assert Counter(basecalled) == Counter(expected)
    jobs = [parse_job_folder(path.name) for path in input_dir.iterdir() if path.is_dir()]
    assert {job.kind for job in jobs if job is not None} == {FolderKind.DONE}
    engines = {job.engine for job in jobs if job is not None}
    assert engines <= {f"{slurm_cluster.node}_gpu{gpu}" for gpu in range(FAKE_GPUS)}


def test_the_template_default_command_is_one_the_agent_runs() -> None:
    """The default a site edits: Dorado through deploy/dorado-batch.sh on the two job folders."""
    (default,) = re.findall(
        r"^BCM_AGENT_COMMAND=\$\{BCM_AGENT_COMMAND:-'([^']*)'\}$", TEMPLATE.read_text(), re.M
    )
    words = split_template(default)

    assert Path(words[0]).name == "dorado-batch.sh"
    assert words[1:3] == ["{input_dir}", "{output_dir}"]
    assert set(re.findall(r"\{(\w+)\}", default)) <= set(PLACEHOLDERS)
