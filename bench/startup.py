"""Figure 1: start-up recovery, from ``bcmanager serve`` to the first file offered.

The manager's cost is the time from the start of ``bcmanager serve`` on a run of N raw files (half
of them done, in the real on-disk layout) to the first /assignwork reply that offers a file, less
the same on an empty run (one raw file, no history): what remains is what the run's size costs,
not uvicorn's start. The clock starts at uvicorn's "Waiting for application startup" line, once
Python has imported the service: that import takes the same half second or so for every run, but
it varies by a tenth of a second from one start to the next on a busy machine, more than a small
run's whole figure. (The server's CPU time, shown too, counts from the spawn.)

The baseline is the I/O that no manager can avoid before it knows what to offer: os.scandir of
INPUT_DIR, of every job folder in it, of OUTPUT_DIR and its pass/ and fail/; then the first and
last 8 bytes of every raw file that no job folder records as done, opened by name relative to
the open folder (the cheapest way from Python). It runs in this process, on the same warm page
cache, right before each pair of server starts. Each figure is the median of several repeats
(the server's CPU time is read from /proc, in ticks of 10 ms). Target: ratio <= 1.0 at every
size, and a cost per file that does not grow.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from _common import (
    HOST,
    Process,
    Row,
    SyntheticRun,
    bcmanager_serve,
    build_run,
    median,
    ms,
    progress,
    run_alone,
    stopwatch,
)

from bcmanager.paths import RunPaths, is_raw_name

# Sizes, each with its number of repeats: small runs need more, their figure being small.
QUICK_REPEATS = {10_000: 15, 100_000: 5}
FULL_REPEATS = {10_000: 15, 100_000: 9, 1_000_000: 5}
# The client asks for work every 2% of the bare pass's time (5 to 50 ms): often enough to round
# the figure by 2% at most, seldom enough that answering it costs the starting server little.
POLL_SHARE = 0.02
POLL_MIN = 0.005
POLL_MAX = 0.05
LISTEN_STEP = 0.001  # seconds between attempts to connect while the server starts
SIGNATURE_SIZE = 8
# uvicorn's line before the lifespan starts, in bcmanager's text log format (logs.TEXT_FORMAT).
LIFESPAN_LINE = re.compile(r"^(\S+ \S+) INFO Waiting for application startup\.$", re.MULTILINE)
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def bare_pass(paths: RunPaths) -> int:
    """The unavoidable I/O of a start-up, done as cheaply as Python can; returns how many raw
    files it read. Names are opened relative to the open folder, as the manager opens them."""
    raw, folders, recorded = [], [], set()
    with os.scandir(paths.input_dir) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
            elif is_raw_name(entry.name):
                raw.append(entry.name)
    for folder in folders:
        with os.scandir(folder) as entries:
            recorded.update([entry.name for entry in entries])
    for folder in (paths.output_dir, paths.pass_dir, paths.fail_dir):
        with os.scandir(folder) as entries:
            for _ in entries:
                pass
    read = 0
    folder_fd = os.open(paths.input_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in raw:
            if name in recorded:
                continue
            fd = os.open(name, os.O_RDONLY, dir_fd=folder_fd)
            try:
                os.pread(fd, SIGNATURE_SIZE, 0)
                os.lseek(fd, -SIGNATURE_SIZE, os.SEEK_END)
                os.read(fd, SIGNATURE_SIZE)
            finally:
                os.close(fd)
            read += 1
    finally:
        os.close(folder_fd)
    return read


@dataclass(frozen=True)
class Start:
    offered: float  # seconds from the start of the app's lifespan to the first offer
    cpu: float  # CPU seconds the server had used by then, since it was spawned
    ready: float  # seconds from the lifespan's start to /ready: every raw file probed


def lifespan_started(log: Path) -> float:
    """The wall-clock second uvicorn logged that it starts the app's lifespan, in which the
    manager recovers the run: what comes before (Python importing the service) is the same for
    every run, and so unsteady on a busy machine that it would drown a small run's figure."""
    stamps = LIFESPAN_LINE.findall(log.read_text())
    if not stamps:
        raise RuntimeError(f"no lifespan start in {log}")
    return datetime.strptime(stamps[-1], LOG_TIME).timestamp()


def wait_listening(server: Process) -> None:
    """Until the server accepts connections, trying every millisecond with a bare socket: a
    refused connect costs microseconds, so the waiting neither rounds the figure nor takes CPU
    from the server as it starts (an HTTP client's failed attempt costs a millisecond)."""
    while True:
        with socket.socket() as probe:
            if probe.connect_ex((HOST, server.port)) == 0:
                return
        server.check_alive()
        time.sleep(LISTEN_STEP)


def first_offer(server: Process, poll: float) -> Start:
    """Start ``server``, wait until it listens, then ask for work every ``poll`` seconds until
    it offers a file. The file is given back (STOPPED), so the run is the same for the next
    start."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        server.start()
        wait_listening(server)
        while True:
            batch = client.get("/assignwork", params={"engineid": "bench", "batchsize": 1}).json()
            if batch["batch"]:
                offered, cpu = time.time(), server.cpu_seconds()
                client.get("/completed", params={"job_id": batch["jobid"], "job_state": "STOPPED"})
                break
            time.sleep(poll)
    server.wait_answering("/ready")
    ready = time.time()
    began = lifespan_started(server.log)
    return Start(offered - began, cpu, ready - began)


def start_up(run: SyntheticRun, poll: float) -> Start:
    with bcmanager_serve(run) as server:
        return first_offer(server, poll)


@dataclass(frozen=True)
class Size:
    """Medians of several repeats at one size."""

    raw: int
    bare: float  # seconds of the bare pass
    bare_cpu: float
    offered: float  # seconds to the first offer, less the same on an empty run
    cpu: float  # the server's CPU seconds by then, less the same on an empty run
    ready: float  # seconds to /ready (not less the empty run)


def measure_size(workdir: Path, empty: SyntheticRun, raw: int, repeats: int) -> Size:
    progress(f"start-up: building {raw:,} raw files, half done")
    run = build_run(workdir, raw=raw, done=raw // 2, label=f"startup{raw}")
    progress(f"start-up: built in {run.seconds_to_build:.1f} s; {repeats} starts of each")
    try:
        bare_pass(run.paths)  # fills the page cache for everyone alike
        bare, bare_cpu, base, large = [], [], [], []
        for _ in range(repeats):
            cpu_before = time.process_time()
            gc.disable()  # the floor: collections of this process's objects are no I/O
            with stopwatch() as took:
                read = bare_pass(run.paths)
            gc.enable()
            bare_cpu.append(time.process_time() - cpu_before)
            bare.append(took[0])
            assert read == run.pending, (read, run.pending)
            poll = min(POLL_MAX, max(POLL_MIN, POLL_SHARE * median(bare)))
            base.append(start_up(empty, poll))
            large.append(start_up(run, poll))
    finally:
        run.remove()
    size = Size(
        raw,
        median(bare),
        median(bare_cpu),
        median([s.offered for s in large]) - median([s.offered for s in base]),
        median([s.cpu for s in large]) - median([s.cpu for s in base]),
        median([s.ready for s in large]),
    )
    progress(
        f"start-up {raw:,}: first offer after {ms(size.offered)} more than on an empty run "
        f"(CPU {ms(size.cpu)}), bare pass {ms(size.bare)} (CPU {ms(size.bare_cpu)}); "
        f"every file probed after {ms(size.ready)}"
    )
    return size


def measure(full: bool, workdir: Path) -> list[Row]:
    repeats = FULL_REPEATS if full else QUICK_REPEATS
    empty = build_run(workdir, raw=1, label="empty")
    try:
        sizes = [measure_size(workdir, empty, raw, count) for raw, count in repeats.items()]
    finally:
        empty.remove()
    rows = []
    for size in sizes:
        rows += [
            Row(
                f"start-up to first offer, {size.raw:,} raw (half done)",
                ms(size.offered),
                ms(size.bare),
                size.offered / size.bare,
                "<= 1.0",
                size.offered <= size.bare,
            ),
            # CPU seconds are what a busy machine's queue for its cores does not add to.
            Row(
                f"start-up CPU to first offer, {size.raw:,} raw (half done)",
                ms(size.cpu),
                ms(size.bare_cpu),
                size.cpu / size.bare_cpu,
                "",
                None,
            ),
        ]
    largest, previous = sizes[-1], sizes[-2]
    growth = (largest.offered / largest.raw) / (previous.offered / previous.raw)
    rows += [
        Row(
            f"start-up growth per file, {largest.raw:,} vs {previous.raw:,}",
            f"{largest.offered / largest.raw * 1e6:.2f} us/file",
            f"{previous.offered / previous.raw * 1e6:.2f} us/file",
            growth,
            "<= 1.2 (linear)",
            growth <= 1.2,
        ),
    ]
    return rows


if __name__ == "__main__":
    run_alone(__doc__, measure)
