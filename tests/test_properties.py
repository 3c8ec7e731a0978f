"""Random runs of the manager, checked after every step (hypothesis.stateful).

A rule-based state machine drives a Manager on a real folder with a clock it moves by hand:
new raw files (complete or still being written), assignments, keepalives, output, completions,
expiries, restarts (a new Manager rebuilt from the folders alone), and faults at a random disk
call (``FaultyOps``) inside an assignment, a completion, an expiry or a start-up's recovery:

- a crash: the call raises an exception that no handler catches, leaving the disk as kill -9
  would; then the manager restarts. A crash during recovery starts it again.
- a disk error (ENOSPC, EIO, EACCES): the running manager must answer it as docs/design.md says
  (nothing changes before a commit point; after it the change stands and the rescans finish
  it), and a start-up must go on past one job's leftovers.

Either kind can strike the same call again on the retry (the next start, the next rescan, the
reaper's next tick), up to twice, before the disk heals. Hostile engines and operators act too:
a raw file is deleted, output is written into a recreated TMPOUTPUT_ after its job ended, pass/
is made a symlink (to INPUT_DIR, or to a scratch folder with a FASTQ), a DONE comes with nothing
written.

Each reply is compared with a small model of the leases. After each step the manager's memory
must agree with ``bcmanager check`` (which must find nothing, but what a hostile engine left
for the next start), and the independent oracle (``oracle.py``) must find the reads of every
file of a DONE job in pass/, none of any other, none twice, and nothing left INPUT_DIR. At the
end a clean restart and a polite engine drain the run, and the oracle must find every read of
every raw file the test kept exactly once, or its file failed.

``BCM_PROPERTY_EXAMPLES`` (50 in ``make test``, 1000 in ``make soak``) sets the random runs; the
faults and hostile actions they met are printed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bcmanager.cli.check import Severity, inspect
from bcmanager.core.folders import DiskOps, RunFolders
from bcmanager.core.jobs import FileState
from bcmanager.core.manager import Manager
from bcmanager.core.state import ENDS_OF, InvalidTransition, LeaseExpired, UnknownJob
from bcmanager.models import JobState
from bcmanager.paths import FolderKind, RunPaths, raw_stem
from bcmanager.settings import Settings
from bcmanager.sim.sequencer import pod5_bytes
from conftest import Clock, fastq
from oracle import judge

LEASE = 10
MAX_FILES = 40
MAX_REPEAT = 2  # times a fault strikes the same call again before the disk heals
ENGINES = st.sampled_from(["gpu1", "gpu2", "gpu3"])
ERRNOS = st.sampled_from([errno.ENOSPC, errno.EIO, errno.EACCES])
OUTCOMES = st.sampled_from([JobState.DONE, JobState.FAILED, JobState.STOPPED])
STATS: Counter[str] = Counter()  # what the random runs met, printed at the end


@functools.cache
def raw_file(index: int) -> tuple[bytes, list[str]]:
    """A real POD5 file with one read, and its read id: distinct for each index."""
    return pod5_bytes(f"raw_{index:04d}.pod5", 1, seed=index)


class Crash(BaseException):
    """kill -9 at a disk call: no ``except OSError`` catches it, nothing cleans up."""


@dataclass(frozen=True)
class Fault:
    at: int  # disk calls let through after ``arm`` before the first that fails
    error: int | None  # errno of the OSError raised; None: a crash (kill -9) at that call
    repeat: int  # times the same call on the same path fails again, then the disk heals


FAULTS = st.builds(Fault, at=st.integers(0, 10), error=ERRNOS, repeat=st.integers(0, MAX_REPEAT))
CRASHES = st.builds(Fault, at=st.integers(0, 10), error=st.none(), repeat=st.just(0))
# A start-up makes few disk calls (only to mend what it finds): aim at the first ones.
RECOVERY_FAULTS = st.none() | st.builds(
    Fault, at=st.integers(0, 3), error=st.none() | ERRNOS, repeat=st.integers(0, MAX_REPEAT)
)


class FaultyOps(DiskOps):
    """Fails the disk call number ``at`` after ``arm``; then the same call (method and path)
    fails ``repeat`` more times, as a disk that keeps refusing one spot until it heals. Kept
    across restarts: a spot that failed before the crash can fail again during recovery."""

    def __init__(self) -> None:
        self.fault: Fault | None = None
        self.countdown = 0
        self.spot: tuple[str, str] | None = None
        self.left = 0
        self.fired = 0

    def arm(self, fault: Fault) -> None:
        self.fault, self.countdown, self.spot, self.left = fault, fault.at, None, fault.repeat
        self.fired = 0  # times it struck since armed

    def disarm(self) -> None:
        self.fault = self.spot = None

    def _step(self, method: str, path: Path) -> None:
        fault = self.fault
        if fault is None:
            return
        if self.spot is None:
            if self.countdown > 0:
                self.countdown -= 1
                return
            self.spot = (method, str(path))
        elif self.spot != (method, str(path)) or self.left == 0:
            return
        else:
            self.left -= 1
        self.fired += 1
        if fault.error is None:
            raise Crash
        raise OSError(fault.error, os.strerror(fault.error), str(path))

    def mkdir(self, path: Path) -> None:
        self._step("mkdir", path)
        super().mkdir(path)

    def symlink(self, target: str, link: Path) -> None:
        self._step("symlink", link)
        super().symlink(target, link)

    def rename(self, source: Path, destination: Path) -> None:
        self._step("rename", source)
        super().rename(source, destination)

    def unlink(self, path: Path) -> None:
        self._step("unlink", path)
        super().unlink(path)

    def rmdir(self, path: Path) -> None:
        self._step("rmdir", path)
        super().rmdir(path)

    def rmtree(self, path: Path) -> None:
        self._step("rmtree", path)
        super().rmtree(path)

    def copy(self, source: Path, destination: Path) -> None:
        self._step("copy", source)
        super().copy(source, destination)

    def fsync(self, path: Path) -> None:
        self._step("fsync", path)
        super().fsync(path)


@dataclass
class JobModel:
    """What the test expects of one job: "live", an ending's name, or "unknown" (forgotten)."""

    engine: str
    files: tuple[str, ...]
    state: str
    deadline: float
    written: set[str] = field(default_factory=set)  # files whose FASTQ is in its own folder
    pass_link: bool = False  # its pass/ is a symlink out of the output folder

    @property
    def output(self) -> bool:
        return bool(self.written)


class RunMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="bcm-property-"))
        (self.root / "input").mkdir()
        (self.root / "scratch").mkdir()
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
        self.reads: dict[str, list[str]] = {}  # the ledger: raw file -> its read ids
        self.incomplete: list[str] = []
        self.deleted: set[str] = set()
        self.jobs: dict[str, JobModel] = {}
        self.planted: set[Path] = set()  # output written after its job ended: for the next start
        self.decoys: dict[Path, str] = {}  # FASTQ outside the run that must stay where it is
        self.failures = False  # a job failed: its files are retried first, in halves
        self.ops = FaultyOps()
        self.manager = self.boot()

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # the run so far held: now drain it and judge
                self.drain_and_judge()
        finally:
            shutil.rmtree(self.root)

    # -- helpers ----------------------------------------------------------------------------

    def boot(self) -> Manager:
        """A manager rebuilt from the folders alone, as after a restart."""
        manager = Manager(self.settings, RunFolders(self.paths, self.ops), clock=self.clock)

        async def start() -> None:
            await manager.start()
            while not manager.ready:
                await asyncio.sleep(0.001)
            await manager.stop()  # the test drives it: no reaper or rescan of its own

        asyncio.run(start())
        self.planted.clear()  # recovery set aside what was written after its job ended
        return manager

    def restart_through(self, fault: Fault | None) -> None:
        """A new manager from the folders alone, with ``fault`` striking its recovery: a crash
        there starts it again; a disk error must not stop it, must be shown, and leaves memory
        agreeing with the disk. It is started again until no fault strikes a start."""
        if fault is not None:
            self.ops.arm(fault)
        for _ in range(MAX_REPEAT + 3):
            fired = self.ops.fired
            try:
                self.manager = self.boot()
            except Crash:
                STATS["crashes during recovery"] += 1
                continue
            if self.ops.fired == fired:
                break
            STATS["disk errors during recovery"] += 1
            assert self.manager.job_problems(), "a job recovery could not handle is shown"
            self.resync()
            self.assert_memory_agrees_with_disk(repairs=True)
        else:
            raise AssertionError("no start without a fault")
        self.ops.disarm()
        self.resync()

    def settle(self) -> None:
        """What the running manager does at each rescan after a disk error: retry the changes
        the disk refused (the same spot may refuse again, ``MAX_REPEAT`` times at most)."""
        for _ in range(MAX_REPEAT + 2):
            self.assert_memory_agrees_with_disk(repairs=True)
            if not self.manager.folders.unfinished:
                break
            self.manager.folders.finish_tails()
        self.ops.disarm()

    def rescan(self) -> None:
        asyncio.run(self.manager._rescan())  # the path new files take when no event came

    def resync(self) -> None:
        """After a crash or a disk error, learn from the manager what stands."""
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
        self.failures |= any(job.state in ("FAILED", "QUARANTINED") for job in self.jobs.values())
        # A DONE's account may have set files apart as failed attempts the model never saw.
        self.failures |= any(
            name.startswith(("FAILED_", "QUARANTINED_"))
            for name in os.listdir(self.paths.input_dir)
        )

    def snapshot(self) -> tuple[object, ...]:
        """Each file's state and the leases, but for deleted files (any request may find one
        gone and drop it)."""
        state = self.manager.state
        files = {name: state.file_state(name) for name in self.files if name not in self.deleted}
        return files, {job.jobid: job.files for job in state.live_jobs()}

    def now(self) -> float:
        return self.clock.now

    def output_of(self, jobid: str) -> Path:
        return self.paths.output_folder(FolderKind.TMPOUTPUT, jobid, self.jobs[jobid].engine)

    def live(self, jobid: str) -> bool:
        return self.jobs[jobid].state == "live"

    def assert_memory_agrees_with_disk(self, *, repairs: bool = False) -> None:
        """``bcmanager check`` finds nothing broken, and nothing to repair but what a hostile
        engine left for the next start (or, with ``repairs``, what the running manager is still
        to finish); and it counts every raw file on disk in the state the manager holds it."""
        report = inspect(self.paths)
        to_repair = [p for p in report.problems if p.severity is Severity.REPAIR]
        if repairs:
            to_repair = []
        assert [
            str(problem)
            for problem in report.problems
            if problem.severity is Severity.BROKEN
            or (problem in to_repair and problem.path not in self.planted)
        ] == []
        held: Counter[FileState] = Counter()
        for name in self.files:
            state = self.manager.state.file_state(name)
            unplaced = state in (None, FileState.WAITING, FileState.PENDING, FileState.MISSING)
            if not (name in self.deleted and unplaced):  # else check cannot see it
                held[state] += 1
        assert {s: n for s, n in report.files.items() if n} == dict(held)

    # -- raw files --------------------------------------------------------------------------

    @precondition(lambda self: len(self.files) < MAX_FILES)
    @rule(complete=st.booleans())
    def new_file(self, complete: bool) -> None:
        name = f"raw_{len(self.files):04d}.pod5"
        data, self.reads[name] = raw_file(len(self.files))
        (self.paths.input_dir / name).write_bytes(data if complete else data[: len(data) // 2])
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
        self.finish_writing(name)
        self.rescan()
        assert self.manager.state.file_state(name) is FileState.PENDING

    def finish_writing(self, name: str) -> None:
        whole, _ = raw_file(self.files.index(name))
        with (self.paths.input_dir / name).open("ab") as raw:
            raw.write(whole[len(whole) // 2 :])
        self.incomplete.remove(name)

    @precondition(lambda self: len(self.deleted) < len(self.files))
    @rule(data=st.data())
    def delete_raw_file(self, data: st.DataObject) -> None:
        """An operator deletes a raw file, whatever its state: a waiting or pending one is
        missing from the next rescan on (never offered); a leased, done or failed one keeps its
        state, which its job folder records."""
        name = data.draw(st.sampled_from([n for n in self.files if n not in self.deleted]))
        before = self.manager.state.file_state(name)
        os.unlink(self.paths.input_dir / name)
        self.deleted.add(name)
        if name in self.incomplete:
            self.incomplete.remove(name)
        self.rescan()
        STATS["hostile: raw file deleted"] += 1
        dropped = before in (FileState.WAITING, FileState.PENDING)
        assert self.manager.state.file_state(name) is (FileState.MISSING if dropped else before)

    # -- the protocol -----------------------------------------------------------------------

    @rule(engine=ENGINES, size=st.integers(-1, 6))
    def assign(self, engine: str, size: int) -> None:
        state = self.manager.state
        pending = {name for name in self.files if state.file_state(name) is FileState.PENDING}
        present = pending - self.deleted  # a deleted file that came back from a job is dropped
        batch = self.manager.assign(engine, size)
        wanted = min(size if size > 0 else 2, 4)
        assert batch.batch_size == len(batch.batch) <= wanted
        assert set(batch.batch) <= present  # never anything done, failed, leased, waiting, gone
        if not self.failures:  # else retries go first, alone, and engines may be benched
            assert batch.batch_size == min(wanted, len(present))
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

    def writable(self) -> list[str]:
        return [j for j, job in self.jobs.items() if job.state == "live" and not job.pass_link]

    @precondition(writable)
    @rule(data=st.data(), skip=st.booleans())
    def write_output(self, data: st.DataObject, skip: bool) -> None:
        """The engine basecalls each raw file of its batch that is still there; or, as Dorado
        does with a POD5 file it cannot open, skips the first and says nothing."""
        jobid = data.draw(st.sampled_from(self.writable()))
        self.basecall(jobid, "pass", skip=skip)
        STATS["hostile: a file skipped, as Dorado skips one"] += skip

    def basecall(self, jobid: str, sub: str, *, skip: bool = False) -> None:
        job, folder = self.jobs[jobid], self.output_of(jobid) / sub
        folder.mkdir(exist_ok=True)
        for name in job.files[1:] if skip else job.files:
            if name not in self.deleted:
                (folder / f"{raw_stem(name)}.fastq").write_text(fastq(self.reads[name]))
                job.written.add(name)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), outcome=OUTCOMES)
    def complete(self, data: st.DataObject, outcome: JobState) -> None:
        jobid = data.draw(st.sampled_from(list(self.jobs)))
        job = self.jobs[jobid]
        repeat = job.state in {end.value for end in ENDS_OF[outcome]}
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
            self.ended_as(jobid, outcome)

    def rejected_all(self, jobid: str) -> bool:
        """Whether the account of a DONE of this job rejects every file: none was written, and
        none is deleted (a deleted file's reads cannot be checked)."""
        job = self.jobs[jobid]
        return bool(job.files) and all(
            name not in job.written and name not in self.deleted for name in job.files
        )

    def ended_as(self, jobid: str, outcome: JobState) -> None:
        """The job ended as the engine reported: a DONE whose every file the account rejects
        (nothing written) as a failure, a FAILED FAILED (its files retried) or QUARANTINED (its
        one file set aside). Files a DONE's account rejects leave the job as failed attempts of
        their own: the job keeps the rest."""
        job = self.jobs[jobid]
        ended = self.manager.state.job(jobid).state
        empty = outcome is JobState.DONE and self.rejected_all(jobid)
        failures = {JobState.FAILED, JobState.QUARANTINED}
        if outcome is JobState.DONE:
            assert ended in (failures if empty else {JobState.DONE})
        else:
            assert ended in ENDS_OF[outcome]
        assert ended is not JobState.QUARANTINED or len(job.files) == 1  # a file failing alone
        job.state = ended.value
        rejected = outcome is JobState.DONE and any(
            name not in job.written and name not in self.deleted for name in job.files
        )
        self.failures |= outcome is JobState.FAILED or rejected
        STATS["hostile: DONE with nothing written"] += empty

    @rule(seconds=st.floats(0, LEASE * 1.2))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def reap(self) -> None:
        self.manager.reap()
        for job in self.jobs.values():
            if job.state == "live" and self.now() >= job.deadline:
                job.state = "EXPIRED"

    # -- hostile engines --------------------------------------------------------------------

    def ended_without_output(self) -> list[str]:
        return [
            jobid
            for jobid, job in self.jobs.items()
            if job.state != "live" and not os.path.lexists(self.output_of(jobid))
        ]

    @precondition(ended_without_output)
    @rule(data=st.data())
    def write_after_the_end(self, data: st.DataObject) -> None:
        """An engine whose job ended (expired, done, failed, given back, forgotten) recreates
        its output folder and writes its FASTQ there: never merged, set aside at the next
        start (``check`` asks for that start meanwhile)."""
        jobid = data.draw(st.sampled_from(self.ended_without_output()))
        job, output = self.jobs[jobid], self.output_of(jobid)
        output.mkdir()
        written = set(job.written)
        self.basecall(jobid, "pass")
        job.written = written  # what its job merged, if anything, is as it was
        self.planted.add(output)
        STATS[f"hostile: output written after the job ended {job.state}"] += 1

    def linkable(self) -> list[str]:
        return [
            jobid
            for jobid in self.writable()
            if self.output_of(jobid).is_dir()
            and not os.path.lexists(self.output_of(jobid) / "pass")
        ]

    @precondition(linkable)
    @rule(data=st.data(), to_input=st.booleans(), fail_output=st.booleans())
    def symlink_pass(self, data: st.DataObject, to_input: bool, fail_output: bool) -> None:
        """An engine makes its pass/ a symlink out of its output folder, to INPUT_DIR or to a
        scratch folder with a FASTQ of reads of no raw file; its real output, if any, in fail/.
        The merge never follows it: nothing leaves INPUT_DIR, the scratch FASTQ stays put."""
        jobid = data.draw(st.sampled_from(self.linkable()))
        target = self.paths.input_dir
        if not to_input:
            target = self.root / "scratch" / jobid
            target.mkdir()
            decoy = target / "decoy.fastq"
            decoy.write_text(text := fastq([f"decoy-{jobid}"]))
            self.decoys[decoy] = text
        os.symlink(target, self.output_of(jobid) / "pass")
        self.jobs[jobid].pass_link = True
        if fail_output:
            self.basecall(jobid, "fail")
        STATS[f"hostile: pass/ a symlink to {'INPUT_DIR' if to_input else 'a scratch FASTQ'}"] += 1

    # -- restarts, crashes and disk errors --------------------------------------------------

    def counts_on_disk(self) -> dict[FileState, int]:
        """The manager's counts but for missing files: one that went missing before any job
        recorded it leaves no trace on disk, and a restart does not know it."""
        counts = self.manager.state.counts()
        del counts[FileState.MISSING]
        return counts

    @rule(recovery=RECOVERY_FAULTS)
    def restart(self, recovery: Fault | None) -> None:
        counts = self.counts_on_disk()
        live = {job.jobid: set(job.files) for job in self.manager.state.live_jobs()}
        self.restart_through(recovery)
        assert self.counts_on_disk() == counts
        assert {job.jobid: set(job.files) for job in self.manager.state.live_jobs()} == live

    def has_pending(self) -> bool:
        return self.manager.state.pending_count() > 0

    def has_live_jobs(self) -> bool:
        return any(job.state == "live" for job in self.jobs.values())

    def crash_and_restart(
        self, crash: Fault, recovery: Fault | None, action: Callable[[], object]
    ) -> None:
        """Run ``action`` until its disk call number ``crash.at`` dies (if it makes that many),
        then restart from the folders alone, with ``recovery`` striking the restart."""
        self.ops.arm(crash)
        with contextlib.suppress(Crash):
            action()
        STATS["crashes in a request or expiry"] += self.ops.fired
        self.ops.disarm()
        self.restart_through(recovery)

    @precondition(has_pending)
    @rule(engine=ENGINES, size=st.integers(1, 4), crash=CRASHES, recovery=RECOVERY_FAULTS)
    def crash_in_assign(self, engine: str, size: int, crash: Fault, recovery: Fault | None) -> None:
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        self.crash_and_restart(crash, recovery, lambda: self.manager.assign(engine, size))
        assert all(self.jobs[jobid].state == "live" for jobid in live)

    def complete_if_alive(self, jobid: str, outcome: JobState = JobState.DONE) -> None:
        if not self.manager.keepalive(jobid, JobState.PROCESSING):
            self.manager.complete(jobid, outcome)

    @precondition(has_live_jobs)
    @rule(data=st.data(), crash=CRASHES, recovery=RECOVERY_FAULTS)
    def crash_in_completion(
        self, data: st.DataObject, crash: Fault, recovery: Fault | None
    ) -> None:
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        jobid = data.draw(st.sampled_from(live))
        self.crash_and_restart(crash, recovery, lambda: self.complete_if_alive(jobid))
        # Whatever instant it died at, the job is whole: still leased, or done with its output,
        # or (with no output to merge) released, and then forgotten by the restart.
        job = self.jobs[jobid]
        rejected = ("FAILED", "QUARANTINED") if self.rejected_all(jobid) else ()
        assert job.state in ("live", "DONE", *rejected) or (
            job.state == "unknown" and not job.output
        )

    @precondition(has_live_jobs)
    @rule(crash=CRASHES, recovery=RECOVERY_FAULTS)
    def crash_in_expiry(self, crash: Fault, recovery: Fault | None) -> None:
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        self.clock.now += LEASE
        self.crash_and_restart(crash, recovery, self.manager.reap)
        assert all(self.jobs[jobid].state in ("live", "unknown") for jobid in live)

    @precondition(has_pending)
    @rule(engine=ENGINES, size=st.integers(1, 4), fault=FAULTS)
    def disk_error_in_assign(self, engine: str, size: int, fault: Fault) -> None:
        """Refused before its commit: an error, and nothing leased; else a lease as usual."""
        before = self.snapshot()
        self.ops.arm(fault)
        try:
            batch = self.manager.assign(engine, size)
        except OSError:
            assert self.snapshot() == before
        else:
            if batch.batch_size:
                self.jobs[batch.jobid] = JobModel(
                    engine, tuple(batch.batch), "live", self.now() + LEASE
                )
        STATS["disk errors in a request or expiry"] += self.ops.fired
        self.settle()

    @precondition(has_live_jobs)
    @rule(data=st.data(), outcome=OUTCOMES, fault=FAULTS)
    def disk_error_in_completion(
        self, data: st.DataObject, outcome: JobState, fault: Fault
    ) -> None:
        """Refused before its commit: an error, and the job still live; else it ended as asked
        (a DONE with nothing written: EMPTY), whatever the disk refuses after."""
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        jobid = data.draw(st.sampled_from(live))
        before = self.snapshot()
        self.ops.arm(fault)
        try:
            self.complete_if_alive(jobid, outcome)
        except OSError:
            after = self.snapshot()
            if after != before:  # a DONE's rejected files were set apart before the error
                assert outcome is JobState.DONE and self.manager.state.job(jobid).live
                (files, leases), (files_after, leases_after) = before, after
                apart = set(leases[jobid]) - set(leases_after[jobid])
                assert apart and {files_after[name] for name in apart if name in files_after} <= {
                    FileState.PENDING,
                    FileState.FAILED,
                }
                assert {**files_after, **dict.fromkeys(apart)} == {**files, **dict.fromkeys(apart)}
                job = self.jobs[jobid]
                job.files = leases_after[jobid]
                job.written &= set(job.files)
                self.failures = True
        STATS["disk errors in a request or expiry"] += self.ops.fired
        if not self.manager.state.job(jobid).live:
            self.ended_as(jobid, outcome)
        self.settle()

    @precondition(has_live_jobs)
    @rule(fault=FAULTS)
    def disk_error_in_expiry(self, fault: Fault) -> None:
        """The reaper retries at its next tick until the disk lets it take every lease back."""
        live = [jobid for jobid, job in self.jobs.items() if job.state == "live"]
        self.clock.now += LEASE
        self.ops.arm(fault)
        for _ in range(MAX_REPEAT + 2):
            self.manager.reap()
        STATS["disk errors in a request or expiry"] += self.ops.fired
        self.resync()
        assert all(self.jobs[jobid].state == "EXPIRED" for jobid in live)
        self.settle()

    # -- after every step -------------------------------------------------------------------

    @invariant()
    def the_folders_pass_check_and_agree_with_the_manager(self) -> None:
        self.assert_memory_agrees_with_disk()

    @invariant()
    def the_oracle_finds_done_reads_once_and_no_others(self) -> None:
        done = {name for job in self.jobs.values() if job.state == "DONE" for name in job.written}
        undone = set(self.files).difference(
            *(job.files for job in self.jobs.values() if job.state == "DONE")
        )
        verdict = judge(
            self.paths.input_dir,
            self.paths.output_dir,
            self.reads,
            deleted=self.deleted,
            drained=False,
            done=done,
            undone=undone,
        )
        assert verdict.problems == []
        assert {decoy: decoy.read_text() for decoy in self.decoys} == self.decoys

    # -- the end ----------------------------------------------------------------------------

    def drain_and_judge(self) -> None:
        """The sequencer finishes, the manager restarts cleanly, the leases of engines that
        are gone run out, and a polite engine basecalls everything left. Then every read of
        every raw file the test kept is in pass/ or fail/ exactly once, or its file failed."""
        for name in list(self.incomplete):
            self.finish_writing(name)
        self.manager = self.boot()
        self.rescan()
        self.clock.now += LEASE
        self.manager.reap()
        for _ in range(2 * MAX_FILES):
            batch = self.manager.assign("polite", 4)
            if not batch.batch:
                break
            folder = self.paths.output_dir / batch.job_output_dir / "pass"
            folder.mkdir()
            for name in batch.batch:
                (folder / f"{raw_stem(name)}.fastq").write_text(fastq(self.reads[name]))
            self.manager.complete(batch.jobid, JobState.DONE)
        assert self.manager.state.counts()[FileState.PENDING] == 0
        verdict = judge(
            self.paths.input_dir, self.paths.output_dir, self.reads, deleted=self.deleted
        )
        assert verdict.problems == []
        self.assert_memory_agrees_with_disk()
        STATS["runs drained and judged"] += 1


def teardown_module() -> None:
    print(f"\nproperty test: {dict(sorted(STATS.items()))}")


RunMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("BCM_PROPERTY_EXAMPLES") or 50),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_runs_keep_every_invariant = RunMachine.TestCase
