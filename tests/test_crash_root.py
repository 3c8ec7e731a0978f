"""kill -9 at random instants on a root of runs: every read of every raw file the operator kept
comes out once, in its own run's output, and none in another's (docs/runs.md; the crash test
of one run, ``test_crash.py``, on a whole sequencer).

A real ``bcmanager serve`` on a root is killed with SIGKILL at random instants and restarted
until it has been killed ``BCM_SOAK_KILLS`` times (5 in ``make test``, 100 in ``make soak``).
The root is laid out as MinKNOW lays one out (``<experiment>/<sample>/<run>/pod5/``, or
``pod5_pass/barcode01/`` and the like), and the same hostile engines as the run's crash test
basecall each batch through its absolute ``input_dir``/``job_input_dir``. Meanwhile the test's
sequencer writes POD5 files in chunks into the runs, starts new runs while they are served,
writes a file into a run once it is sealed (which unseals it), and writes each run's
``final_summary_*.txt`` when it stops, so that runs finish, complete (a completion command,
a report) and are sealed. An operator, through the authenticated routes, raises a run's
priority, pauses a run and resumes it (no batch of it is offered while it is paused), sends
quarantined files back, moves a run to another path of the root and deletes another.

When every run the operator kept is complete, the manager is restarted once more and stopped.
Then the oracle (``oracle.py``) judges each run at read level: every read of every raw file of
a kept run once in that run's output folder, at its final path (or its file quarantined),
nothing of another run there, no reads merged anywhere else; the deleted run's output holds
only its own reads, at most once. Each kept run has its report and its seal, and the
completion command ran at most once per run. ``bcmanager check`` must pass on the root. The
seed (``BCM_SOAK_SEED``) is shared with the run's crash test and printed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bcmanager.sim.sequencer import pod5_bytes
from conftest import RUN_NAME, Run, Server
from oracle import RootRun, Verdict, stray_reads
from test_crash import (
    KILLS,
    LEASE,
    SECONDS_PER_FILE,
    SEED,
    Engine,
    Hostile,
    Ledger,
    Tally,
    check_failures,
    repair,
    write_in_chunks,
)

ENGINES = 4
TOKEN = "operator-secret"
FILES_AT_START = 2  # in each raw folder of the runs there at the start
FILES_PER_KILL = 3  # written by the sequencer while the kills go on, over the runs
# The runs, by flow cell: experiment, sample, raw folders (relative to the run folder).
AT_START = {
    "PAA00001": ("expA", "s1", ("pod5",)),  # finished at once; a file written once it is sealed
    "PAA00002": ("expA", "s2", ("pod5_pass/barcode01", "pod5_pass/barcode02", "pod5_fail")),
    "PAB00003": ("expB", "s1", ("pod5",)),  # moved by the operator
    "PAB00004": ("expB", "s2", ("pod5",)),  # deleted by the operator
}
LATER = {  # runs that start while the root is served, at a third and two thirds of the writes
    "PAC00005": ("expC", "s1", ("pod5",)),
    "PAC00006": ("expC", "s2", ("pod5_pass/barcode03", "pod5_pass/barcode04")),
}
SEALED_FIRST, PAUSED, MOVED, DELETED = AT_START  # the operator raises PAUSED's priority too
EXTRA_ROUNDS = 3  # at most, of a new run for hostile kinds a kill kept from happening
LATE_FOLDER = "pod5_skip"  # where the file written into the sealed run goes: a new raw folder


@dataclass
class Root:
    """The test's own ledger of the root (shared by threads, under ``lock``)."""

    input_dir: Path
    output_dir: Path
    runs: dict[str, RootRun] = field(default_factory=dict)
    finishing: set[str] = field(default_factory=set)  # raw files whose last chunk is written
    # The operator's pause: when its reply came (and the kills so far), when resume was sent.
    paused_at: tuple[float, int] | None = None
    resumed_at: float | None = None
    kills: int = 0  # counted before each kill, so a reply seen at the same count is one process
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start_run(
        self, flow_cell: str, experiment: str, sample: str, raws: tuple[str, ...]
    ) -> RootRun:
        path = f"{experiment}/{sample}/{RUN_NAME.format(flow_cell=flow_cell)}"
        run = RootRun(flow_cell, path, tuple(raws))
        with self.lock:
            self.runs[flow_cell] = run
        return run

    def raw_path(self, run: RootRun, raw: str) -> tuple[Path, str]:
        """A new raw file's path in ``raw`` of ``run`` (made if missing; under ``lock``)."""
        name = f"{run.flow_cell}_{raw.replace('/', '_')}_{len(run.folder_of):03d}.pod5"
        folder = self.input_dir / run.path / raw
        folder.mkdir(parents=True, exist_ok=True)
        run.folder_of[name] = raw
        return folder / name, name

    def write(self, run: RootRun, raw: str, *, chunks: bool) -> None:
        """One POD5 file into ``raw`` of ``run``, whole or in chunks (its file handle follows
        the run if the operator moves it meanwhile)."""
        with self.lock:
            if run.deleted:
                return
            path, name = self.raw_path(run, raw)
            handle = path.open("xb")
        count = random.Random(f"{SEED}:{name}").randint(1, 4)
        data, ids = pod5_bytes(name, count, seed=SEED % 1000)
        with handle:
            if chunks:
                write_in_chunks(handle, data, partial(self.finishing.add, name), self.lock)
            else:
                handle.write(data)
        with self.lock:
            run.reads[name] = ids
            self.finishing.discard(name)

    def summary(self, run: RootRun) -> None:
        """MinKNOW's final summary, naming how many POD5 files the run wrote."""
        with self.lock:
            if run.deleted:
                return
            text = f"instrument=X1\nflow_cell_id={run.flow_cell}\n"
            text += f"pod5_files_in_final_dest={len(run.folder_of)}\n"
            folder = self.input_dir / run.path
            (folder / f"final_summary_{run.flow_cell}_0123abcd_89abcdef.txt").write_text(text)

    def kept(self) -> list[RootRun]:
        with self.lock:
            return [run for run in self.runs.values() if not run.deleted]


class RootEngine(Engine):
    """The run's crash-test engine on a root: each offer is checked against the root's ledger."""

    def __init__(self, root: Root, *args: Any) -> None:
        super().__init__(*args)
        self.root = root
        self.asked = 0.0
        self.job_run: RootRun | None = None  # the run of the job in hand

    def call(self, client: httpx.Client, route: str, **params: str | int) -> httpx.Response | None:
        if route == "/assignwork":
            self.asked = time.monotonic()  # no later than the request leaves
        return super().call(client, route, **params)

    def check_offer(self, batch: dict[str, Any]) -> None:
        """Every file of a batch is a complete raw file of the run the batch names, in one raw
        folder of it, which the batch's job folder sits in; none of a paused run."""
        folder = batch["job_input_dir"].rpartition("/")[0]
        with self.root.lock:
            runs = [
                r for r in self.root.runs.values() if batch["run_path"] in (r.path, *r.old_paths)
            ]
            paused, resumed, kills = self.root.paused_at, self.root.resumed_at, self.root.kills
            self.job_run = runs[0] if runs else None
            for name in batch["batch"]:
                known = runs and (name in runs[0].reads or name in self.root.finishing)
                if not known or f"{batch['run_path']}/{runs[0].folder_of[name]}" != folder:
                    self.tally.error(f"offered {name!r} in {batch['job_input_dir']}: no such file")
        if (
            runs
            and runs[0].flow_cell == PAUSED
            and paused is not None
            and paused[0] < self.asked
            and paused[1] == kills
            and (resumed is None or time.monotonic() < resumed)
        ):
            self.tally.error(f"offered {batch['batch']} of {PAUSED} while it was paused")

    def abandoned(self) -> bool:
        """A deleted run's output folder stays: its jobs' output is never moved away."""
        return self.job_run is not None and self.job_run.deleted


def sequence_root(
    root: Root, server: Server, writes: int, stop: threading.Event, tally: Tally
) -> None:
    """The sequencer: ``writes`` files in chunks over the runs still sequencing; new runs at a
    third and two thirds; a file into the run sealed first once it is sealed; each run's final
    summary when it stops."""
    rng = random.Random(f"{SEED}:sequencer")
    later = iter(LATER.items())
    for index in range(writes):
        if index == writes // 2:
            into_sealed(root, server, stop, tally)
        if index in (writes // 3, 2 * writes // 3):  # a new run's first file
            flow_cell, (experiment, sample, raws) = next(later)
            run = root.start_run(flow_cell, experiment, sample, raws)
        else:
            run = rng.choice([r for r in root.kept() if r.flow_cell != SEALED_FIRST])
        root.write(run, rng.choice(run.raw_folders), chunks=True)
        if stop.wait(SECONDS_PER_FILE / 2):
            return
    for run in root.kept():
        if run.flow_cell != SEALED_FIRST:
            root.summary(run)


def guarded(tally: Tally, work: Callable[..., None], *args: Any) -> None:
    """``work``, its exception reported (a thread's would pass unseen)."""
    try:
        work(*args)
    except Exception as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        tally.error(f"{work.__name__}: {error!r} at line {where.lineno} ({where.line})")


def into_sealed(root: Root, server: Server, stop: threading.Event, tally: Tally) -> None:
    """A raw file written into a new folder of the run that completed first, once it is sealed."""
    run = root.runs[SEALED_FIRST]
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            entry = runs_listed(server).get(run.path)
        except httpx.TransportError:
            entry = None
        if entry is not None and entry["sealed"]:
            root.write(run, LATE_FOLDER, chunks=True)
            tally.add("written into a sealed run")
            return
        time.sleep(0.2)
    tally.error(f"{SEALED_FIRST} was not sealed within 30 s")


def runs_listed(server: Server) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in server.get("/runs").json()["runs"]}


def operate(
    root: Root, server: Server, seed: float, seconds: float, scratch: Path, tally: Tally
) -> None:
    """The operator, at random instants over ``seconds``: raises a run's priority, pauses a run
    (and resumes it a second later), sends quarantined files back (twice), moves a run to
    another sample folder and deletes another (moved out of the root, then deleted)."""
    rng = random.Random(seed)
    deeds = ["priority", "pause", "retry", "retry", "move", "delete"]
    rng.shuffle(deeds)
    started = time.monotonic()
    for instant, deed in zip(sorted(rng.uniform(0, seconds) for _ in deeds), deeds, strict=True):
        time.sleep(max(0.0, started + instant - time.monotonic()))
        if deed == "priority":
            reply = operator_call(
                server, "/runs/priority", tally, run=root.runs[PAUSED].path, priority=10
            )
            if reply is not None and reply.json()["priority"] != 10:
                tally.error(f"priority: {reply.text}")
        elif deed == "pause":
            pause(root, server, tally)
        elif deed == "retry":
            reply = operator_call(server, "/retry", tally)
            if reply is not None:
                tally.add(f"retried {len(reply.json()['retried'])} quarantined files")
        elif deed == "move":
            with root.lock:
                root.runs[MOVED].move(root.input_dir)
        else:
            with root.lock:
                run = root.runs[DELETED]
                gone = scratch / run.flow_cell
                os.rename(root.input_dir / run.path, gone)
                run.deleted = True
            shutil.rmtree(gone)
        tally.add(f"operator: {deed}")


def pause(root: Root, server: Server, tally: Tally) -> None:
    """Pauses a run, then resumes it a second later (unless a restart forgot the pause)."""
    path = root.runs[PAUSED].path
    reply = operator_call(server, "/runs/pause", tally, run=path)
    if reply is None:
        return
    if not reply.json()["paused"]:
        tally.error(f"pause: {reply.text}")
    with root.lock:
        root.paused_at = (time.monotonic(), root.kills)
    time.sleep(1.0)
    with root.lock:
        root.resumed_at = time.monotonic()
    operator_call(server, "/runs/resume", tally, run=path)


def operator_call(server: Server, route: str, tally: Tally, **body: Any) -> httpx.Response | None:
    """POST ``route`` with the operator token, through outages (and a manager not ready yet:
    404 for a run it has not found again); None (and an error) if it never answers 200."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            unauthorized = httpx.post(f"{server.url}{route}", json=body or None, timeout=5)
            reply = httpx.post(
                f"{server.url}{route}",
                json=body or None,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=5,
            )
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if unauthorized.status_code != 401:
            tally.error(f"{route} without the token: {unauthorized.status_code}")
        if reply.status_code == 200:
            return reply
        if reply.status_code != 404:
            tally.error(f"{route} {body}: {reply.status_code} {reply.text}")
            return None
        time.sleep(0.1)
    tally.error(f"{route} {body}: never answered 200")
    return None


def wait_complete(
    server: Server, root: Root, tally: Tally, seconds: float, stop: threading.Event | None = None
) -> None:
    """Until every run the operator kept is complete, sealed, reported and its completion
    command recorded, and nothing is pending, leased or waiting."""
    deadline = time.monotonic() + seconds
    while True:
        assert stop is None or not stop.is_set(), f"seed {SEED}: engines stopped: {tally.errors}"
        listed = runs_listed(server)
        files = server.get("/status").json()["files"]
        outputs = [root.output_dir / run.path for run in root.kept()]
        done = all(
            listed.get(run.path, {}).get("phase") == "complete" and listed[run.path]["sealed"]
            for run in root.kept()
        ) and all(
            (output / name).is_file()
            for output in outputs
            for name in ("report.json", "bcm-run.json", "bcm-run-complete.json")
        )
        if done and files["pending"] + files["leased"] + files["waiting"] == 0:
            return
        assert time.monotonic() < deadline, f"seed {SEED}: not complete: {files}; " + str(
            {p: (e["phase"], e["sealed"], e["files"]) for p, e in listed.items()}
        )
        time.sleep(0.2)


def judge(root: Root) -> tuple[list[str], Counter[str]]:
    """The oracle on each run, and on the root: problems, and figures."""
    problems, figures = [], Counter[str]()
    for run in root.runs.values():
        verdict: Verdict = run.judge(root.input_dir, root.output_dir)
        problems += [f"{run.path}: {problem}" for problem in verdict.problems]
        figures["runs"] += 1
        figures["raw files deleted with their run" if run.deleted else "raw files"] += len(
            run.reads
        )
        figures["reads judged"] += verdict.reads
        figures["raw files done"] += verdict.done
        figures["quarantined"] += verdict.quarantined
    problems += stray_reads(
        root.output_dir, [root.output_dir / run.path for run in root.runs.values()]
    )
    for path in (root.output_dir / old for run in root.runs.values() for old in run.old_paths):
        if path.exists():
            problems.append(f"{path}: the moved run's output left at its old path")
    return problems, figures


def completion_problems(root: Root, ran: Path) -> list[str]:
    """The completion command ran at most once per run, and exactly once when its record says
    it ended; each kept run has that record."""
    times = (
        Counter(line.split("/")[2].split("_")[3] for line in ran.read_text().splitlines())
        if ran.exists()
        else Counter()
    )
    problems = [
        f"completion command ran {n} times for {cell}" for cell, n in times.items() if n > 1
    ]
    for run in root.kept():
        record = json.loads((root.output_dir / run.path / "bcm-run-complete.json").read_text())
        if "exit_status" in record and times[run.flow_cell] != 1:
            problems.append(
                f"{run.path}: completion recorded as run, yet ran {times[run.flow_cell]} times"
            )
    return problems


def test_kill_9_on_a_root_keeps_every_read_in_its_own_run(tmp_path: Path) -> None:
    print(f"\nroot crash test: {KILLS} kills, seed {SEED} (BCM_SOAK_SEED={SEED} repeats the plan)")
    rng = random.Random(f"{SEED}:root")
    root = Root(tmp_path / "root", tmp_path / "out")
    root.input_dir.mkdir()
    for flow_cell, (experiment, sample, raws) in AT_START.items():
        run = root.start_run(flow_cell, experiment, sample, raws)
        for raw in raws:
            for _ in range(FILES_AT_START):
                root.write(run, raw, chunks=False)
    root.summary(root.runs[SEALED_FIRST])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ran = tmp_path / "ran.txt"
    script = f"import sys; open({str(ran)!r}, 'a').write(sys.argv[1] + '\\n')"
    shell = Run(root.input_dir, root.output_dir)
    server = Server(
        shell,
        tmp_path / "serve.log",
        BCM_REPORT_BACK_PERIOD=str(LEASE),
        BCM_RESCAN_INTERVAL="1",
        BCM_OPERATOR_TOKEN=TOKEN,
        BCM_ON_RUN_COMPLETE=f"{sys.executable} -c {json.dumps(script)} {{run_path}}",
    ).start()
    stop, tally = threading.Event(), Tally()
    tally.plan.extend(rng.sample(list(Hostile), len(Hostile)))
    engines = [
        RootEngine(
            root, f"gpu{index}", shell, Ledger(), server, rng.randrange(2**32), stop, tally, scratch
        )
        for index in range(ENGINES)
    ]
    writes = FILES_PER_KILL * KILLS
    sequencer = threading.Thread(
        target=guarded, args=(tally, sequence_root, root, server, writes, stop, tally), daemon=True
    )
    operator = threading.Thread(
        target=guarded,
        args=(tally, operate, root, server, rng.random(), KILLS * 0.6, scratch, tally),
        daemon=True,
    )
    started = time.monotonic()
    try:
        for thread in (sequencer, operator, *engines):
            thread.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.0, 1.0))
            if rng.random() < 0.5:  # aim: within a few ms of a request that changes a run
                tally.changing.clear()
                tally.changing.wait(timeout=2)
                time.sleep(rng.uniform(0.0, 0.003))
            with root.lock:
                root.kills += 1
            server.kill()
            server.start()
            with tally.lock:
                tally.restarts += 1
        sequencer.join(timeout=60 + writes * SECONDS_PER_FILE)
        operator.join(timeout=60)
        for thread in (sequencer, operator):
            assert not thread.is_alive(), f"seed {SEED}: {thread.name} did not finish"
        wait_complete(server, root, tally, 90, stop)
        for round_ in range(EXTRA_ROUNDS):
            # A hostile kind whose lease a kill took was planned again: on a slow machine the
            # runs may complete first, so a new run of a few files gives each such kind a job.
            with tally.lock:
                left = len(tally.plan)
            if not left:
                break
            run = root.start_run(f"PAD0000{round_}", "expD", f"s{round_}", ("pod5",))
            for _ in range(left):
                root.write(run, "pod5", chunks=False)
            root.summary(run)
            wait_complete(server, root, tally, 90, stop)
    finally:
        stop.set()
        for engine in engines:
            engine.join(timeout=30)
        if server.process is not None and server.process.poll() is None:
            server.kill()
    server.start()
    time.sleep(1.0)  # its look at the sealed runs, once ready, may read one back
    wait_complete(server, root, tally, 30)
    took = time.monotonic() - started
    server.stop()

    problems, figures = judge(root)
    failures, lines = check_failures(shell)
    log = server.log.read_text().splitlines()
    repairs = Counter(repair(line) for line in log if "recovery: " in line)
    print(
        f"root crash test: {KILLS} kills in {took:.1f} s, seed {SEED}; {dict(figures)}; "
        f"{tally.counts['assigned']} jobs; hostile jobs: {dict(tally.hostile)}; repairs at "
        f"restart: {dict(repairs)}; engines and operator: {dict(tally.counts)}"
    )
    findings = [*tally.errors, *problems, *completion_problems(root, ran)]
    findings += [f"check: {line}" for line in failures]
    findings += [f"never done: {kind.value}" for kind in Hostile if kind.value not in tally.hostile]
    assert findings == [], f"seed {SEED}:\n" + "\n".join([*findings, "check said:", *lines])
