"""Figure 4: detection latency, from the moment a raw file is complete to its first offer.

A writer in this process creates each raw file in place as a sequencer does: the first part,
a pause, then the last bytes (the end signature); the moment ``close`` returns is the moment
the file is complete. A client asks ``bcmanager serve`` for work every 5 ms; the first reply that
offers the file ends the measure. Files come one at a time after a random pause, so that their
completions fall at random moments of the watcher's debounce and of the rescan period.

In event mode (the default settings) the target is a p99 under 1 s; in polling mode
(BCM_FORCE_POLLING, as on NFS or Lustre) under the rescan interval plus 1 s. The baseline, run
at the same time on the same files, is bench/bare_detector.py: watchfiles with the manager's
settings, or a plain listing every rescan interval, with the same completeness probe and
nothing else (no HTTP, no state).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import (
    FASTQ_BYTES,
    Process,
    Row,
    SyntheticRun,
    bcmanager_serve,
    build_run,
    percentile,
    progress,
    raw_names,
    run_alone,
)

from bcmanager.core.scan import POD5_SIGNATURE

EVENT_TARGET = 1.0
POLL_MARGIN = 1.0  # polling target: the rescan interval plus this
QUICK = {"files": 25, "polled_files": 10, "rescan": 2.0}
FULL = {"files": 200, "polled_files": 50, "rescan": 5.0}
ASK_EVERY = 0.005
WRITE_PAUSE = (0.05, 0.3)  # seconds a file stays half-written
GIVE_UP_AFTER = 30.0


@dataclass
class Detections:
    """Seconds from completion to detection, per file, for bcmanager and for the baseline."""

    manager: list[float]
    bare: list[float]


class BareDetector:
    """bench/bare_detector.py in a subprocess, its reports collected by a reader thread."""

    def __init__(self, folder: Path, *mode: str) -> None:
        script = Path(__file__).with_name("bare_detector.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script), *mode[:1], str(folder), *mode[1:]],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.seen: dict[str, float] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            name, stamp = line.split()
            self.seen[name] = float(stamp)

    def wait_for(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(name not in self.seen for name in names) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def write_in_place(path: Path, rng: random.Random) -> float:
    """Write a raw file in two steps; returns the monotonic second it became complete."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, POD5_SIGNATURE + bytes(8))
        time.sleep(rng.uniform(*WRITE_PAUSE))
        os.write(fd, POD5_SIGNATURE)
    finally:
        os.close(fd)
    return time.monotonic()


def first_offer(client: httpx.Client, name: str) -> float:
    """Ask for work until ``name`` is offered; returns that monotonic second."""
    deadline = time.monotonic() + GIVE_UP_AFTER
    while time.monotonic() < deadline:
        batch = client.get("/assignwork", params={"engineid": "bench", "batchsize": 1}).json()
        if batch["batch"]:
            offered = time.monotonic()
            # A DONE with no reads file is not done (the file would be offered again).
            output = Path(batch["output_dir"], batch["job_output_dir"], "pass")
            output.mkdir(parents=True, exist_ok=True)
            (output / "reads.fastq").write_bytes(FASTQ_BYTES)
            client.get("/completed", params={"job_id": batch["jobid"], "job_state": "DONE"})
            if batch["batch"] != [name]:
                raise RuntimeError(f"offered {batch['batch']}, expected {name}")
            return offered
        time.sleep(ASK_EVERY)
    raise TimeoutError(f"{name} was not offered within {GIVE_UP_AFTER} s")


def detect(
    run: SyntheticRun, server: Process, bare: BareDetector, count: int, gap: float
) -> Detections:
    rng = random.Random(0)
    names = raw_names(count, start=10_000_000)
    completed, offered = {}, {}
    server.start()
    server.wait_answering("/ready")
    time.sleep(1.0)  # both watchers settle
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in names:
            time.sleep(rng.uniform(0, gap))
            completed[name] = write_in_place(run.paths.input_dir / name, rng)
            offered[name] = first_offer(client, name)
    bare.wait_for(names, timeout=gap + GIVE_UP_AFTER)
    missing = [name for name in names if name not in bare.seen]
    if missing:
        raise RuntimeError(f"the baseline never saw {len(missing)} files")
    return Detections(
        [offered[name] - completed[name] for name in names],
        [bare.seen[name] - completed[name] for name in names],
    )


def one_mode(workdir: Path, polling: bool, count: int, rescan: float) -> Detections:
    run = build_run(workdir, raw=0, label="detect")
    settings = {"force_polling": "true", "rescan_interval": str(rescan)} if polling else {}
    server = bcmanager_serve(run, **settings)
    mode = ("poll", str(rescan)) if polling else ("events",)
    bare = BareDetector(run.paths.input_dir, *mode)
    try:
        with server:
            return detect(run, server, bare, count, rescan if polling else 0.5)
    finally:
        bare.stop()
        run.remove()


def row(label: str, found: Detections, target: float) -> Row:
    ours, base = found.manager, found.bare
    p99 = percentile(ours, 99)
    return Row(
        f"detection p50 / p99, {label}",
        f"{percentile(ours, 50) * 1000:.0f} / {p99 * 1000:.0f} ms",
        f"{percentile(base, 50) * 1000:.0f} / {percentile(base, 99) * 1000:.0f} ms",
        p99 / percentile(base, 99),
        f"p99 < {target:g} s",
        p99 < target,
    )


def measure(full: bool, workdir: Path) -> list[Row]:
    sizes = FULL if full else QUICK
    rescan = sizes["rescan"]
    progress(f"detection: {sizes['files']} files by events")
    events = one_mode(workdir, False, int(sizes["files"]), rescan)
    progress(f"detection: {sizes['polled_files']} files by polling every {rescan:g} s")
    polled = one_mode(workdir, True, int(sizes["polled_files"]), rescan)
    return [
        row("events (inotify)", events, EVENT_TARGET),
        row(f"polling every {rescan:g} s", polled, rescan + POLL_MARGIN),
    ]


if __name__ == "__main__":
    run_alone(__doc__, measure)
