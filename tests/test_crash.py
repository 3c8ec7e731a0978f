"""kill -9 at random instants, again and again, while engines work and the sequencer writes:
every raw file is still basecalled exactly once (docs/design.md, invariants 1, 2, 4 and 5).

A real ``bcmanager serve`` process is killed with SIGKILL at random instants and restarted on
the same port until it has been killed ``BCM_SOAK_KILLS`` times (5 in ``make test``, 100 in
``make soak``). Meanwhile engines (threads with httpx) cycle assign, keepalive, basecall with the
simulated basecaller, complete; they retry through the outages, some die mid-job, and some
come back after their lease ran out. A simulated sequencer keeps writing POD5 files in place.
When the run is drained, ``bcmanager check`` must pass, and the FASTQ in pass/ and fail/ must
hold every read of every raw file exactly once. The seed (``BCM_SOAK_SEED``, random if unset)
is printed, and decides the kill instants and each engine's choices.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pod5  # type: ignore[import-untyped]

from bcmanager.paths import FAIL, PASS, fastq_raw_stem, raw_stem
from bcmanager.simulate import SimulatorError, basecall, run_sequencer
from conftest import Run, Server

KILLS = int(os.environ.get("BCM_SOAK_KILLS") or 5)
SEED = int(os.environ.get("BCM_SOAK_SEED") or random.randrange(2**32))
LEASE = 2  # seconds: a dead engine's work comes back quickly
ENGINES = 4
DEATH_RATE = 0.05  # share of jobs whose engine dies mid-job
LATE_RATE = 0.03  # share of jobs whose engine stalls past its lease, then completes
FILES_AT_START = 30
FILES_PER_KILL = 4  # written by the sequencer while the kills go on
SECONDS_PER_FILE = 0.5
CHECK = [sys.executable, "-m", "bcmanager", "check"]


@dataclass
class Tally:
    """What the engines saw, for the printed summary (shared by threads, under a lock)."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # what must never happen
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set as an engine sends a request that changes the run: the killer aims some kills at it.
    changing: threading.Event = field(default_factory=threading.Event)

    def add(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


class Engine(threading.Thread):
    """A GPU-node agent: retries through outages with bounded backoff, and sometimes misbehaves."""

    def __init__(self, name: str, url: str, seed: int, stop: threading.Event, tally: Tally):
        super().__init__(name=name, daemon=True)
        self.url, self.rng, self.stop, self.tally = url, random.Random(seed), stop, tally
        self.incarnation = 0

    def run(self) -> None:
        try:
            self.cycle()
        except Exception as error:  # a thread's exception would pass unseen: report it
            self.tally.error(f"{self.name}: {error!r}")

    def cycle(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                engine = f"{self.name}.{self.incarnation}"
                size = self.rng.randint(1, 4)
                reply = self.call(client, "/assignwork", engineid=engine, batchsize=size)
                if reply is None:
                    return
                batch = reply.json()
                if batch["batch_size"] == 0:
                    time.sleep(0.05)
                    continue
                self.work(client, batch)

    def call(self, client: httpx.Client, route: str, **params: str | int) -> httpx.Response | None:
        """The reply, retrying while the manager is down; None once the test stops."""
        pause = 0.02
        while not self.stop.is_set():
            if route != "/keepalive":
                self.tally.changing.set()
            try:
                reply = client.get(route, params=params)
            except httpx.TransportError:
                self.tally.add(f"retried {route}")
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            if reply.status_code >= 500:
                self.tally.error(f"{route} {params}: {reply.status_code} {reply.text}")
                self.stop.set()
                return None
            return reply
        return None

    def late(self, client: httpx.Client, jobid: str, state: str) -> bool:
        reply = self.call(client, "/keepalive", job_id=jobid, job_state=state)
        return reply is None or reply.json()["late"]

    def work(self, client: httpx.Client, batch: dict) -> None:
        jobid = batch["jobid"]
        if self.late(client, jobid, "STARTED"):
            self.tally.add("told late")
            return
        fate = self.rng.random()
        try:
            basecall(
                Path(batch["input_dir"]) / batch["job_input_dir"],
                Path(batch["output_dir"]) / batch["job_output_dir"],
                seconds_per_read=0.002,
            )
        except (SimulatorError, OSError):
            self.tally.add("job folder gone")  # the lease ran out and the folders moved
            return
        if fate < DEATH_RATE:
            self.tally.add("died mid-job")
            self.incarnation += 1  # the node comes back under a new name
            return
        if fate < DEATH_RATE + LATE_RATE:
            self.tally.add("stalled past the lease")
            time.sleep(LEASE + 0.5)
        elif self.late(client, jobid, "PROCESSING"):
            self.tally.add("told late")
            return
        reply = self.call(client, "/completed", job_id=jobid, job_state="DONE")
        if reply is not None:
            self.tally.add(f"completed {reply.status_code}")


def read_ids_of_raw(path: Path) -> list[str]:
    with pod5.Reader(path) as reader:
        return sorted(str(read.read_id) for read in reader.reads())


def fastq_by_stem(output_dir: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for sub in (PASS, FAIL):
        for path in (output_dir / sub).iterdir():
            stem = fastq_raw_stem(path.name)
            assert stem is not None, path
            found.setdefault(stem, []).append(path)
    return found


def read_ids_of_fastq(path: Path) -> list[str]:
    return sorted(line[1:].split()[0] for line in path.read_text().splitlines()[::4])


def sequence(input_dir: Path, files: int) -> None:
    asyncio.run(
        run_sequencer(
            input_dir,
            files=files,
            reads_per_file=3,
            interval=SECONDS_PER_FILE / 2,
            write_seconds=SECONDS_PER_FILE / 2,
            seed=SEED % 1000,
        )
    )


def drained(server: Server, total: int) -> bool:
    try:
        files = server.get("/status").json()["files"]
    except httpx.TransportError:
        return False
    return bool(files["done"] == total and files["pending"] + files["leased"] == 0)


def test_kill_9_at_random_instants_loses_nothing_and_basecalls_nothing_twice(
    run: Run, start_server: Callable[..., Server]
) -> None:
    print(f"\ncrash test: {KILLS} kills, seed {SEED} (BCM_SOAK_SEED={SEED} repeats the plan)")
    rng = random.Random(SEED)
    for index in range(FILES_AT_START):
        run.add(f"raw_{index:04d}.pod5", read_count=rng.randint(1, 4))
    late_files = FILES_PER_KILL * KILLS
    total = FILES_AT_START + late_files
    server = start_server(BCM_REPORT_BACK_PERIOD=str(LEASE), BCM_RESCAN_INTERVAL="1")
    stop, tally = threading.Event(), Tally()
    engines = [
        Engine(f"gpu{index}", server.url, rng.randrange(2**32), stop, tally)
        for index in range(ENGINES)
    ]
    sequencer = threading.Thread(target=sequence, args=(run.input_dir, late_files), daemon=True)
    started = time.monotonic()
    sequencer.start()
    for engine in engines:
        engine.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.0, 1.0))
            if rng.random() < 0.5:  # aim: within a few ms of a request that changes the run
                tally.changing.clear()
                tally.changing.wait(timeout=2)
                time.sleep(rng.uniform(0.0, 0.003))
            server.kill()
            server.start()
        sequencer.join(timeout=60 + late_files * SECONDS_PER_FILE)
        assert not sequencer.is_alive(), f"seed {SEED}: the sequencer did not finish"
        deadline = time.monotonic() + 60
        while not drained(server, total):
            assert time.monotonic() < deadline, f"seed {SEED}: not drained: {tally.counts}"
            time.sleep(0.2)
    finally:
        stop.set()
        for engine in engines:
            engine.join(timeout=30)
    took = time.monotonic() - started
    server.stop()
    assert tally.errors == [], f"seed {SEED}"

    check = subprocess.run(
        [*CHECK, "--input", str(run.input_dir), "--output", str(run.output_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, f"seed {SEED}:\n{check.stdout}{check.stderr}"
    assert check.stdout.splitlines()[-1] == "all invariants hold"

    raw_files = sorted(run.input_dir.glob("*.pod5"))
    assert len(raw_files) == total
    fastq = fastq_by_stem(run.output_dir)
    assert sorted(fastq) == sorted(raw_stem(path.name) for path in raw_files), f"seed {SEED}"
    for raw in raw_files:
        [output] = fastq[raw_stem(raw.name)]  # exactly one FASTQ per raw file
        assert read_ids_of_fastq(output) == read_ids_of_raw(raw), f"seed {SEED}: {raw.name}"

    log = server.log.read_text().splitlines()
    repairs = Counter(
        line.split("recovery: ")[1].split()[0] for line in log if "recovery: " in line
    )
    repairs["adopted"] = sum("adopted job" in line for line in log)
    print(
        f"crash test: {KILLS} kills in {took:.1f} s, {total} raw files basecalled once each; "
        f"repairs at restart: {dict(repairs)}; engines: {dict(tally.counts)}"
    )
