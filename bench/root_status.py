"""Figure 10: a page that polls /status of a root of 1,000 runs does not hold the event loop.

A root of 1,000 runs in MinKNOW's layout (``exp/sample<n>/<run folder>/pod5/``), each with 10
raw files, 5 of them basecalled and 5 pending: every run has a backlog, lag and rates, the most
work its line in the runs table can cost.

In this process, a manager of that root makes /status's snapshot of every run again and again
while a ticker coroutine wakes every millisecond and records the longest gap between two
wake-ups (as in figure 6): the snapshot as /status makes it now (in slices, each run's line
serialised at once) beside the baseline, the same snapshot made and serialised in one go, as
/status made it before. Target: the longest gap of a snapshot under 20 ms, the median over the
snapshots (as in figure 9); the worst of them is for reading. The first row is the floor: the
ticker alone for one second, after (a loaded machine shows tens of milliseconds).

Then one real ``bcmanager serve`` serves the root. A prober asks, one request at a time every
10 ms, /ready and /heartbeat in turn. /ready does nothing but answer, so its latency is the
longest the event loop made a request wait; /heartbeat is what a liveness probe or the Slurm
watchdog asks (the issue's figure; it costs O(raw folders) itself). Both are measured in the
same run, in alternating windows: with a page open (a client that asks /status every 2 s, as
the page does) and, the baseline, with none. Target: /ready's p99 with the page open under
20 ms. The longest /ready is for reading: a single probe of 3,000, it moves with the machine's
other load from run to run, which the in-process figure separates out with its floor. The
server's periodic rescan is set to an hour (``BCM_RESCAN_INTERVAL`` in the environment
overrides it): every 30 s, the default, the rescans of 1,000 raw folders hold the loop by
themselves, page or not, and would hide what the page does. Run the script with PYTHONPATH on
another checkout's src/ to measure that code.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import queue
import shutil
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import httpx
from _common import (
    RAW_BYTES,
    Row,
    SyntheticRun,
    bcmanager_serve,
    mark_done,
    median,
    ms,
    percentile,
    progress,
    raw_names,
    run_alone,
    write_files,
)
from loop_lag import longest_gap

from bcmanager.facility.facility import Facility
from bcmanager.http.status import line_json, with_runs
from bcmanager.paths import RunPaths
from bcmanager.settings import Settings

RUNS = 1_000
FILES_PER_RUN = 10
DONE_PER_RUN = 5
QUICK_POLLS = 10  # snapshots of each kind made in this process
FULL_POLLS = 30
QUICK_WINDOWS = 2  # windows of each kind
FULL_WINDOWS = 6
WINDOW_SECONDS = 10.0
PROBE_EVERY = 0.010
PAGE_POLL = 2.0  # the page's POLL_MS
TARGET_SECONDS = 0.020
# Seconds from ready to the first measurement: what start-up leaves to the background holds
# the loop by itself at first (74 ms once, page or not).
SETTLE = 3.0
RUN_FOLDER = "20241201_1200_X{n}_FAS{n:05d}_0123abcd"


def build_root(workdir: Path) -> SyntheticRun:
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bcm-bench-root-status-", dir=workdir))
    paths = RunPaths(root / "input", root / "output")
    for n in range(RUNS):
        run = Path("exp") / f"sample{n}" / RUN_FOLDER.format(n=n)
        raw = paths.input_dir / run / "pod5"
        output = paths.output_dir / run
        for folder in (raw, output / "pass", output / "fail"):
            folder.mkdir(parents=True)
        names = raw_names(FILES_PER_RUN, start=n * FILES_PER_RUN)
        write_files(raw, names, RAW_BYTES)
        mark_done(RunPaths(raw, output), names[:DONE_PER_RUN])
    files = RUNS * FILES_PER_RUN
    return SyntheticRun(root, paths, files, RUNS * DONE_PER_RUN, time.perf_counter() - started)


async def in_process(root: SyntheticRun, polls: int) -> tuple[float, dict[str, list[float]]]:
    """The longest gap of a 1 ms ticker alone for a second, and its longest gap during each of
    ``polls`` snapshots of every run made as /status makes them (``sliced``), and as many made
    in one go (``whole``)."""
    settings = Settings(
        input_dir=root.paths.input_dir,
        output_dir=root.paths.output_dir,
        account_reads=False,
        rescan_interval=3600,
    )
    facility = Facility(settings)

    async def idle() -> None:
        await asyncio.sleep(1.0)

    async def sliced() -> None:
        with_runs(*await facility.status_async(None, line_json))

    async def whole() -> None:
        facility.status().model_dump_json()

    await facility.start()
    try:
        while not facility.ready:
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE)
        gaps: dict[str, list[float]] = {"sliced": [], "whole": []}
        for kind, work in (("sliced", sliced), ("whole", whole)):
            # One kind after the other, each from a full collection: the objects that one
            # snapshot in one go leaves to the old generation set off a full collection (tens
            # of ms at this size) during whatever runs next.
            gc.collect()
            for _ in range(polls):
                gap, _ = await longest_gap(work)
                gaps[kind].append(gap)
        floor, _ = await longest_gap(idle)  # once the start's own work in threads is over
    finally:
        await facility.stop()
    return floor, gaps


def probe(url: str, seconds: float, latencies: dict[str, list[float]]) -> None:
    """Latencies of /ready and /heartbeat in turn, one request every ``PROBE_EVERY`` s."""
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for route, took in latencies.items():
                began = time.perf_counter()
                client.get(route).raise_for_status()
                took.append(time.perf_counter() - began)
                time.sleep(PROBE_EVERY)


def page(url: str, stop: EventType, answers: Queue[tuple[float, int]]) -> None:
    """What an open page asks: /status every ``PAGE_POLL`` s after the last answer; each
    answer's seconds and bytes go to ``answers``. It runs in a process of its own: reading
    1.3 MB in the prober's process would hold the prober's GIL and delay its requests."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            began = time.perf_counter()
            reply = client.get("/status")
            reply.raise_for_status()
            answers.put((time.perf_counter() - began, len(reply.content)))
            stop.wait(PAGE_POLL)


def measure(full: bool, workdir: Path) -> list[Row]:
    windows = FULL_WINDOWS if full else QUICK_WINDOWS
    polls = FULL_POLLS if full else QUICK_POLLS
    progress(f"root status: building a root of {RUNS:,} runs of {FILES_PER_RUN} raw files")
    root = build_root(workdir)
    alone: dict[str, list[float]] = {"/ready": [], "/heartbeat": []}
    polled: dict[str, list[float]] = {"/ready": [], "/heartbeat": []}
    took: list[float] = []
    sizes: list[int] = []
    try:
        progress(f"root status: {polls} snapshots of every run of each kind, in this process")
        floor, gaps = asyncio.run(in_process(root, polls))
        rescan = os.environ.get("BCM_RESCAN_INTERVAL", "3600")
        with bcmanager_serve(root, rescan_interval=rescan) as server:
            server.start()
            server.wait_answering("/ready")
            probe(server.url, SETTLE, {"/ready": [], "/heartbeat": []})
            for window in range(windows):
                progress(f"root status: window {window + 1} of {windows}, no page, then a page")
                probe(server.url, WINDOW_SECONDS, alone)
                stop = multiprocessing.Event()
                answers: Queue[tuple[float, int]] = multiprocessing.Queue()
                poller = multiprocessing.Process(target=page, args=(server.url, stop, answers))
                poller.start()
                try:
                    probe(server.url, WINDOW_SECONDS, polled)
                finally:
                    stop.set()
                    poller.join()
                while True:
                    try:
                        seconds, size = answers.get(timeout=0.5)
                    except queue.Empty:
                        break
                    took.append(seconds)
                    sizes.append(size)
    finally:
        shutil.rmtree(root.root, ignore_errors=True)
    ours, theirs = median(gaps["sliced"]), median(gaps["whole"])
    longest, base_longest = max(polled["/ready"]), max(alone["/ready"])
    rows = [
        Row("longest loop stall, nothing to do (floor)", ms(floor), "", None, "", None),
        Row(
            f"longest loop stall, /status of {RUNS:,} runs, median of {polls} (vs in one go)",
            ms(ours),
            ms(theirs),
            ours / theirs,
            f"< {TARGET_SECONDS * 1000:.0f} ms",
            ours < TARGET_SECONDS,
        ),
        Row(
            f"longest loop stall, /status of {RUNS:,} runs, the worst of {polls} (vs in one go)",
            ms(max(gaps["sliced"])),
            ms(max(gaps["whole"])),
            max(gaps["sliced"]) / max(gaps["whole"]),
            "",
            None,
        ),
        Row(
            f"longest /ready, a page polling /status of {RUNS:,} runs (vs no page)",
            ms(longest),
            ms(base_longest),
            longest / base_longest,
            "",
            None,
        ),
    ]
    for route in ("/ready", "/heartbeat"):
        p99, base_p99 = percentile(polled[route], 99), percentile(alone[route], 99)
        rows.append(
            Row(
                f"{route} p99, a page polling /status of {RUNS:,} runs (vs no page)",
                ms(p99),
                ms(base_p99),
                p99 / base_p99,
                f"< {TARGET_SECONDS * 1000:.0f} ms" if route == "/ready" else "",
                p99 < TARGET_SECONDS if route == "/ready" else None,
            )
        )
    rows.append(
        Row(
            f"/status of {RUNS:,} runs: median time, size",
            f"{ms(median(took))}, {median(sizes) / 1e6:.2f} MB",
            "",
            None,
            "",
            None,
        )
    )
    return rows


if __name__ == "__main__":
    run_alone(__doc__, measure)
