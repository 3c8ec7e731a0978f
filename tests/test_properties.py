"""Random runs of the manager, checked after every step (hypothesis.stateful).

A rule-based state machine drives a Manager on a real folder with a clock it moves by hand:
new raw files (complete or still being written), assignments, keepalives, output, completions,
expiries, restarts (a new Manager rebuilt from the folders alone), and crashes at a random disk
call inside an assignment, a completion or an expiry (the call raises an exception that no
handler catches, leaving the disk as kill -9 would; then the manager restarts). Each reply is
compared with a small model of the leases, and after each step ``bcmanager check`` must find
nothing and agree with the manager's own counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bcmanager.check import inspect
from bcmanager.folders import DiskOps, RunFolders
from bcmanager.manager import Manager
from bcmanager.paths import FolderKind, RunPaths, final_fastq_name, raw_stem
from bcmanager.settings import Settings
from bcmanager.simulate import pod5_bytes
from bcmanager.state import FileState, InvalidTransition, JobState, LeaseExpired, UnknownJob
from conftest import Clock

LEASE = 10
RAW_BYTES, _ = pod5_bytes("template.pod5", 1)  # one real POD5 file, written under many names
ENGINES = st.sampled_from(["gpu1", "gpu2", "gpu3"])


class Crash(BaseException):
    """kill -9 at a disk call: no ``except OSError`` catches it, nothing cleans up."""


class CrashingOps(DiskOps):
    """Raises Crash at the nth disk call after ``arm``."""

    def __init__(self) -> None:
        self.countdown: int | None = None

    def _step(self) -> None:
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown < 0:
                self.countdown = None
                raise Crash

    def mkdir(self, path: Path) -> None:
        self._step()
        super().mkdir(path)

    def symlink(self, target: str, link: Path) -> None:
        self._step()
        super().symlink(target, link)

    def rename(self, source: Path, destination: Path) -> None:
        self._step()
        super().rename(source, destination)

    def rmtree(self, path: Path) -> None:
        self._step()
        super().rmtree(path)


@dataclass
class JobModel:
    """What the test expects of one job: "live", an ending's name, or "unknown" (forgotten)."""

    engine: str
    files: tuple[str, ...]
    state: str
    deadline: float
    output: bool = False


class RunMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="bcm-property-"))
        (self.root / "input").mkdir()
        self.paths = RunPaths(self.root / "input", self.root / "output")
        self.settings = Settings(
            input_dir=self.paths.input_dir,
            output_dir=self.paths.output_dir,
            report_back_period=LEASE,
            default_batch_size=2,
            max_batch_size=4,
            force_polling=True,
        )
        self.clock = Clock()
        self.files: list[str] = []
        self.incomplete: list[str] = []
        self.jobs: dict[str, JobModel] = {}
        self.ops = CrashingOps()
        self.manager = self.boot()

    def teardown(self) -> None:
        shutil.rmtree(self.root)

    # -- helpers ----------------------------------------------------------------------------

    def boot(self) -> Manager:
        """A manager rebuilt from the folders alone, as after a restart."""
        self.ops = CrashingOps()
        manager = Manager(self.settings, RunFolders(self.paths, self.ops), clock=self.clock)

        async def start() -> None:
            await manager.start()
            while not manager.ready:
                await asyncio.sleep(0.001)
            await manager.stop()  # the test drives it: no reaper or rescan of its own

        asyncio.run(start())
        return manager

    def rescan(self) -> None:
        asyncio.run(self.manager._rescan())  # the path new files take when no event came

    def resync(self) -> None:
        """After a crash, learn from the rebuilt manager what the crash left committed."""
        for jobid, job in self.jobs.items():
            try:
                found = self.manager.state.job(jobid)
            except UnknownJob:
                job.state = "unknown"
                continue
            job.state = "live" if found.live else found.state.value
            job.deadline = found.deadline
        # Job ids are random: order new ones by their files, so that draws replay the same.
        for found in sorted(self.manager.state.live_jobs(), key=lambda job: job.files):
            if found.jobid not in self.jobs:
                self.jobs[found.jobid] = JobModel(found.engine, found.files, "live", found.deadline)

    def now(self) -> float:
        return self.clock.now

    # -- raw files --------------------------------------------------------------------------

    @rule(complete=st.booleans())
    def new_file(self, complete: bool) -> None:
        name = f"raw_{len(self.files):04d}.pod5"
        data = RAW_BYTES if complete else RAW_BYTES[: len(RAW_BYTES) // 2]
        (self.paths.input_dir / name).write_bytes(data)
        self.files.append(name)
        if not complete:
            self.incomplete.append(name)
        self.rescan()
        expected = FileState.PENDING if complete else FileState.WAITING
        assert self.manager.state.file_state(name) is expected

    @precondition(lambda self: self.incomplete)
    @rule(data=st.data())
    def finish_file(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.incomplete))
        with (self.paths.input_dir / name).open("ab") as raw:
            raw.write(RAW_BYTES[len(RAW_BYTES) // 2 :])
        self.incomplete.remove(name)
        self.rescan()
        assert self.manager.state.file_state(name) is FileState.PENDING

    # -- the protocol -----------------------------------------------------------------------

    @rule(engine=ENGINES, size=st.integers(-1, 6))
    def assign(self, engine: str, size: int) -> None:
        state = self.manager.state
        pending = {name for name in self.files if state.file_state(name) is FileState.PENDING}
        batch = self.manager.assign(engine, size)
        wanted = min(size if size > 0 else 2, 4)
        # Failed files come back as batches of their own (halves), and a retry may be kept
        # for another engine: a batch may be smaller than asked.
        assert batch.batch_size == len(batch.batch) <= min(wanted, len(pending))
        assert set(batch.batch) <= pending  # never anything done, failed, leased or waiting
        if batch.batch_size:
            self.jobs[batch.jobid] = JobModel(
                engine, tuple(batch.batch), "live", self.now() + LEASE
            )
        else:
            assert batch.jobid == "-1"

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def keepalive(self, data: st.DataObject) -> None:
        jobid = data.draw(st.sampled_from(list(self.jobs)))  # in the order they were made
        job = self.jobs[jobid]
        late = self.manager.keepalive(jobid, JobState.PROCESSING)
        assert late == (job.state != "live" or self.now() >= job.deadline)
        if not late:
            job.deadline = self.now() + LEASE

    @precondition(lambda self: any(job.state == "live" for job in self.jobs.values()))
    @rule(data=st.data())
    def write_output(self, data: st.DataObject) -> None:
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        jobid = data.draw(st.sampled_from(live))
        job = self.jobs[jobid]
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, job.engine)
        (output / "pass").mkdir(exist_ok=True)
        for name in job.files:
            (output / "pass" / f"{raw_stem(name)}.fastq").write_text(f"@{name}\nA\n+\n!\n")
        job.output = True

    @precondition(lambda self: self.jobs)
    @rule(
        data=st.data(), outcome=st.sampled_from([JobState.DONE, JobState.FAILED, JobState.STOPPED])
    )
    def complete(self, data: st.DataObject, outcome: JobState) -> None:
        jobid = data.draw(st.sampled_from(list(self.jobs)))
        job = self.jobs[jobid]
        repeat = job.state == outcome.value or (job.state, outcome) in (
            ("EMPTY", JobState.DONE),
            ("QUARANTINED", JobState.FAILED),
        )
        if repeat:
            expected: type[Exception] | None = None  # a retry: ok, nothing changes
        elif job.state == "unknown":
            expected = UnknownJob
        elif job.state == "EXPIRED" or (job.state == "live" and self.now() >= job.deadline):
            expected = LeaseExpired
        elif job.state == "live":
            expected = None
        else:
            expected = InvalidTransition
        try:
            self.manager.complete(jobid, outcome)
            raised: type[Exception] | None = None
        except (UnknownJob, InvalidTransition) as error:
            raised = type(error)
        assert raised is expected
        if expected is None and not repeat:
            ended = self.manager.state.job(jobid).state
            empty = outcome is JobState.DONE and job.files and not job.output
            if outcome is JobState.FAILED:  # retried, or quarantined when it failed alone
                assert ended in (JobState.FAILED, JobState.QUARANTINED)
                assert ended is JobState.FAILED or len(job.files) == 1
            else:
                assert ended is (JobState.EMPTY if empty else outcome)
            job.state = ended.value

    @rule(seconds=st.floats(0, LEASE * 1.2))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def reap(self) -> None:
        self.manager.reap()
        for job in self.jobs.values():
            if job.state == "live" and self.now() >= job.deadline:
                job.state = "EXPIRED"

    # -- restarts and crashes ---------------------------------------------------------------

    @rule()
    def restart(self) -> None:
        counts = self.manager.state.counts()
        live = {job.jobid: set(job.files) for job in self.manager.state.live_jobs()}
        self.manager = self.boot()
        assert self.manager.state.counts() == counts
        assert {job.jobid: set(job.files) for job in self.manager.state.live_jobs()} == live
        for job in self.jobs.values():
            if job.state == "live":
                job.deadline = self.now() + LEASE  # adopted with a fresh lease
            elif job.state in ("STOPPED", "EXPIRED", "EMPTY"):
                job.state = "unknown"  # no folder records them: forgotten

    def has_pending(self) -> bool:
        return self.manager.state.pending_count() > 0

    def has_live_jobs(self) -> bool:
        return any(job.state == "live" for job in self.jobs.values())

    def crash_and_restart(self, at: int, action: Callable[[], object]) -> None:
        """Run ``action`` until its disk call number ``at`` dies (if it makes that many), then
        restart from the folders alone."""
        self.ops.countdown = at
        with contextlib.suppress(Crash):
            action()
        self.ops.countdown = None
        self.manager = self.boot()
        self.resync()

    @precondition(has_pending)
    @rule(engine=ENGINES, size=st.integers(1, 4), at=st.integers(0, 6))
    def crash_in_assign(self, engine: str, size: int, at: int) -> None:
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        self.crash_and_restart(at, lambda: self.manager.assign(engine, size))
        assert all(self.jobs[jobid].state == "live" for jobid in live)

    @precondition(has_live_jobs)
    @rule(data=st.data(), at=st.integers(0, 5))
    def crash_in_completion(self, data: st.DataObject, at: int) -> None:
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        jobid = data.draw(st.sampled_from(live))

        def complete() -> None:
            if not self.manager.keepalive(jobid, JobState.PROCESSING):
                self.manager.complete(jobid, JobState.DONE)

        self.crash_and_restart(at, complete)
        # Whatever instant it died at, the job is whole: still leased, or done with its output,
        # or (with no output to merge) released, and then forgotten by the restart.
        job = self.jobs[jobid]
        assert job.state in ("live", "DONE") or (job.state == "unknown" and not job.output)

    @precondition(has_live_jobs)
    @rule(at=st.integers(0, 5))
    def crash_in_expiry(self, at: int) -> None:
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        self.clock.now += LEASE

        self.crash_and_restart(at, self.manager.reap)
        assert all(self.jobs[jobid].state in ("live", "unknown") for jobid in live)

    # -- after every step -------------------------------------------------------------------

    @invariant()
    def the_folders_pass_check_and_agree_with_the_manager(self) -> None:
        report = inspect(self.paths)
        assert [str(problem) for problem in report.problems] == []
        assert report.files == self.manager.state.counts()
        assert sum(report.files.values()) == len(self.files)  # nothing lost

    @invariant()
    def done_output_is_merged_once(self) -> None:
        merged = set(os.listdir(self.paths.pass_dir))
        for jobid, job in self.jobs.items():
            if job.state == "DONE" and job.output:
                for name in job.files:
                    assert final_fastq_name(jobid, f"{raw_stem(name)}.fastq") in merged
                assert self.paths.input_folder(FolderKind.DONE, jobid, job.engine).is_dir()


RunMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("BCM_PROPERTY_EXAMPLES") or 100),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_runs_keep_every_invariant = RunMachine.TestCase
