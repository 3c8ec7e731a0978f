"""Shared fixtures: run folders in tmp_path, real POD5 files, the app in-process, and a real
``bcmanager serve`` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from bcmanager.core.manager import Manager
from bcmanager.http.app import create_app
from bcmanager.reads.stats import JobStats as AgentStats
from bcmanager.reads.stats import job_stats as count_job_stats
from bcmanager.reads.stats import write_job_stats
from bcmanager.settings import Settings
from bcmanager.sim.basecaller import OutputLayout, basecall
from bcmanager.sim.reads import ReadsFormat
from bcmanager.sim.sequencer import pod5_bytes, write_pod5
from oracle import Verdict, judge


def fastq(read_ids: Iterable[str]) -> str:
    """FASTQ records for ``read_ids``, as the tests' basecallers write them."""
    return "".join(f"@{read}\nACGT\n+\n!!!!\n" for read in read_ids)


@dataclass
class Run:
    """A run's two folders, and the test's own ledger: the read ids of the raw files it wrote,
    those it deleted (or moved away), and those that must never be offered."""

    input_dir: Path
    output_dir: Path
    reads: dict[str, list[str]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    never_offered: set[str] = field(default_factory=set)

    def add(self, name: str, read_count: int = 2, *, mtime: float | None = None) -> Path:
        path = self.input_dir / name
        self.reads[name] = write_pod5(path, read_count, seed=len(self.reads))
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def add_many(self, count: int, prefix: str = "raw") -> list[str]:
        """``count`` files with increasing modification times, oldest first."""
        start = time.time() - 10_000
        names = [f"{prefix}_{index:05d}.pod5" for index in range(count)]
        for index, name in enumerate(names):
            self.add(name, 1, mtime=start + index)
        return names

    def delete(self, name: str, *, move_to: Path | None = None) -> None:
        """What an operator does: delete a raw file, or move it out of INPUT_DIR."""
        path = self.input_dir / name
        if move_to is None:
            path.unlink()
        else:
            path.rename(move_to / name)
        self.deleted.add(name)

    def add_undecodable(self, raw_name: bytes, read_count: int = 2) -> str:
        """A complete POD5 file named with bytes that are not UTF-8 (as Python spells such a name:
        with surrogate escapes): never to be offered. Written in one rename, as ``add``."""
        name = os.fsdecode(raw_name)
        data, self.reads[name] = pod5_bytes("undecodable.pod5", read_count, seed=len(self.reads))
        folder = os.fsencode(self.input_dir)
        partial = os.path.join(folder, b"." + raw_name + b".partial")
        with open(partial, "wb") as raw:
            raw.write(data)
        os.rename(partial, os.path.join(folder, raw_name))
        self.never_offered.add(name)
        return name

    def judge(
        self, *, drained: bool = True, done: Iterable[str] = (), undone: Iterable[str] = ()
    ) -> Verdict:
        """The independent oracle (tests/oracle.py) on this run's folders and ledger."""
        return judge(
            self.input_dir,
            self.output_dir,
            self.reads,
            deleted=self.deleted,
            never_offered=self.never_offered,
            drained=drained,
            done=set(done),
            undone=set(undone),
        )

    def basecall(self, job_output_dir: str, batch: Iterable[str], sub: str = "pass") -> None:
        """What a basecaller leaves in a job's output folder: ``<stem>.fastq`` in ``sub`` for
        each raw file, holding its read ids (a file the test did not write gets one read named
        after it; one written below INPUT_DIR is found by its name). A DONE whose reads did not
        all come out does not count as done."""
        folder = self.output_dir / job_output_dir / sub
        folder.mkdir(parents=True, exist_ok=True)
        below = {key.rpartition("/")[2]: reads for key, reads in self.reads.items()}
        for name in batch:
            reads = self.reads.get(name) or below.get(name) or [name]
            (folder / name.replace(".pod5", ".fastq")).write_text(fastq(reads))

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"input_dir": self.input_dir, "output_dir": self.output_dir}
        values.update(overrides)
        return Settings(**values)


def minknow_run(
    root: Run,
    experiment: str,
    flow_cell: str,
    raw_folders: Iterable[str] = ("pod5",),
    files: int = 2,
) -> str:
    """A run as MinKNOW lays one out under ``root.input_dir``:
    ``<experiment>/sample/<YYYYMMDD_HHMM_X1_<flow cell>_<hash>>/<raw folder>/*.pod5``, with
    ``files`` POD5 files in each raw folder, each older than the next. Returns the run's path
    relative to the root, as /runs names it."""
    path = f"{experiment}/sample/20261124_1200_X1_{flow_cell}_0123abcd"
    start = time.time() - 10_000
    for raw in raw_folders:
        (root.input_dir / path / raw).mkdir(parents=True)
        for index in range(files):
            root.add(
                f"{path}/{raw}/{flow_cell}_{raw}_{index}.pod5", 1, mtime=start + len(root.reads)
            )
    return path


class Clock:
    """A monotonic clock the test moves forward, so leases run out without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def run(tmp_path: Path) -> Run:
    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    input_dir.mkdir()
    return Run(input_dir, output_dir)


def tree(root: Path) -> dict[str, str]:
    """Every entry below ``root``: files by size, symlinks by target, folders as 'dir'."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = f"{path.stat().st_size} bytes"
    return found


@asynccontextmanager
async def started(manager: Manager) -> AsyncIterator[FastAPI]:
    """The app for ``manager``, started (recovery, watcher, reaper) and stopped around the block."""
    app = create_app(manager.settings, manager)
    async with app.router.lifespan_context(app):
        await wait_ready(manager)
        yield app


@asynccontextmanager
async def serving(manager: Manager) -> AsyncIterator[httpx.AsyncClient]:
    """The app for ``manager``, started and stopped around a client."""
    async with started(manager) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bcm") as client:
            yield client


async def wait_ready(manager: Manager, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not manager.ready:
        if time.monotonic() > deadline:
            raise TimeoutError("the manager did not finish its first scan")
        await asyncio.sleep(0.01)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def simulated_agent(
    url: str,
    engine: str,
    log: IO[bytes],
    *,
    seconds_per_read: float,
    poll: float,
    basecaller_options: str = "",
) -> subprocess.Popen[bytes]:
    """A real ``bcmanager agent`` process basecalling with the simulated basecaller (given
    ``basecaller_options``: what Dorado does to reads, on request)."""
    basecaller = f"{sys.executable} -m bcmanager simulate basecaller {basecaller_options}"
    command = f"{basecaller} --seconds-per-read {seconds_per_read} {{input_dir}} {{output_dir}}"
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "bcmanager", "agent"),
            *("--manager", url, "--engine-id", engine),
            *("--command", command, "--poll-interval", str(poll)),
        ],
        stdout=log,
        stderr=log,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def real_server(app: FastAPI, timeout: float = 10.0) -> Iterator[str]:
    """A test's own small app on a real uvicorn server on 127.0.0.1 (in a thread), for clients
    that must meet a socket; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test's server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


class Server:
    """``bcmanager serve`` as a real process on 127.0.0.1, on a run or a root of runs; over
    https, verified against its own certificate, when ``BCM_TLS_CERTFILE`` is among ``env``."""

    def __init__(self, run: Run | Root, log: Path, **env: str) -> None:
        self.run = run
        self.port = free_port()
        certificate = env.get("BCM_TLS_CERTFILE")
        scheme = "https" if certificate else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        # Made once: without a context of its own, every httpx call loads the CA bundle afresh,
        # tens of milliseconds of CPU that slow each poll and the server starting beside it.
        self.verify = ssl.create_default_context(cafile=certificate)
        self.log = log
        self.env = {
            **os.environ,
            "BCM_INPUT_DIR": str(run.input_dir),
            "BCM_OUTPUT_DIR": str(run.output_dir),
            "BCM_PORT": str(self.port),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        # A command that runs the rest of its command line (``unshare``, say): serve is
        # started through it when one is set.
        self.prefix: list[str] = []

    def start(self, timeout: float = 15.0) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "bcmanager", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}")
            try:
                ready = httpx.get(f"{self.url}/ready", timeout=1, verify=self.verify)
                if ready.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"serve did not become ready: {self.log.read_text()[-2000:]}")

    def get(self, route: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{route}", params=params, timeout=10, verify=self.verify)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: uvicorn shuts down cleanly."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def start_server(run: Run, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``bcmanager serve`` processes on ``run``; all are stopped after the test."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        server = Server(run, tmp_path / f"serve{len(started)}.log", **env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@dataclass(frozen=True)
class Read:
    """One basecalled read, as a job's statistics count it."""

    length: int
    q: float  # its mean Q-score
    barcode: str | None = None
    passed: bool = True


def known_reads(count: int, seed: int, barcodes: tuple[str | None, ...] = (None,)) -> list[Read]:
    """Reads of lengths, Q-scores and barcodes a real run might have: mostly a few kb, a long
    tail, Q 4 to 30; those under Q 10 fail."""
    rng = random.Random(seed)
    reads = []
    for _ in range(count):
        length = min(int(rng.lognormvariate(8.3, 0.8)), 400_000)
        q = round(rng.uniform(4.0, 30.0), 3)
        reads.append(Read(length, q, rng.choice(barcodes), q >= 10))
    return reads


def job_stats(
    reads: Iterable[Read],
    *,
    length_bin: int = 100,
    q_bin: int = 1,
    model: str | None = "dna_r10.4.1_e8.2_400bps_hac@v5.0.0",
    files: Iterable[dict[str, Any]] = (),
    errors: Iterable[str] = (),
) -> dict[str, Any]:
    """The ``bcm-stats.json`` an agent writes for ``reads``, worked out from the contract alone
    (one group per barcode and pass or fail, histograms by bin start)."""
    groups: dict[tuple[str | None, bool], dict[str, Any]] = {}
    for read in reads:
        group = groups.setdefault(
            (read.barcode, read.passed),
            {
                "barcode": read.barcode,
                "pass": read.passed,
                "reads": 0,
                "bases": 0,
                "qscore_sum": 0.0,
                "length_hist": {},
                "q_hist": {},
                "read_ids_sha256": None,
            },
        )
        group["reads"] += 1
        group["bases"] += read.length
        group["qscore_sum"] += read.q
        for name, key in (
            ("length_hist", str(read.length // length_bin * length_bin)),
            ("q_hist", str(int(read.q // q_bin) * q_bin)),
        ):
            group[name][key] = group[name].get(key, 0) + 1
    return {
        "format": "bcmanager-job-stats",
        "version": 1,
        "basecaller": {"name": "dorado", "version": "0.9.6", "model": model},
        "length_bin": length_bin,
        "q_bin": q_bin,
        "groups": list(groups.values()),
        "files": list(files),
        "errors": list(errors),
    }


def n50(lengths: Iterable[int]) -> int:
    """The length such that reads at least that long hold half the bases."""
    ordered = sorted(lengths, reverse=True)
    half, held = sum(ordered) / 2, 0
    for length in ordered:
        held += length
        if held >= half:
            return length
    raise ValueError("no reads")


# How MinKNOW names a run's folder (date, time, position, flow cell, hash).
RUN_NAME = "20241201_1200_X1_{flow_cell}_0123abcd"


class Root:
    """A root of runs, and the ledger: read ids by raw file (absolute path)."""

    def __init__(self, tmp_path: Path) -> None:
        self.input_dir = tmp_path / "root"
        self.output_dir = tmp_path / "out"
        self.input_dir.mkdir()
        self.reads: dict[Path, list[str]] = {}

    def run(self, experiment: str, sample: str, flow_cell: str) -> Path:
        folder = self.input_dir / experiment / sample / RUN_NAME.format(flow_cell=flow_cell)
        folder.mkdir(parents=True)
        return folder

    def add(self, folder: Path, count: int, reads: int = 2) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        tag = "_".join(folder.relative_to(self.input_dir).parts[-2:])
        paths = []
        for _ in range(count):
            path = folder / f"{tag}_{len(self.reads):04d}.pod5"
            self.reads[path] = write_pod5(path, reads, seed=len(self.reads))
            paths.append(path)
        return paths

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "input_dir": self.input_dir,
            "output_dir": self.output_dir,
            "rescan_interval": 0.2,
        }
        values.update(overrides)
        return Settings(**values)

    def basecall(self, batch: dict[str, Any]) -> None:
        """What an engine does: one FASTQ per raw file, holding that file's read ids, in the
        job's output folder; the raw file found through the job folder's link, as engines
        find it."""
        job_input = self.input_dir / batch["job_input_dir"]
        pass_dir = self.output_dir / batch["job_output_dir"] / "pass"
        pass_dir.mkdir(parents=True, exist_ok=True)
        batch["raw_files"] = []
        for name in batch["batch"]:
            raw = Path(os.path.realpath(job_input / name))
            batch["raw_files"].append(raw)
            (pass_dir / name.replace(".pod5", ".fastq")).write_text(fastq(self.reads[raw]))

    def reads_out(self, run_output: Path) -> list[str]:
        """Every read id in the FASTQ under a run's pass/ and fail/ (not below other runs)."""
        found = []
        for sub in ("pass", "fail"):
            for path in sorted((run_output / sub).rglob("*.fastq")):
                found += [line[1:].split()[0] for line in path.read_text().splitlines()[::4]]
        return found

    def reads_in(self, run_folder: Path) -> list[str]:
        return [
            read
            for path, reads in self.reads.items()
            if path.is_relative_to(run_folder)
            for read in reads
        ]


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path)


def simulated_dorado(
    input_root: Path,
    output_root: Path,
    batch: dict[str, Any],
    model: str,
    reads_format: ReadsFormat = ReadsFormat.FASTQ,
    edit: Callable[[AgentStats], None] | None = None,
) -> None:
    """What an agent does with a batch: the simulated Dorado writes its --output-dir tree with
    two barcodes, then the statistics are counted and written as the agent writes them
    (``edit`` may change them first)."""
    output = output_root / batch["job_output_dir"]
    basecall(
        input_root / batch["job_input_dir"],
        output,
        seconds_per_read=0,
        reads_format=reads_format,
        layout=OutputLayout.DORADO,
        barcodes=2,
        model=model,
    )
    stats = count_job_stats(output, ["dorado", "basecaller", model])
    if edit is not None:
        edit(stats)
    write_job_stats(output, stats)
