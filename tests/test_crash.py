"""kill -9 at random instants, again and again, while hostile engines work, an operator meddles
and the sequencer writes: every raw file is still basecalled exactly once (docs/design.md,
invariants 1 to 5, and "Engines and operators are not polite").

A real ``bcmanager serve`` process is killed with SIGKILL at random instants and restarted on
the same port until it has been killed ``BCM_SOAK_KILLS`` times (5 in ``make test``, 100 in
``make soak``). Meanwhile engines (threads with httpx) cycle assign, keepalive, basecall (they
read each raw file of the batch with ``pod5`` through the job folder's link), complete; they
retry through the outages, some die mid-job, some fail half-way and report FAILED (the manager
retries the files in halves, and sets aside one that fails alone on two engines), and some jobs
are hostile (``Hostile``): late writes into a recreated output folder, stragglers after DONE,
pass/ a symlink into INPUT_DIR or to a scratch FASTQ, DONE with nothing written, a FASTQ named
like another job's, DONE twice, DONE after being told late; and what Dorado does to reads: a
POD5 file skipped with exit 0, reads split into pieces (named as Dorado names them), a FASTQ
cut short by a crash mid-write, each reported DONE (the manager's account of the reads rejects
the files whose reads did not all come out, and they are basecalled again). Each kind happens
at least once per run, then at random. An operator deletes or moves away complete raw files
and drops a POD5 file whose name is not UTF-8 (never to be offered). The test's own sequencer
writes POD5 files in place, in chunks.

When the run is drained, the manager is restarted once more (recovery meets the hostile
leftovers) and stopped. Then the independent oracle (``oracle.py``: the test's own ledger of
read ids against every FASTQ record in pass/ and fail/) must find every read of every raw file
the operator kept exactly once (or its raw file set aside in a QUARANTINED_ folder), and
``bcmanager check`` must pass. The seed (``BCM_SOAK_SEED``, random if unset) is printed, and
decides the kill instants, the operator's deeds and each engine's choices.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import BinaryIO

import httpx
import pod5  # type: ignore[import-untyped]

from bcmanager.sim.sequencer import pod5_bytes
from conftest import Run, Server, fastq
from oracle import PIECES, job_folders, piece_id

KILLS = int(os.environ.get("BCM_SOAK_KILLS") or 5)
SEED = int(os.environ.get("BCM_SOAK_SEED") or random.randrange(2**32))
LEASE = 2  # seconds: a dead engine's work comes back quickly
ENGINES = 4
DEATH_RATE = 0.05  # share of jobs whose engine dies mid-job
FAIL_RATE = 0.05  # share of jobs whose basecaller fails half-way: reported FAILED
HOSTILE_RATE = 0.15  # share of jobs that do one hostile thing, once each kind has been done
FILES_AT_START = 30
FILES_PER_KILL = 4  # written by the sequencer while the kills go on
SECONDS_PER_FILE = 0.5
EXTRA_ROUNDS = 3  # at most, of a few more files for hostile kinds a kill kept from happening
WRITE_CHUNKS = 5
DELETIONS = max(2, KILLS // 10)  # raw files the operator deletes or moves away
UNDECODABLE = max(1, KILLS // 50)  # POD5 files named with bytes that are not UTF-8
# A hostile job names its FASTQ like the first of these raw files that is not in its batch.
FIRST_RAW_FILES = [f"raw_{index:04d}.pod5" for index in range(5)]
CHECK = [sys.executable, "-m", "bcmanager", "check"]


class Hostile(str, Enum):
    """What a hostile job does; the value says it in words for the summary."""

    LATE_WRITE = "late write into a recreated output folder"
    STRAGGLER = "straggler rewriting its FASTQ after DONE"
    PASS_TO_INPUT = "pass/ a symlink to INPUT_DIR"
    PASS_TO_SCRATCH = "pass/ a symlink to a scratch FASTQ"
    EMPTY_DONE = "DONE with nothing written"
    COLLIDING_NAME = "FASTQ named like another job's"
    DONE_TWICE = "DONE twice"
    DONE_AFTER_LATE = "DONE after told late"
    # What Dorado does to reads (docs/protocol.md, the simulated basecaller's options):
    SKIPPED_FILE = "a POD5 file skipped as Dorado skips one it cannot open, DONE"
    SPLIT_READS = "reads split, the pieces named as Dorado names them, DONE"
    CUT_SHORT = "a FASTQ cut short by a crash mid-write, DONE"


@dataclass
class Tally:
    """What the engines and the operator saw (shared by threads, under a lock)."""

    counts: Counter[str] = field(default_factory=Counter)
    hostile: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # what must never happen
    decoys: dict[Path, bytes] = field(default_factory=dict)  # scratch FASTQ that must stay put
    restarts: int = 0  # the manager's restarts so far
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set as an engine sends a request that changes the run: the killer aims some kills at it.
    changing: threading.Event = field(default_factory=threading.Event)
    # The first of each hostile kind, in an order the seed decides; then chance decides.
    plan: deque[Hostile] = field(default_factory=deque)

    def add(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def did(self, hostile: Hostile) -> None:
        with self.lock:
            self.hostile[hostile.value] += 1

    def again(self, hostile: Hostile) -> None:
        with self.lock:
            self.plan.append(hostile)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)

    def next_hostile(self, rng: random.Random) -> Hostile | None:
        with self.lock:
            if self.plan:
                return self.plan.popleft()
        return rng.choice(list(Hostile)) if rng.random() < HOSTILE_RATE else None


@dataclass
class Ledger:
    """The test's own record, beside ``Run.reads``: files whose last chunk is being written
    (complete an instant later, so the manager may offer them already)."""

    finishing: set[str] = field(default_factory=set)
    deleted_while_pending: str | None = None  # deleted before any engine started
    lock: threading.Lock = field(default_factory=threading.Lock)


def write_fastq(folder: Path, name: str, read_ids: list[str]) -> None:
    """One FASTQ file, written under a hidden name and renamed into place (so no merge meets
    it half-written). ``folder`` is made if missing, but never its parents."""
    folder.mkdir(exist_ok=True)
    partial = folder / f".{name}.partial"
    partial.write_text(fastq(read_ids))
    os.replace(partial, folder / name)


def fastq_name(raw_name: str) -> str:
    return raw_name.removesuffix(".pod5") + ".fastq"


class Engine(threading.Thread):
    """A GPU-node agent: retries through outages with bounded backoff, and sometimes misbehaves."""

    def __init__(
        self,
        name: str,
        run: Run,
        ledger: Ledger,
        server: Server,
        seed: int,
        stop: threading.Event,
        tally: Tally,
        scratch: Path,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.run_, self.ledger, self.url = run, ledger, server.url
        self.rng, self.stop, self.tally, self.scratch = random.Random(seed), stop, tally, scratch
        self.incarnation = 0

    def run(self) -> None:
        try:
            self.cycle()
        except Exception as error:  # a thread's exception would pass unseen: report it
            where = traceback.extract_tb(error.__traceback__)[-1]
            self.tally.error(f"{self.name}: {error!r} at line {where.lineno} ({where.line})")

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
                self.tally.add("assigned")
                self.check_offer(batch)
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

    def check_offer(self, batch: dict) -> None:
        """Only complete raw files the test wrote are offered, never one named otherwise."""
        names = batch["batch"]
        with self.ledger.lock:
            known = [n in self.run_.reads or n in self.ledger.finishing for n in names]
        for name, ok in zip(names, known, strict=True):
            if not ok or name in self.run_.never_offered:
                self.tally.error(f"offered {name!r}: no complete raw file the test wrote")
            if name == self.ledger.deleted_while_pending:
                self.tally.error(f"offered {name}, deleted while pending before any engine asked")

    def late(self, client: httpx.Client, jobid: str, state: str) -> bool:
        reply = self.call(client, "/keepalive", job_id=jobid, job_state=state)
        return reply is None or reply.json()["late"]

    def complete(
        self, client: httpx.Client, jobid: str, state: str = "DONE"
    ) -> httpx.Response | None:
        reply = self.call(client, "/completed", job_id=jobid, job_state=state)
        if reply is not None:
            done = "completed" if state == "DONE" else f"reported {state}"
            self.tally.add(f"{done} {reply.status_code}")
        return reply

    def read_batch(self, job_input: Path, names: list[str]) -> dict[str, list[str]] | None:
        """What the basecaller reads: the read ids of each raw file of the batch it can still
        open through the job folder's link (an operator may have deleted some); None when the
        job folder is gone (the lease ran out and the folders moved)."""
        if not job_input.is_dir():
            return None
        found = {}
        for name in names:
            try:
                with pod5.Reader(job_input / name) as reader:
                    found[name] = [str(read.read_id) for read in reader.reads()]
            except (OSError, RuntimeError):
                self.tally.add("raw file gone at basecall")
        return found

    def basecall(self, output: Path, reads: dict[str, list[str]], sub: str = "pass") -> bool:
        """One FASTQ per raw file under ``output/sub``; False if the output folder is gone."""
        try:
            for name, ids in reads.items():
                write_fastq(output / sub, fastq_name(name), ids)
        except FileNotFoundError:
            return False
        return True

    def wait_gone(self, folder: Path, seconds: float) -> bool:
        """Until ``folder`` is gone (the manager moved it), at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while os.path.lexists(folder):
            if time.monotonic() > deadline or self.stop.wait(0.05) or self.abandoned():
                return False
        return True

    def abandoned(self) -> bool:
        """Whether the job's output folder stays where it is for good (never, in one run)."""
        return False

    def recreate(self, output: Path) -> bool:
        """Make the job's output folder again, as a late engine does; False when the folder
        that held it is gone too (its run moved, with its output)."""
        try:
            output.mkdir(exist_ok=True)
        except FileNotFoundError:
            return False
        return True

    def work(self, client: httpx.Client, batch: dict) -> None:
        jobid, names = batch["jobid"], batch["batch"]
        job_input = Path(batch["input_dir"]) / batch["job_input_dir"]
        output = Path(batch["output_dir"]) / batch["job_output_dir"]
        if self.late(client, jobid, "STARTED"):
            self.tally.add("told late")
            return
        hostile = self.tally.next_hostile(self.rng)
        reads = self.read_batch(job_input, names)
        if reads is None:
            self.tally.add("job folder gone")
        elif hostile is None:
            self.polite(client, jobid, output, reads)
            return
        elif self.misbehave(hostile, client, jobid, output, names, reads):
            self.tally.did(hostile)
            return
        if hostile is not None:
            self.tally.again(hostile)  # not carried out (the lease was lost): a later job does it

    def polite(
        self, client: httpx.Client, jobid: str, output: Path, reads: dict[str, list[str]]
    ) -> None:
        """Basecalls and reports DONE; or dies mid-job; or its basecaller fails half-way and it
        reports FAILED (the files are retried, in halves, and set aside if they fail alone)."""
        fate = self.rng.random()
        failed = DEATH_RATE <= fate < DEATH_RATE + FAIL_RATE
        if failed:
            reads = dict(list(reads.items())[: len(reads) // 2])
        if not self.basecall(output, reads):
            self.tally.add("job folder gone")
        elif fate < DEATH_RATE:
            self.tally.add("died mid-job")
            self.incarnation += 1  # the node comes back under a new name
        elif self.late(client, jobid, "PROCESSING"):
            self.tally.add("told late")
        else:
            self.complete(client, jobid, "FAILED" if failed else "DONE")

    def misbehave(
        self,
        hostile: Hostile,
        client: httpx.Client,
        jobid: str,
        output: Path,
        names: list[str],
        reads: dict[str, list[str]],
    ) -> bool:
        """Do the job as ``hostile`` says; False if that could not be carried out."""
        if hostile is Hostile.LATE_WRITE:
            return self.late_write(client, jobid, output, reads)
        if hostile is Hostile.DONE_AFTER_LATE:
            return self.done_after_late(client, jobid, output, reads)
        if not self.write_output(hostile, jobid, output, names, reads):
            return False
        if self.late(client, jobid, "PROCESSING"):
            return False
        reply = self.complete(client, jobid)
        if reply is None or reply.status_code != 200:
            return False
        if hostile is Hostile.DONE_TWICE:
            again = self.complete(client, jobid)
            if again is not None and (again.status_code, again.json()) != (200, {"ok": True}):
                self.tally.error(f"job {jobid}: DONE again got {again.status_code} {again.text}")
        elif hostile is Hostile.STRAGGLER:
            # Its FASTQ again, under the same names, once the manager merged them (not when
            # the run's whole output folder went, its run moved).
            if not self.wait_gone(output, 5) or not self.recreate(output):
                return False
            self.basecall(output, reads)
        return True

    def write_output(
        self,
        hostile: Hostile,
        jobid: str,
        output: Path,
        names: list[str],
        reads: dict[str, list[str]],
    ) -> bool:
        """The job's output, as ``hostile`` has it; False if the output folder is gone."""
        if hostile is Hostile.EMPTY_DONE:
            return output.is_dir()
        if hostile is Hostile.SKIPPED_FILE:
            return self.basecall(output, dict(list(reads.items())[1:])) and output.is_dir()
        if hostile is Hostile.SPLIT_READS:
            pieces = {
                name: [piece_id(read, index) for read in ids for index in range(PIECES)]
                for name, ids in reads.items()
            }
            return self.basecall(output, pieces)
        if hostile is Hostile.CUT_SHORT:
            if not reads or not self.basecall(output, reads):
                return False
            last = output / "pass" / fastq_name(list(reads)[-1])
            lines = last.read_text().splitlines(keepends=True)
            last.write_text("".join(lines[:-1]))  # the last record without its qualities
            return True
        if hostile is Hostile.COLLIDING_NAME:
            # All its reads in one FASTQ named like the first raw files', which others basecall.
            other = next(n for n in FIRST_RAW_FILES if n not in names)
            return self.basecall(output, {other: list(itertools.chain(*reads.values()))})
        if hostile in (Hostile.PASS_TO_INPUT, Hostile.PASS_TO_SCRATCH):
            # The real output in fail/ (or none at all), and pass/ a link out of the folder.
            if self.rng.random() < 0.5 and not self.basecall(output, reads, "fail"):
                return False
            target = self.run_.input_dir
            if hostile is Hostile.PASS_TO_SCRATCH:
                target = self.scratch / f"decoy_{jobid}"
                write_fastq(target, "decoy.fastq", [f"decoy-{jobid}-{n}" for n in range(2)])
                decoy = target / "decoy.fastq"
                with self.tally.lock:
                    self.tally.decoys[decoy] = decoy.read_bytes()
            try:
                os.symlink(target, output / "pass")
            except FileNotFoundError:
                return False
            return True
        return self.basecall(output, reads)

    def late_write(
        self, client: httpx.Client, jobid: str, output: Path, reads: dict[str, list[str]]
    ) -> bool:
        """Sends nothing until the manager took the lease back and moved the output folder away,
        then writes its FASTQ into a recreated one and reports DONE: that must be refused."""
        if not self.wait_gone(output, 120) or not self.recreate(output):
            return False
        self.basecall(output, reads)
        reply = self.complete(client, jobid)
        if reply is not None and reply.status_code == 200:
            self.tally.error(f"job {jobid}: completed after its lease was taken back")
        return True

    def done_after_late(
        self, client: httpx.Client, jobid: str, output: Path, reads: dict[str, list[str]]
    ) -> bool:
        """Stalls just past its lease (before the reaper takes it back, mostly) until it is told
        it is late (a restart adopts the job afresh), then completes anyway: refused, unless a
        restart adopted the job in between."""
        if not self.basecall(output, reads):
            return False
        for _ in range(20):
            if self.stop.wait(LEASE + 0.1):
                return False
            restarts = self.tally.restarts
            if self.late(client, jobid, "PROCESSING"):
                break
        else:
            return False
        reply = self.complete(client, jobid)
        if reply is not None and reply.status_code == 200 and self.tally.restarts == restarts:
            self.tally.error(f"job {jobid}: told late, then completed")
        return True


def write_in_chunks(
    raw: BinaryIO, data: bytes, finishing: Callable[[], None], lock: threading.Lock
) -> None:
    """A POD5 file written in place in chunks, as MinKNOW writes one, so that it exists
    half-written for a while; ``finishing`` is called (under ``lock``) before the last chunk."""
    bounds = [len(data) * n // WRITE_CHUNKS for n in range(WRITE_CHUNKS + 1)]
    for start, end in itertools.pairwise(bounds):
        if end == len(data):
            with lock:
                finishing()
        raw.write(data[start:end])
        raw.flush()
        if end < len(data):
            time.sleep(SECONDS_PER_FILE / 2 / WRITE_CHUNKS)


def sequence(run: Run, ledger: Ledger, names: list[str], stop: threading.Event) -> None:
    """The sequencer: each file written in place in chunks, so it exists half-written for a
    while; its read ids go into the ledger once its last chunk is written."""
    for name in names:
        reads = random.Random(f"{SEED}:{name}").randint(1, 4)
        data, ids = pod5_bytes(name, reads, seed=SEED % 1000)
        with (run.input_dir / name).open("xb") as raw:
            write_in_chunks(raw, data, partial(ledger.finishing.add, name), ledger.lock)
        with ledger.lock:
            run.reads[name] = ids
            ledger.finishing.discard(name)
        if stop.wait(SECONDS_PER_FILE / 2):
            return


def operate(
    run: Run, ledger: Ledger, rng: random.Random, seconds: float, scratch: Path, tally: Tally
) -> None:
    """The operator: deletes or moves away complete raw files (leased, done, or in no job
    folder, by turns, as ``ls`` shows them), and drops POD5 files named with bytes that are not
    UTF-8, at random instants over ``seconds``."""
    deeds = ["delete", "move away"] * (DELETIONS // 2) + ["delete"] * (DELETIONS % 2)
    deeds += ["undecodable"] * UNDECODABLE
    rng.shuffle(deeds)
    aims = itertools.cycle(["ASSIGNED_", "DONE_", None])  # None: in no job folder
    started = time.monotonic()
    instants = sorted(rng.uniform(0, seconds) for _ in deeds)
    for number, (instant, deed) in enumerate(zip(instants, deeds, strict=True)):
        time.sleep(max(0.0, started + instant - time.monotonic()))
        with ledger.lock:
            if deed == "undecodable":
                run.add_undecodable(b"raw_\xff\xfe_%d.pod5" % number)
                tally.add(deed)
                continue
            # Not the files hostile jobs name their FASTQ after: they must stay for that to bite.
            kept = sorted(set(run.reads) - run.deleted - run.never_offered - set(FIRST_RAW_FILES))
            held, aim = job_folders(run.input_dir)[0], next(aims)
            aimed = [
                name
                for name in kept
                if (any(f.startswith(aim) for f in held[name]) if aim else not held[name])
            ]
            name = rng.choice(aimed or kept)
            try:
                run.delete(name, move_to=scratch if deed == "move away" else None)
            except FileNotFoundError:  # not the operator's doing: the oracle will say
                tally.error(f"the operator found {name} gone from INPUT_DIR")
                continue
        tally.add(f"{deed} ({(aim or 'in no job folder') if aimed else 'any'})")


def wait_drained(
    server: Server, run: Run, tally: Tally, seconds: float, stop: threading.Event | None = None
) -> None:
    """Until nothing is left to do and every raw file the operator kept is done or failed;
    fails at once if the engines ``stop`` (on a 5xx)."""
    kept = len(set(run.reads) - run.deleted - run.never_offered)
    deadline = time.monotonic() + seconds
    while True:
        assert stop is None or not stop.is_set(), f"seed {SEED}: engines stopped: {tally.errors}"
        files = server.get("/status").json()["files"]
        idle = files["pending"] + files["leased"] + files["waiting"] == 0
        if idle and files["done"] + files["failed"] >= kept:
            return
        assert time.monotonic() < deadline, f"seed {SEED}: not drained: {files} {tally.counts}"
        time.sleep(0.2)


def wait_for_status(server: Server, pending: int, seconds: float) -> dict[str, int] | None:
    """Until /status counts ``pending`` files pending and one missing; else what it counts."""
    deadline = time.monotonic() + seconds
    while True:
        files: dict[str, int] = server.get("/status").json()["files"]
        if files["pending"] == pending and files.get("missing") == 1:
            return None
        if time.monotonic() > deadline:
            return files
        time.sleep(0.1)


def check_failures(run: Run) -> tuple[list[str], list[str]]:
    """``bcmanager check``'s BROKEN and REPAIR lines, and all its output."""
    check = subprocess.run(
        [*CHECK, "--input", str(run.input_dir), "--output", str(run.output_dir)],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=60,
    )
    lines = check.stdout.splitlines()
    failures = [line for line in lines if line.startswith(("BROKEN", "REPAIR"))]
    if check.returncode != (1 if failures else 0):
        failures.append(f"check exited {check.returncode}: {check.stderr}")
    return failures, lines


def repair(line: str) -> str:
    """What one recovery line of the log did, in a word or two ("set aside", "recreated",
    "moved" for a step of a DONE_ rolled forward, ...)."""
    words = line.split("recovery: ", 1)[1].split()
    if words[0].endswith(":"):  # "<job folder>: what rolling it forward did"
        words = words[1:]
    return " ".join(words[:2] if words[0] in ("set", "left", "could", "removed") else words[:1])


def test_kill_9_at_random_instants_loses_nothing_and_basecalls_nothing_twice(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    print(f"\ncrash test: {KILLS} kills, seed {SEED} (BCM_SOAK_SEED={SEED} repeats the plan)")
    rng = random.Random(SEED)
    for index in range(FILES_AT_START):
        run.add(f"raw_{index:04d}.pod5", read_count=rng.randint(1, 4))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ledger, stop, tally = Ledger(), threading.Event(), Tally()
    tally.plan.extend(rng.sample(list(Hostile), len(Hostile)))
    late_files = [
        f"PAO12345_pass_{SEED % 1000}_{index}.pod5" for index in range(FILES_PER_KILL * KILLS)
    ]
    server = start_server(BCM_REPORT_BACK_PERIOD=str(LEASE), BCM_RESCAN_INTERVAL="1")
    # Before any engine asks, the operator deletes a raw file the manager holds as pending: it
    # is dropped, counted as missing, and never offered.
    ledger.deleted_while_pending = f"raw_{FILES_AT_START - 1:04d}.pod5"
    run.delete(ledger.deleted_while_pending)
    dropped = wait_for_status(server, FILES_AT_START - 1, 5)
    engines = [
        Engine(f"gpu{index}", run, ledger, server, rng.randrange(2**32), stop, tally, scratch)
        for index in range(ENGINES)
    ]
    sequencer = threading.Thread(target=sequence, args=(run, ledger, late_files, stop), daemon=True)
    operator = threading.Thread(
        target=operate,
        args=(run, ledger, random.Random(rng.random()), KILLS * 0.5, scratch, tally),
        daemon=True,
    )
    started = time.monotonic()
    for thread in (sequencer, operator, *engines):
        thread.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.0, 1.0))
            if rng.random() < 0.5:  # aim: within a few ms of a request that changes the run
                tally.changing.clear()
                tally.changing.wait(timeout=2)
                time.sleep(rng.uniform(0.0, 0.003))
            server.kill()
            server.start()
            with tally.lock:
                tally.restarts += 1
        sequencer.join(timeout=60 + len(late_files) * SECONDS_PER_FILE)
        operator.join(timeout=30)
        for thread in (sequencer, operator):
            assert not thread.is_alive(), f"seed {SEED}: {thread.name} did not finish"
        wait_drained(server, run, tally, 60, stop)
        for round_ in range(EXTRA_ROUNDS):
            # A hostile kind whose lease a kill took was planned again: on a slow machine the
            # run may drain first, so a few more files give each such kind a job to happen in.
            with tally.lock:
                left = len(tally.plan)
            if not left:
                break
            sequence(run, ledger, [f"again_{round_}_{index}.pod5" for index in range(left)], stop)
            wait_drained(server, run, tally, 60, stop)
    finally:
        stop.set()
        for engine in engines:
            engine.join(timeout=30)
    # Once more, with every hostile leftover in place for recovery to meet.
    server.kill()
    server.start()
    wait_drained(server, run, tally, 30)
    took = time.monotonic() - started
    server.stop()

    verdict = run.judge()
    failures, lines = check_failures(run)
    log = server.log.read_text().splitlines()
    repairs = Counter(repair(line) for line in log if "recovery: " in line)
    repairs["adopted"] = sum("adopted job" in line for line in log)
    print(
        f"crash test: {KILLS} kills in {took:.1f} s, seed {SEED}; {len(run.reads)} raw files "
        f"({len(run.deleted)} deleted or moved away by the operator, {len(run.never_offered)} "
        f"named with bytes that are not UTF-8); {tally.counts['assigned']} jobs; oracle: "
        f"{verdict.summary()}; hostile jobs: {dict(tally.hostile)}; repairs at restart: "
        f"{dict(repairs)}; engines: {dict(tally.counts)}"
    )
    findings = [*tally.errors, *verdict.problems, *(f"check: {line}" for line in failures)]
    if dropped is not None:
        findings.append(
            f"{ledger.deleted_while_pending}, deleted while pending, still counted after 5 s: "
            f"{dropped}"
        )
    findings += [f"never done: {kind.value}" for kind in Hostile if kind.value not in tally.hostile]
    findings += [
        f"the merge took {decoy}"
        for decoy, data in tally.decoys.items()
        if not decoy.is_file() or decoy.read_bytes() != data
    ]
    assert findings == [], f"seed {SEED}:\n" + "\n".join([*findings, "check said:", *lines])
