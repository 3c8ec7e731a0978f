"""What every benchmark shares: synthetic runs on disk, real servers, timing and the table.

A synthetic run is laid out exactly as bcmanager leaves a real one (paths.py spells every name),
but its raw files are 24 bytes: the POD5 signature, eight zero bytes, the signature again. The
manager reads nothing of a raw file but those signatures, so it cannot tell them from real ones,
and a million of them are written in about a minute. "Done" files carry the full record of a
finished job: a DONE_ folder of relative symlinks, one FASTQ per raw file in OUTPUT_DIR/pass named
``job_id_<jobid>_<stem>.fastq``, and the job's LOGOUTPUT_ folder.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bcmanager.core.scan import POD5_SIGNATURE
from bcmanager.paths import FolderKind, RunPaths, final_fastq_name, job_folder, raw_stem
from bcmanager.sim.sequencer import RunIdentity

RAW_BYTES = POD5_SIGNATURE + bytes(8) + POD5_SIGNATURE
FASTQ_BYTES = b"@read\nACGT\n+\n####\n"
JOB_SIZE = 10  # files per finished job in a synthetic run, the default batch size
ENGINES = 100  # finished jobs are spread over this many engine names
STARTUP_TIMEOUT = 600.0  # seconds a server may take to answer at all, even with 1M files
HOST = "127.0.0.1"
# Runs live in memory (tmpfs) unless told otherwise: a disk that other work shares makes each
# create and rename cost what the disk's queue and ext4's inode allocator happen to make it
# (after mass deletes, ext4 scans for inodes not recently freed), the same for bcmanager and
# its baseline but so unevenly that ratios drown in the noise. --workdir puts them on a disk.
DEFAULT_WORKDIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


# -- synthetic runs ---------------------------------------------------------------------------


def raw_names(count: int, start: int = 0) -> list[str]:
    """MinKNOW-style names (``PAO12345_pass_<acq>_<run>_<n>.pod5``), so memory and parsing costs
    are those of real names."""
    identity = RunIdentity.from_seed(0)
    return [identity.raw_file_name(index) for index in range(start, start + count)]


def write_files(folder: Path, names: Sequence[str], data: bytes) -> None:
    """Create each file with one open (relative to the open folder), write and close: the
    fastest way to fill a folder from Python."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            fd = os.open(name, flags, 0o644, dir_fd=folder_fd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    finally:
        os.close(folder_fd)


def job_ids(count: int, seed: int = 0) -> list[str]:
    """Decimal 128-bit job ids, as the manager makes them (uuid4().int)."""
    rng = random.Random(seed)
    return [str(rng.getrandbits(128)) for _ in range(count)]


def mark_done(paths: RunPaths, names: Sequence[str]) -> int:
    """Leave on disk what finished jobs of ``JOB_SIZE`` files leave; returns the job count."""
    jobs = math.ceil(len(names) / JOB_SIZE)
    fastq_names = []
    for index, jobid in enumerate(job_ids(jobs)):
        engine = f"gpu{index % ENGINES:03d}"
        group = names[index * JOB_SIZE : (index + 1) * JOB_SIZE]
        done = paths.input_dir / job_folder(FolderKind.DONE, jobid, engine)
        os.mkdir(done)
        done_fd = os.open(done, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in group:
                os.symlink(os.path.join(os.pardir, name), name, dir_fd=done_fd)
        finally:
            os.close(done_fd)
        fastq_names.extend(final_fastq_name(jobid, raw_stem(name) + ".fastq") for name in group)
        os.mkdir(paths.output_folder(FolderKind.LOGOUTPUT, jobid, engine))
    write_files(paths.pass_dir, fastq_names, FASTQ_BYTES)
    return jobs


@dataclass(frozen=True)
class SyntheticRun:
    root: Path
    paths: RunPaths
    raw: int
    done: int
    seconds_to_build: float

    @property
    def pending(self) -> int:
        return self.raw - self.done

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def build_run(workdir: Path, raw: int, done: int = 0, label: str = "run") -> SyntheticRun:
    """A run of ``raw`` complete raw files, the first ``done`` of them basecalled."""
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix=f"bcm-bench-{label}-", dir=workdir))
    paths = RunPaths(root / "input", root / "output")
    try:
        for folder in (paths.input_dir, paths.output_dir, paths.pass_dir, paths.fail_dir):
            folder.mkdir()
        names = raw_names(raw)
        write_files(paths.input_dir, names, RAW_BYTES)
        mark_done(paths, names[:done])
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return SyntheticRun(root, paths, raw, done, time.perf_counter() - started)


# -- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A server process on 127.0.0.1 that the benchmark started, and what /proc says of it."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.command = command
        self.env = {**os.environ, **env}
        self.log = log
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the process; returns the perf_counter second just before it was spawned."""
        started = time.perf_counter()
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return started

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def check_alive(self) -> None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.command} exited: {self.log.read_text()[-2000:]}")

    def wait_answering(self, route: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until ``route`` answers 200."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if client.get(route).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        raise TimeoutError(f"{self.command} did not answer {route} in {timeout} s")

    def rss_bytes(self) -> int:
        """Resident memory now (VmRSS of /proc/PID/status)."""
        return _status_field(self.pid, "VmRSS")

    def peak_rss_bytes(self) -> int:
        return _status_field(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        """CPU time the process's threads have used so far, to the nanosecond: the first field
        of each thread's /proc schedstat (/proc/PID/stat counts in ticks of 10 ms)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
        return total / 1e9

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=30)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _status_field(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def bcmanager_serve(run: SyntheticRun, **settings: str) -> Process:
    """A real ``bcmanager serve`` on ``run`` (not started yet); ``settings`` are BCM_* values.
    Its DONEs are not accounted (``BCM_ACCOUNT_READS``): the raw files hold no reads, and the
    account's own cost is measured by figure 9 (account.py)."""
    port = free_port()
    env = {
        "BCM_INPUT_DIR": str(run.paths.input_dir),
        "BCM_OUTPUT_DIR": str(run.paths.output_dir),
        "BCM_HOST": HOST,
        "BCM_PORT": str(port),
        "BCM_ACCOUNT_READS": "false",
        **{f"BCM_{key.upper()}": value for key, value in settings.items()},
    }
    command = [sys.executable, "-m", "bcmanager", "serve"]
    return Process(command, env, run.root / f"serve-{port}.log", port)


# -- figures ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as took:`` leaves the elapsed seconds in ``took[0]``."""
    took: list[float] = []
    started = time.perf_counter()
    try:
        yield took
    finally:
        took.append(time.perf_counter() - started)


@dataclass(frozen=True)
class Row:
    """One line of the results table. ``ratio`` is bcmanager over baseline (lower is better)."""

    figure: str
    bcmanager: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None  # None: a figure shown for reading, without a target


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_table(rows: Sequence[Row], file: object = None) -> None:
    header = ("figure", "bcmanager", "baseline", "ratio", "target", "")
    lines = [
        (
            row.figure,
            row.bcmanager,
            row.baseline,
            "" if row.ratio is None else f"{row.ratio:.2f}",
            row.target,
            {True: "pass", False: "MISS", None: ""}[row.passed],
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    out = sys.stdout if file is None else file
    for cells in [header, tuple("-" * width for width in widths), *lines]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)),
              file=out)  # fmt: skip


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs, {memory:.0f} GiB RAM, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load}"
    )


def arguments(description: str) -> argparse.Namespace:
    """The options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--full", action="store_true", help="the full sizes (slow) instead of the quick set"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where synthetic runs are built and removed after (default {DEFAULT_WORKDIR})",
    )
    return parser.parse_args()


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_alone(doc: str | None, measure: Callable[[bool, Path], Sequence[Row]]) -> None:
    """What a figure's script does when run by itself: its rows, as one table."""
    args = arguments((doc or "").splitlines()[0])
    print(machine())
    print_table(measure(args.full, args.workdir))
