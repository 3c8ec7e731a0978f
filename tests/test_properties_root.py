"""Random runs of a root of runs, checked after every step (hypothesis.stateful): the property
test of one raw folder (``test_properties.py``) over a facility.

A rule-based state machine drives a Facility in-process on a root laid out as MinKNOW lays one
out, with a clock it moves by hand: new runs (``pod5/``, or barcoded ``pod5_pass/barcodeNN/``
and ``pod5_fail/``), new raw files (complete or still being written), assignments, output,
completions (DONE, FAILED, STOPPED), expiries, pauses, retries, an operator who moves a run to
another sample folder (followed live by a rescan, or by the next start as after a kill -9 that
came before the manager saw the move) or deletes one, and restarts (a new Facility rebuilt
from the folders alone). The test drives discovery and the rescans itself: no watcher, no
task of the facility's own runs between steps.

Each offer is checked against the test's ledger: files of one raw folder, of the run the batch
names, complete, never of a paused run. After each step the oracle (``oracle.py``) judges each
run on its own: no read twice, none of another run in its output, no raw file touched, and no
reads merged where no run's output is. At the end the sequencer finishes, a clean restart and
a polite engine drain the root, and every read of every raw file of a kept run must be in its
run's output folder exactly once, or its file quarantined.

``BCM_PROPERTY_EXAMPLES`` sets the random runs as for the run's property test, a fifth of them
here (10 in ``make test``, 200 in ``make soak``): a root's steps cost more.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bcmanager.core.state import InvalidTransition, UnknownJob
from bcmanager.facility.facility import Facility
from bcmanager.models import JobState
from bcmanager.settings import Settings
from bcmanager.sim.sequencer import pod5_bytes
from conftest import RUN_NAME, Clock, fastq
from oracle import RootRun, stray_reads

LEASE = 10
MAX_RUNS = 4
MAX_FILES = 30
ENGINES = st.sampled_from(["gpu1", "gpu2", "gpu3"])
OUTCOMES = st.sampled_from([JobState.DONE, JobState.FAILED, JobState.STOPPED])
RAW_FOLDERS = (("pod5",), ("pod5_pass/barcode01", "pod5_pass/barcode02", "pod5_fail"))
STATS: Counter[str] = Counter()  # what the random runs met, printed at the end


@dataclass
class RunModel(RootRun):
    """One run of the ledger, and whether an operator paused it."""

    paused: bool = False


@dataclass
class JobModel:
    run: RunModel
    files: list[str]
    output: str  # job_output_dir, relative to OUTPUT_DIR, as the engine was told


class RootMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="bcm-property-root-"))
        self.input_dir, self.output_dir = self.tmp / "root", self.tmp / "out"
        self.input_dir.mkdir()
        self.settings = Settings(
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            report_back_period=LEASE,
            default_batch_size=2,
            max_batch_size=4,
            force_polling=True,
        )
        self.clock = Clock()
        self.runs: list[RunModel] = []
        self.incomplete: dict[str, tuple[RunModel, Path, bytes, list[str]]] = {}
        self.jobs: dict[str, JobModel] = {}
        self.files = 0
        self.facility = self.boot()

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # the run so far held: now drain it and judge
                self.drain_and_judge()
        finally:
            shutil.rmtree(self.tmp)

    # -- helpers ----------------------------------------------------------------------------

    def boot(self) -> Facility:
        """A facility rebuilt from the folders alone, as after a restart (a kill -9 or not:
        the folders are all there is); its own tasks are stopped, the test drives it."""
        facility = Facility(self.settings, clock=self.clock)

        async def start() -> None:
            await facility.start()
            while not facility.ready:
                await asyncio.sleep(0.001)
            await facility.stop()

        asyncio.run(start())
        for run in self.runs:
            run.paused = False  # a pause lasts until the manager stops
        return facility

    def rescan(self) -> None:
        """What the watcher and the rescans do between steps: runs found, followed or dropped,
        raw files found in every raw folder."""
        facility = self.facility

        async def look() -> None:
            await facility.server.discover()
            await facility.server.drop_gone()
            for source in list(facility.registry.managers.values()):
                await source._rescan()

        asyncio.run(look())

    def kept(self) -> list[RunModel]:
        return [run for run in self.runs if not run.deleted]

    def run_named(self, path: str) -> RunModel | None:
        return next((run for run in self.runs if path in (run.path, *run.old_paths)), None)

    def write(self, run: RunModel, raw: str, *, complete: bool) -> None:
        name = f"{run.flow_cell}_{raw.replace('/', '_')}_{self.files:03d}.pod5"
        self.files += 1
        folder = self.input_dir / run.path / raw
        folder.mkdir(parents=True, exist_ok=True)
        data, ids = pod5_bytes(name, 1 + self.files % 3, seed=self.files)
        run.folder_of[name] = raw
        if complete:
            (folder / name).write_bytes(data)
            run.reads[name] = ids
        else:
            (folder / name).write_bytes(data[: len(data) // 2])
            self.incomplete[name] = (run, folder / name, data[len(data) // 2 :], ids)

    def live(self) -> list[str]:
        return sorted(self.jobs)

    # -- the sequencer ----------------------------------------------------------------------

    @precondition(lambda self: len(self.runs) < MAX_RUNS)
    @rule(barcoded=st.booleans(), rescan=st.booleans())
    def new_run(self, barcoded: bool, rescan: bool) -> None:
        index = len(self.runs)
        run = RunModel(
            f"PAX{index:05d}",
            f"exp{index % 2}/s{index}/{RUN_NAME.format(flow_cell=f'PAX{index:05d}')}",
            RAW_FOLDERS[barcoded],
        )
        self.runs.append(run)
        for raw in run.raw_folders:
            self.write(run, raw, complete=True)
        if rescan:
            self.rescan()

    @precondition(lambda self: self.kept() and self.files < MAX_FILES)
    @rule(data=st.data(), complete=st.booleans())
    def new_file(self, data: st.DataObject, complete: bool) -> None:
        run = data.draw(st.sampled_from(self.kept()))
        self.write(run, data.draw(st.sampled_from(run.raw_folders)), complete=complete)

    @precondition(lambda self: self.incomplete)
    @rule(data=st.data())
    def finish_file(self, data: st.DataObject) -> None:
        self.finish(data.draw(st.sampled_from(sorted(self.incomplete))))

    def finish(self, name: str) -> None:
        run, path, rest, ids = self.incomplete.pop(name)
        if run.deleted:
            return
        path = self.input_dir / run.path / run.folder_of[name] / name  # the run may have moved
        with path.open("ab") as raw:
            raw.write(rest)
        run.reads[name] = ids

    @rule()
    def rescan_rule(self) -> None:
        self.rescan()

    # -- engines ----------------------------------------------------------------------------

    @rule(engine=ENGINES, size=st.integers(1, 4), then=st.none() | OUTCOMES)
    def assign(self, engine: str, size: int, then: JobState | None) -> None:
        """A batch, and (``then``) its basecalling and completion at once."""
        batch = self.facility.assign(engine, size)
        if not batch.batch:
            return
        STATS["batches"] += 1
        run = self.run_named(getattr(batch, "run_path", ""))
        assert run is not None and not run.deleted, f"a batch of no run kept: {batch}"
        assert not run.paused, f"a batch of paused {run.path}"
        folder = batch.job_input_dir.rpartition("/")[0]
        for name in batch.batch:
            assert name in run.reads, f"{name} offered: no complete raw file of {run.path}"
            assert folder == f"{run.path}/{run.folder_of[name]}", f"{name} offered in {folder}"
        self.jobs[batch.jobid] = JobModel(run, list(batch.batch), batch.job_output_dir)
        if then is not None:
            self.end(batch.jobid, then, write=True)

    @rule(engine=ENGINES)
    def polite_engine(self, engine: str) -> None:
        """Most work is done as it should be: a batch basecalled and DONE."""
        self.assign(engine, 2, JobState.DONE)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), outcome=OUTCOMES, write=st.booleans())
    def complete(self, data: st.DataObject, outcome: JobState, write: bool) -> None:
        self.end(data.draw(st.sampled_from(self.live())), outcome, write=write)

    def end(self, jobid: str, outcome: JobState, *, write: bool) -> None:
        job = self.jobs.pop(jobid)
        if write:  # the job's output, through the folder it was told (gone if its run moved)
            folder = self.output_dir / job.output / "pass"
            if folder.parent.is_dir():
                folder.mkdir(exist_ok=True)
                for name in job.files:
                    (folder / name.replace(".pod5", ".fastq")).write_text(
                        fastq(job.run.reads[name])
                    )
        try:
            self.facility.complete(jobid, outcome)
        except (UnknownJob, InvalidTransition):
            STATS["completions refused"] += 1
            return
        STATS[f"completed {outcome.value}"] += 1

    @rule(seconds=st.floats(0, LEASE * 1.2))
    def advance_clock_and_reap(self, seconds: float) -> None:
        self.clock.now += seconds
        for source in list(self.facility.registry.managers.values()):
            source.reap()

    # -- the operator -----------------------------------------------------------------------

    @precondition(lambda self: self.kept())
    @rule(data=st.data(), paused=st.booleans())
    def pause(self, data: st.DataObject, paused: bool) -> None:
        run = data.draw(st.sampled_from(self.kept()))
        if run.path not in self.facility.registry.runs:
            return  # not found yet
        self.facility.set_paused(run.path, paused)
        run.paused = paused

    @rule()
    def retry(self) -> None:
        STATS["files sent back"] += len(asyncio.run(self.facility.retry(None)))

    @precondition(lambda self: any(not run.old_paths for run in self.kept()))
    @rule(data=st.data(), followed=st.sampled_from(["by a rescan", "by the next start"]))
    def move_run(self, data: st.DataObject, followed: str) -> None:
        run = data.draw(st.sampled_from([run for run in self.kept() if not run.old_paths]))
        run.move(self.input_dir)
        if followed == "by a rescan":
            self.rescan()
        else:
            self.facility = self.boot()
        STATS[f"runs moved, followed {followed}"] += 1

    @precondition(lambda self: len(self.kept()) > 1)
    @rule(data=st.data())
    def delete_run(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self.kept()))
        shutil.rmtree(self.input_dir / run.path)
        run.deleted = True
        for jobid in [jobid for jobid, job in self.jobs.items() if job.run is run]:
            del self.jobs[jobid]
        self.rescan()
        STATS["runs deleted"] += 1

    @rule()
    def restart(self) -> None:
        self.facility = self.boot()

    # -- the judge --------------------------------------------------------------------------

    def judge(self, *, drained: bool) -> list[str]:
        problems = []
        for run in self.runs:
            verdict = run.judge(
                self.input_dir, self.output_dir, drained=drained and not run.deleted
            )
            problems += [f"{run.path}: {problem}" for problem in verdict.problems]
        outputs = [self.output_dir / run.path for run in self.runs]
        return problems + stray_reads(self.output_dir, outputs)

    @invariant()
    def each_run_keeps_its_reads_to_itself(self) -> None:
        assert self.judge(drained=False) == []

    def drain_and_judge(self) -> None:
        """The sequencer finishes, the manager restarts cleanly, the leases of engines that
        are gone run out, and a polite engine basecalls everything left."""
        for name in sorted(self.incomplete):
            self.finish(name)
        self.facility = self.boot()
        self.rescan()
        self.clock.now += LEASE + 1
        for source in list(self.facility.registry.managers.values()):
            source.reap()
        for _ in range(2 * MAX_FILES):
            batch = self.facility.assign("polite", 4)
            if not batch.batch:
                break
            run = self.run_named(getattr(batch, "run_path", ""))
            assert run is not None
            folder = self.output_dir / batch.job_output_dir / "pass"
            folder.mkdir()
            for name in batch.batch:
                (folder / name.replace(".pod5", ".fastq")).write_text(fastq(run.reads[name]))
            self.facility.complete(batch.jobid, JobState.DONE)
        assert self.judge(drained=True) == []
        STATS["roots drained and judged"] += 1
        STATS["runs judged"] += len(self.runs)


def teardown_module() -> None:
    print(f"\nroot property test: {dict(sorted(STATS.items()))}")


RootMachine.TestCase.settings = settings(
    max_examples=max(1, int(os.environ.get("BCM_PROPERTY_EXAMPLES") or 50) // 5),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_roots_keep_each_runs_reads_to_itself = RootMachine.TestCase
