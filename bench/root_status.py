"""Figure 10: a page that polls /status of a root of 1,000 runs does not hold the event loop.

A root of 1,000 runs in MinKNOW's layout (``exp/sample<n>/<run folder>/pod5/``), each with 10
raw files, 5 of them basecalled and 5 pending: every run has a backlog, lag and rates, the most
work its line in the runs table can cost. One real ``bcmanager serve`` serves it. A prober asks,
one request at a time every 10 ms, /ready and /heartbeat in turn. /ready does nothing but
answer, so its latency is the longest the event loop made a request wait: the stall; /heartbeat
is what a liveness probe or the Slurm watchdog asks (the issue's figure; it costs O(raw folders)
itself). Both are measured in the same run, in alternating windows: with a page open (a client
that asks /status every 2 s, as the page does) and, the baseline, with none. Target: the longest
/ready with the page open under 20 ms. The p99s, and the time and size of one /status, are for
reading. Run it with PYTHONPATH on another checkout's src/ to measure that code.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
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

from bcmanager.paths import RunPaths

RUNS = 1_000
FILES_PER_RUN = 10
DONE_PER_RUN = 5
QUICK_WINDOWS = 2  # windows of each kind
FULL_WINDOWS = 6
WINDOW_SECONDS = 10.0
PROBE_EVERY = 0.010
PAGE_POLL = 2.0  # the page's POLL_MS
TARGET_SECONDS = 0.020
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


def page(url: str, stop: threading.Event, took: list[float], sizes: list[int]) -> None:
    """What an open page asks: /status every ``PAGE_POLL`` s after the last answer."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            began = time.perf_counter()
            reply = client.get("/status")
            reply.raise_for_status()
            took.append(time.perf_counter() - began)
            sizes.append(len(reply.content))
            stop.wait(PAGE_POLL)


def measure(full: bool, workdir: Path) -> list[Row]:
    windows = FULL_WINDOWS if full else QUICK_WINDOWS
    progress(f"root status: building a root of {RUNS:,} runs of {FILES_PER_RUN} raw files")
    root = build_root(workdir)
    alone: dict[str, list[float]] = {"/ready": [], "/heartbeat": []}
    polled: dict[str, list[float]] = {"/ready": [], "/heartbeat": []}
    took: list[float] = []
    sizes: list[int] = []
    try:
        with bcmanager_serve(root) as server:
            server.start()
            server.wait_answering("/ready")
            probe(server.url, 1.0, {"/ready": [], "/heartbeat": []})  # warm up
            for window in range(windows):
                progress(f"root status: window {window + 1} of {windows}, no page, then a page")
                probe(server.url, WINDOW_SECONDS, alone)
                stop = threading.Event()
                poller = threading.Thread(target=page, args=(server.url, stop, took, sizes))
                poller.start()
                try:
                    probe(server.url, WINDOW_SECONDS, polled)
                finally:
                    stop.set()
                    poller.join()
    finally:
        shutil.rmtree(root.root, ignore_errors=True)
    longest, base_longest = max(polled["/ready"]), max(alone["/ready"])
    rows = [
        Row(
            f"longest /ready, a page polling /status of {RUNS:,} runs (vs no page)",
            ms(longest),
            ms(base_longest),
            longest / base_longest,
            f"< {TARGET_SECONDS * 1000:.0f} ms",
            longest < TARGET_SECONDS,
        )
    ]
    for route in ("/ready", "/heartbeat"):
        p99, base_p99 = percentile(polled[route], 99), percentile(alone[route], 99)
        rows.append(
            Row(
                f"{route} p99, a page polling /status of {RUNS:,} runs (vs no page)",
                ms(p99),
                ms(base_p99),
                p99 / base_p99,
                "",
                None,
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
