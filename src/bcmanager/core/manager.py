"""The manager: the state machine of ``state.py`` wired to the disk, the clock and the watcher.

Each protocol call asks the state machine what to do, carries it out on disk (committed by one
rename), and only then records it in the state machine, so a failure on disk leaves memory as
it was. An assignment costs O(batch) filesystem calls and runs on the event loop from start to
end. The end of a job costs O(its output), which an engine decides: that part runs in a worker
thread while the loop serves other calls, and the job is marked busy meanwhile, so that no other
change of the same job (a repeated report, the reaper) interleaves with it; they wait for it.

Start-up reads the run back before the server listens, on the event
loop: there is nothing to serve yet, and a worker thread would only add a hop. Everything that
is O(files in the run) after that, the rest of the first scan and the rescans, runs in worker
threads, so that requests are answered meanwhile.

Every change follows one path: the disk changes (a raw file is written or deleted, a rename
commits a job's change), the manager tells the state machine, which applies the change and
returns its event (``events.py``), and ``_apply`` hands that event, with the sizes, times and
records the disk gave, to every consumer (``Consumers.apply``): ``Progress.apply`` (bytes, rates,
per-engine tallies: what /status and /metrics read), the log (``logs.event_line``: one line per
event), benching (whose verdict on a failure is an event too) and the listener (the facility).
What the state machine does not hold is an event as well, made here: an engine's call
(``Contacted``), the sizes of files recovery placed (``Sized``), the sequencer's end
(``SequencingFinished``). Nothing updates progress, benching or the facility, or writes a line,
beside a change by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from bcmanager.core import scan
from bcmanager.core.account import JobAccount, account_job, account_record, skipped_by_basecaller
from bcmanager.core.benching import Benching
from bcmanager.core.consumers import Consumers, Listener
from bcmanager.core.events import (
    NO_FACTS,
    Benched,
    Contacted,
    Event,
    Facts,
    FileMissing,
    Late,
    Leased,
    SequencingFinished,
    Sized,
)
from bcmanager.core.folders import Recovered, RunFolders, Tail, Unlinked
from bcmanager.core.jobs import FileState, Job
from bcmanager.core.logs import Line, log_event
from bcmanager.core.progress import Progress
from bcmanager.core.state import FILES_AFTER, Completion, RunState
from bcmanager.models import (
    BCBatch,
    BenchedEngine,
    FileBytes,
    FileCounts,
    JobState,
    LeasedJob,
    QuarantinedFile,
    RunEntry,
    RunPhase,
    RunStatus,
)
from bcmanager.paths import (
    ACCOUNT_FILE,
    ATTEMPT_FILE,
    STATS_FILE,
    FolderKind,
    RunPaths,
    job_folder,
)
from bcmanager.reads import stats as readstats
from bcmanager.records import write_record
from bcmanager.settings import Settings
from bcmanager.undecodable import UndecodableNames
from bcmanager.watcher import can_watch, watch_raw_files

T = TypeVar("T")

log = logging.getLogger(__name__)

QUARANTINED_SHOWN = 100  # quarantined files listed by name in /status (all are counted)
FIRST_CHUNK = 64  # files probed before the server starts listening
CHUNK = 4096  # files probed per step after that


@dataclass(frozen=True, slots=True)
class Ending:
    """How the manager carries out the end of one job."""

    job: Job
    outcome: JobState  # as judged: a DONE may still end EMPTY once its output is looked at
    counted: bool = True  # a failure held against its files (not a benched engine's)


@dataclass(frozen=True, slots=True)
class Part:
    """Files of a DONE that its account rejected, ended as a failed attempt of their own."""

    jobid: str
    files: tuple[str, ...]
    outcome: JobState  # FAILED or QUARANTINED, as the failure policy judged it
    reason: str
    counted: bool = True  # held against its files (not a benched engine's)

    @property
    def kind(self) -> FolderKind:
        return FAILED_FOLDER[self.outcome] if self.counted else FolderKind.EXCUSED


@dataclass(frozen=True, slots=True)
class Accounted:
    """How the manager carries out a DONE once the account of its reads is made: the parts
    set apart as failed attempts, and the rest done. When the account rejected every file,
    the job itself ends as the last part's failure (``last``), its reason in its output."""

    ending: Ending
    account: JobAccount | None  # None: not checked (``Settings.account_reads``)
    parts: tuple[Part, ...]
    last: Part | None


# The folder that records a failed attempt, by how it was judged.
FAILED_FOLDER = {JobState.FAILED: FolderKind.FAILED, JobState.QUARANTINED: FolderKind.QUARANTINED}


class Manager:
    """One run: its folders, its state, and the background tasks that keep both in step."""

    def __init__(
        self,
        settings: Settings,
        folders: RunFolders | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        paths: RunPaths | None = None,
        own_watcher: bool = True,
        benching: Benching | None = None,
        siblings: Callable[[], frozenset[str]] = frozenset,
        on_gone: Callable[[], bool] | None = None,
        listener: Listener | None = None,
    ) -> None:
        """``siblings``: the job ids of the other raw folders that share this one's output
        folder (its run's), asked when recovery starts: it leaves their output alone.
        ``on_gone``: asked when a rescan finds the raw folder gone (an operator deleted or
        moved it); True: the facility sees to it, and that is no error to log at each
        rescan."""
        self.settings = settings
        if paths is None:
            paths = folders.paths if folders is not None else _paths_of(settings)
        self.paths = paths
        self.folders = folders or RunFolders(self.paths)
        # A facility watches its whole root with one watcher and hands each raw folder its
        # changes (``on_changes``); served alone, a raw folder watches itself.
        self.own_watcher = own_watcher
        self._on_gone = on_gone
        # The DONE jobs start-up found, for the facility's yield ledger to read (then emptied),
        # and the failed attempts, whose account may say why a DONE rejected their files.
        self._done_at_start: list[tuple[str, str]] = []
        self._failed_at_start: list[tuple[str, str]] = []
        self._siblings = siblings
        self.clock = clock
        self.state = RunState(settings.report_back_period)
        self.progress = Progress(clock())
        self.benching = benching or Benching(
            settings.bench_after,
            settings.bench_seconds,
            settings.bench_longest_seconds,
            window=2 * settings.report_back_period,
        )
        self.consumers = Consumers(self.progress, self.benching, self._write, listener)
        self.ready = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Jobs whose end is being carried out in a worker thread, and when that is over.
        self._busy: dict[str, asyncio.Event] = {}
        self._retrying = asyncio.Lock()  # one operator's retry at a time
        self.undecodable = UndecodableNames(self.paths.input_dir)

    @property
    def listener(self) -> Listener | None:
        """Told each event of the run after progress, the log and benching: the facility's
        bookkeeping of its runs, set again when a raw folder moves to another run."""
        return self.consumers.listener

    @listener.setter
    def listener(self, listener: Listener | None) -> None:
        self.consumers.listener = listener

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, listing: scan.InputListing | None = None) -> None:
        """Rebuild the run from disk, then keep watching it. Returns (and the server starts
        listening) once jobs are adopted and the oldest pending files can be offered: engines
        that outlived a restart keep their jobs, and the first engine to ask gets work. The
        rest of the raw files are probed after, in the background. ``listing``: the raw folder
        as the facility's discovery listed it just before (None: recovery lists it)."""
        with _collection_paused():
            recovered, unprobed = self._read_back(listing)
        self._spawn("initial scan", self._initial_scan(recovered, unprobed))
        self._spawn("reaper", self._reap_forever())
        self._spawn("rescan", self._rescan_forever())

    def _read_back(self, listing: scan.InputListing | None) -> tuple[Recovered, list[str]]:
        """Recover the folders, restore the files and jobs they record, and probe the oldest of
        the other raw files; returns what recovery found and the raw files left to probe."""
        recovered = self.folders.recover(self._siblings(), listing)
        for line in recovered.repaired:
            log.info("recovery: %s", line)
        self._restore(recovered, self.clock())
        ordered = self._unknown_oldest_first(recovered.raw)
        self._observe(scan.probe_many(self.paths.input_dir, ordered[:FIRST_CHUNK]), announce=False)
        return recovered, ordered[FIRST_CHUNK:]

    def _restore(self, recovered: Recovered, now: float) -> None:
        """What the folders say of each file, by precedence (the one place it is decided):
        done (a DONE_ folder, or FASTQ in pass/ or fail/) over leased (an ASSIGNED_ folder,
        adopted with a fresh lease) over quarantined (a QUARANTINED_ folder) over failed
        attempts (FAILED_ folders: retried where the bisection stopped). A file none of them
        records is probed by the scan. The ended jobs go to progress as one event, with when
        each ended, so a restart does not show the engines' tallies and rates from zero."""
        done: list[list[str]] = []
        attempts: list[tuple[str, tuple[str, ...]]] = []
        quarantined: list[tuple[str, str]] = []
        ended: list[tuple[str, str, JobState]] = []
        found: list[tuple[float | None, int]] = []
        wall = time.time()
        changed = scan.changed_times(
            self.paths.input_dir, [folder.name for folder, _ in recovered.ended]
        )
        for (folder, files), ctime in zip(recovered.ended, changed, strict=True):
            outcome = ENDED_AS[folder.kind]
            ended.append((folder.jobid, folder.engine, outcome))
            found.append((_ended_at(ctime, now, wall), len(files)))
            if outcome is JobState.DONE:
                done.append(files)
                self._done_at_start.append((folder.jobid, folder.engine))
            else:
                self._failed_at_start.append((folder.jobid, folder.engine))
                if outcome is JobState.QUARANTINED:
                    quarantined += [(folder.engine, name) for name in files]
                else:
                    attempts.append((folder.engine, tuple(files)))
        self._apply(self.state.record_all_ended(ended, now), now, Facts(found=tuple(found)))
        self._apply(self.state.restore_many(chain.from_iterable(done), FileState.DONE), now)
        self._apply(self.state.restore_many(recovered.done_by_fastq, FileState.DONE), now)
        for folder, files in recovered.assigned:
            self._apply(self.state.adopt(folder.jobid, folder.engine, files, now), now)
        for restored in self.state.restore_failures(attempts, quarantined):
            self._apply(restored, now)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        gc.unfreeze()

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = asyncio.create_task(work, name=name)

    # -- the protocol -----------------------------------------------------------------------

    def assign(
        self,
        engine: str,
        batch_size: int,
        max_bytes: int | None = None,
        extras: dict[str, object] | None = None,
    ) -> BCBatch:
        """Lease a batch to ``engine``: up to ``batch_size`` files, and no more than
        ``max_bytes`` bytes but for its first file; ``extras`` are extra keys of the BCBatch
        (its run's path and basecalling settings). Raises OSError (nothing leased) if the
        disk refuses."""
        now = self.clock()
        self._contact(engine, now)
        size = self.batch_files(batch_size)
        if self.benching.benched(engine, now) is not None:
            return batch_reply(self.settings, self.paths, engine)
        leased = self._lease_present(engine, size, now, max_bytes)
        if leased is None:
            return batch_reply(self.settings, self.paths, engine)
        job = leased.job
        try:
            self.folders.build_job(job.jobid, engine, job.files)
        except OSError:
            self.state.abandon(job.jobid)
            raise
        self._apply(leased, now)
        return batch_reply(
            self.settings,
            self.paths,
            engine,
            job.jobid,
            list(job.files),
            self.paths.job_input_dir(FolderKind.ASSIGNED, job.jobid, engine),
            self.paths.job_output_dir(FolderKind.TMPOUTPUT, job.jobid, engine),
            extras,
        )

    def batch_files(self, asked: int) -> int:
        """The files an engine's ``batchsize`` stands for: <= 0 means the default."""
        size = asked if asked > 0 else self.settings.default_batch_size
        return min(size, self.settings.max_batch_size)

    def _lease_present(
        self, engine: str, size: int, now: float, max_bytes: int | None = None
    ) -> Leased | None:
        """Lease a batch of files that are still there: one that an operator moved or deleted
        since it was seen is dropped as missing, never leased as a link to nothing. The lease
        is not applied yet: its folders are to be built first."""
        steer = self.benching.others_working(engine, now)
        while True:
            leased = self.state.lease(
                str(uuid.uuid4().int),
                engine,
                size,
                now,
                steer,
                sizes=self.progress.sizes,
                max_bytes=max_bytes,
            )
            if leased is None:
                return None
            gone = scan.absent(self.paths.input_dir, leased.job.files)
            if not gone:
                return leased
            self.state.abandon(leased.job.jobid)
            self._vanished(gone)

    def keepalive(self, jobid: str, reported: JobState) -> bool:
        now = self.clock()
        answer = self.state.keepalive(jobid, reported, now)
        if answer.engine is not None:
            self._contact(answer.engine, now)
        self._apply(answer, now)
        return isinstance(answer, Late)

    def complete(self, jobid: str, outcome: JobState) -> None:
        """Record a job's end, all on the calling thread (tests, and tools without a loop);
        raises StateError (nothing changes) or OSError (nothing changes, the engine may retry)."""
        ending = self._completion(jobid, outcome)
        if ending is None:
            return
        if ending.outcome is JobState.DONE:
            accounted = self._plan(ending, self._account(ending.job))
            self._ended_accounted(accounted, *self._carry_out_accounted(accounted))
            return
        self._ended(ending, *self._carry_out(ending))

    async def complete_async(self, jobid: str, outcome: JobState) -> None:
        """``complete`` for the server: the disk work runs in a worker thread."""
        await self._end_in_flight(jobid)
        ending = self._completion(jobid, outcome)
        if ending is None:
            return
        if ending.outcome is JobState.DONE:
            account = await self._off_loop(jobid, self._account, ending.job)
            accounted = self._plan(ending, account)
            carried = await self._off_loop(jobid, self._carry_out_accounted, accounted)
            self._ended_accounted(accounted, *carried)
            return
        self._ended(ending, *await self._off_loop(jobid, self._carry_out, ending))

    def _completion(self, jobid: str, outcome: JobState) -> Ending | None:
        """How to end the job now, or None for a repeated report (answered ok, nothing
        changes). A FAILED is judged here: quarantined, retried, or (from a benched engine)
        not held against its files."""
        now = self.clock()
        job = self.state.job(jobid)
        self._contact(job.engine, now)
        if self.state.check_completion(jobid, outcome, now) is Completion.REPEAT:
            return None
        if outcome is not JobState.FAILED:
            return Ending(job, outcome)
        if self.benching.benched(job.engine, now) is not None:
            return Ending(job, JobState.FAILED, counted=False)
        others = self.benching.others_working(job.engine, now)
        return Ending(
            job, self.state.judge_failure(jobid, self.settings.quarantine_attempts, others)
        )

    def _carry_out(self, ending: Ending) -> tuple[JobState, scan.AttemptRecord | None]:
        """The disk part of a FAILED or STOPPED report, safe in a worker thread: it touches
        only this job's folders. Returns how the job ended and, for a failure, what the agent
        recorded."""
        job, outcome = ending.job, ending.outcome
        if outcome in (JobState.FAILED, JobState.QUARANTINED):
            kind = FAILED_FOLDER[outcome] if ending.counted else FolderKind.EXCUSED
            self.folders.commit_failed(job.jobid, job.engine, kind)
            return outcome, self.folders.failed_attempt(job.jobid, job.engine)
        self.folders.commit_release(job.jobid, job.engine, Tail.DISCARD)
        return outcome, None

    def _account(self, job: Job) -> JobAccount | None:
        """The account of a DONE job's reads (``account.py``), in a worker thread: what its
        output holds, against its raw files' read ids and what its agent's stderr said. None
        when the settings say not to check (``account_reads``)."""
        if not self.settings.account_reads:
            return None
        output = self.paths.output_folder(FolderKind.TMPOUTPUT, job.jobid, job.engine)
        record = scan.json_record(output / ATTEMPT_FILE) or {}
        tail = record.get("stderr_tail")
        return account_job(
            self.paths.input_dir,
            job.files,
            output,
            skipped=skipped_by_basecaller(tail) if isinstance(tail, str) else None,
            may_drop=self.settings.may_drop_reads,
        )

    def _plan(self, ending: Ending, account: JobAccount | None) -> Accounted:
        """On the loop: what becomes of each file the account rejected. Each file rejected on
        its own evidence is an attempt of its own (no halving needed: the account named it);
        files rejected for a reads file they share are one attempt, halved if retried. Each is
        judged by the failure policy as a failure of that engine."""
        job = ending.job
        if account is None:
            return Accounted(ending, account, (), None)
        alone = [each for each in account.rejected() if each.alone]
        shared = [each for each in account.rejected() if not each.alone]
        groups = [[each] for each in alone] + ([shared] if shared else [])
        now = self.clock()
        others = self.benching.others_working(job.engine, now)
        counted = self.benching.benched(job.engine, now) is None
        parts = []
        for group in groups:
            files = tuple(each.name for each in group)
            outcome = JobState.FAILED
            if counted:
                outcome = self.state.judge_files(
                    files, job.engine, self.settings.quarantine_attempts, others
                )
            reason = str(group[0].rejected)
            if len(group) > 1:
                reason += f" (and {len(group) - 1:,} more files)"
            parts.append(Part(str(uuid.uuid4().int), files, outcome, reason, counted))
        last = parts.pop() if parts and not account.accepted() else None
        return Accounted(ending, account, tuple(parts), last)

    def _carry_out_accounted(
        self, accounted: Accounted
    ) -> tuple[list[Part], JobState | None, scan.AttemptRecord | None, OSError | None]:
        """The disk part of a DONE, safe in a worker thread: each rejected part set apart and
        committed as a failed attempt, the rejected reads files renamed out of the merge's way,
        the account written, then the DONE_ commit and the merge (or, when every file was
        rejected, the job's own failure). Returns the parts committed, how the job ended (None
        if it did not) and what its failure recorded; an error stops the steps and is returned
        with what was committed before it."""
        job, account = accounted.ending.job, accounted.account
        committed: list[Part] = []
        try:
            if account is not None:
                for part in accounted.parts:
                    record = account_record(account, part.files, part.reason)
                    self.folders.set_apart(
                        job.jobid, job.engine, part.jobid, part.files, part.kind, record
                    )
                    committed.append(part)
                output = self.paths.output_folder(FolderKind.TMPOUTPUT, job.jobid, job.engine)
                if account.rejected_reads_files:
                    self.folders.set_aside_reads(
                        job.jobid, job.engine, account.rejected_reads_files
                    )
                    _count_again(output)
                last = accounted.last
                files = last.files if last is not None else account.accepted()
                reason = last.reason if last is not None else None
                write_record(output, ACCOUNT_FILE, account_record(account, files, reason))
                if last is not None:
                    self.folders.commit_failed(job.jobid, job.engine, last.kind)
                    failure = self.folders.failed_attempt(job.jobid, job.engine)
                    return committed, last.outcome, failure, None
            self.folders.commit_done(job.jobid, job.engine)
        except OSError as error:
            return committed, None, None, error
        return committed, JobState.DONE, None, None

    def _ended_accounted(
        self,
        accounted: Accounted,
        committed: list[Part],
        outcome: JobState | None,
        record: scan.AttemptRecord | None,
        error: OSError | None,
    ) -> None:
        """On the loop: record what ``_carry_out_accounted`` committed, in its order; raise its
        error after (the engine may report again: the rest is carried out then)."""
        job, now = accounted.ending.job, self.clock()
        for part in committed:
            self._apply(self.state.split(job.jobid, part.files, part.jobid), now)
            ended = Ending(self.state.job(part.jobid), part.outcome, part.counted)
            self._ended(ended, part.outcome, scan.AttemptRecord(0, None, None, None, part.reason))
        if isinstance(error, Unlinked):
            # Out of the job on disk, in no job folder: pending again, as after a restart.
            part_id = str(uuid.uuid4().int)
            self._apply(self.state.split(job.jobid, error.files, part_id), now)
            self._ended(Ending(self.state.job(part_id), JobState.STOPPED), JobState.STOPPED)
        if error is not None:
            raise error
        assert outcome is not None
        last = accounted.last
        counted = last is None or last.counted
        self._ended(Ending(self.state.job(job.jobid), outcome, counted), outcome, record)

    async def retry(self, names: list[str] | None) -> list[str]:
        """An operator sends files back: the named ones (None: every quarantined file) have
        their failed attempts excused on disk, and the quarantined among them are pending
        again, each alone. Returns those that were quarantined."""
        async with self._retrying:
            excused = await asyncio.to_thread(
                self.folders.retry, None if names is None else set(names)
            )
        retried = self.state.retry(excused if names is None else names)
        sizes = await asyncio.to_thread(scan.sizes, self.paths.input_dir, retried.files)
        self._apply(retried, self.clock(), Facts(sizes=tuple(sizes)))
        return list(retried.files)

    def _contact(self, engine: str, now: float) -> None:
        self._apply(Contacted(engine), now)

    async def _end_in_flight(self, jobid: str) -> None:
        """Wait until no change of ``jobid`` is in flight."""
        while (busy := self._busy.get(jobid)) is not None:
            await busy.wait()

    async def _off_loop(self, jobid: str, work: Callable[..., T], *args: Any) -> T:
        """Run a change of one job in a worker thread, the job marked busy meanwhile."""
        busy = self._busy[jobid] = asyncio.Event()
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            del self._busy[jobid]
            busy.set()

    def _ended(
        self, ending: Ending, outcome: JobState, record: scan.AttemptRecord | None = None
    ) -> None:
        """The job's end is on disk: record it, and its files deleted while leased (missing, not
        pending), then apply the events; so the consumers, the facility among them, see the
        end with the state it leaves."""
        job, now = ending.job, self.clock()
        ended = self.state.finish(job.jobid, outcome, counted=ending.counted)
        gone = self._missing(job.files) if FILES_AFTER[outcome] is FileState.PENDING else []
        self._apply(ended, now, Facts(record=record))
        for missing in gone:
            self._apply(missing, now)

    def _apply(
        self, event: Event, now: float, facts: Facts = NO_FACTS, *, logged: bool = True
    ) -> None:
        """The one way a change reaches the rest (``Consumers.apply``): no line unless
        ``logged`` (files found at start-up)."""
        self.consumers.apply(event, now, facts, logged=logged)

    def _write(self, line: Line) -> None:
        self._log(line.event, line.level, **line.facts)

    def _log(self, event: str, level: int = logging.INFO, **facts: str | int | None) -> None:
        counts = {state.value: count for state, count in self.state.counts().items()}
        log_event(log, event, counts, level, **facts)

    # -- the front door: what the facility asks of a raw folder, and tells it -----------------
    # The facility holds many raw folders; it asks each through these, never reaching into its
    # state machine, progress or folders.

    def job_problems(self) -> list[str]:
        """Jobs whose folders the manager could not put right (a tail that keeps failing, or
        leftovers recovery could not handle): the rest of the run goes on meanwhile."""
        return sorted(self.folders.problems.values())

    def problems(self) -> list[str]:
        """Why the manager cannot do its job now; empty when healthy."""
        found = []
        if not os.access(self.paths.input_dir, os.R_OK | os.X_OK) or not os.path.isdir(
            self.paths.input_dir
        ):
            found.append(f"INPUT_DIR {self.paths.input_dir} is not a readable folder")
        for name, task in self._tasks.items():
            if task.done() and name != "initial scan":
                found.append(f"the {name} has stopped")
        return found

    def counts(self) -> dict[FileState, int]:
        """Its files by state."""
        return self.state.counts()

    def bytes_by_state(self) -> dict[FileState, int]:
        """Its bytes by state."""
        return self.progress.bytes_by_state()

    def pending_bytes(self) -> int:
        """The bytes of its pending files (0: none pending), as the scheduler weighs a run."""
        if not self.state.pending_count():
            return 0
        return self.progress.bytes_by_state()[FileState.PENDING]

    def has_pending(self) -> bool:
        return self.state.pending_count() > 0

    def waited(self) -> float | None:
        """How long its oldest pending file has waited; None when nothing is pending."""
        return self.progress.waited(self.state.first_pending(), self.clock())

    def file_state(self, name: str) -> FileState | None:
        return self.state.file_state(name)

    def job_ids(self) -> frozenset[str]:
        """Every job it knows, live or ended."""
        return self.state.job_ids()

    def has_job(self, jobid: str) -> bool:
        return self.state.has_job(jobid)

    def live_jobs(self) -> list[Job]:
        return self.state.live_jobs()

    def quarantined(self, names: list[str] | None = None) -> list[str]:
        """Its quarantined files; of ``names`` only (None: all), in the order a retry of them
        sends them back."""
        if names is None:
            return self.state.quarantined()
        return list(
            dict.fromkeys(name for name in names if self.state.file_state(name) is FileState.FAILED)
        )

    def quarantined_files(self, shown: Callable[[str], str]) -> list[QuarantinedFile]:
        """Its quarantined files, each named by ``shown`` and with the engines it failed on."""
        return [
            QuarantinedFile(file=shown(name), failed_on=self.state.failed_alone(name))
            for name in self.state.quarantined()
        ]

    def engines_since(self, since: float, now: float) -> set[str]:
        """The engines it heard from since ``since``."""
        return {
            stats.engine for stats in self.progress.engine_stats(now) if stats.last_contact >= since
        }

    def progress_so_far(self) -> Progress:
        """Its rates and tallies, for a snapshot of several raw folders: read, never changed."""
        return self.progress

    def outputs_ended_at_start(self) -> list[str]:
        """The output folders of the jobs start-up found ended (DONE's LOGOUTPUT_, failed
        attempts' FAILEDOUTPUT_), for its run's yield ledger; handed over once."""
        logs = [
            job_folder(FolderKind.LOGOUTPUT, jobid, engine) for jobid, engine in self._done_at_start
        ] + [
            job_folder(FolderKind.FAILEDOUTPUT, jobid, engine)
            for jobid, engine in self._failed_at_start
        ]
        self._done_at_start, self._failed_at_start = [], []
        return logs

    def prepare_output(self) -> None:
        """Make its output folder (a run's new one, once it moved). Blocking: a worker thread."""
        self.folders.prepare()

    def sequencing_finished(self, summary: str) -> None:
        """Its run's sequencer wrote its final summary (the facility found it, and says when
        the run is complete)."""
        self._apply(SequencingFinished(summary), self.clock())

    # -- background work --------------------------------------------------------------------

    async def _initial_scan(self, recovered: Recovered, unprobed: list[str]) -> None:
        """Probe the files that start-up left (oldest first), then size those recovery placed,
        then rescan for files written while start-up read the run, before the watcher was up;
        ready after that."""
        await self._probe_in_chunks(unprobed[:CHUNK], announce=False)
        # The watcher starts now, not before the server: at a million files the kernel takes
        # 0.1 s to set up the watch (inotify marks every entry), and the event loop waits.
        if self.own_watcher and not self.settings.force_polling and can_watch(self.paths.input_dir):
            self._spawn("watcher", self._watch())
        await self._probe_in_chunks(unprobed[CHUNK:], announce=False)
        placed = await asyncio.to_thread(recovered.placed)
        for start in range(0, len(placed), CHUNK):
            chunk = placed[start : start + CHUNK]
            sized = []
            for name, size in await asyncio.to_thread(scan.sizes, self.paths.input_dir, chunk):
                state = self.state.file_state(name)
                if state is not None:
                    sized.append((name, state, size))
            self._apply(Sized(tuple(sized)), self.clock())
        await self._rescan_or_log()
        self.ready = True
        self._log("ready")

    async def _probe_in_chunks(self, names: list[str], *, announce: bool = True) -> None:
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            found = await asyncio.to_thread(scan.probe_many, self.paths.input_dir, chunk)
            self._observe(found, announce=announce)

    def _observe(self, found: list[tuple[str, scan.RawProbe]], *, announce: bool = True) -> None:
        """Record what a scan saw. A file's arrival is dated by its modification time, so files
        found at start-up or by a late rescan land in the minute the sequencer wrote them."""
        now, wall = self.clock(), time.time()
        for name, probe in found:
            seen = self.state.observe(name, probe.complete)
            if seen is not None:
                written = now - max(0.0, wall - probe.mtime)
                self._apply(seen, now, Facts(size=probe.size, at=written), logged=announce)

    def _unknown_oldest_first(self, names: list[str]) -> list[str]:
        """On the loop at start-up, in a worker thread for rescans: there, dict lookups are safe
        against the loop's updates, and a name added meanwhile is simply observed twice, which
        changes nothing."""
        return scan.oldest_first(self.paths.input_dir, self.state.unknown(names))

    async def _rescan(self) -> None:
        """Find raw files that no event announced, waiting files that completed, waiting or
        pending files that are gone, and missing files that are back; name the files that no
        name in UTF-8 lets us offer."""
        listing = await asyncio.to_thread(scan.raw_names, self.paths.input_dir)
        self.undecodable.report(listing.undecodable)
        await self._probe_in_chunks(
            await asyncio.to_thread(self._unknown_oldest_first, listing.names)
        )
        self._vanished(await asyncio.to_thread(self._unplaced_not_in, listing.names))
        await self._probe_in_chunks(self.state.waiting() + self.state.missing())

    def _unplaced_not_in(self, names: list[str]) -> list[str]:
        """Waiting and pending files that a listing of INPUT_DIR did not show (in a worker
        thread: the copies of the queue and the waiting set are made in C)."""
        listed = set(names)
        return [
            name for name in chain(self.state.pending(), self.state.waiting()) if name not in listed
        ]

    def _vanished(self, names: Iterable[str]) -> None:
        """Files an event, a listing or a lease found gone: checked once more, then MISSING."""
        gone = scan.absent(self.paths.input_dir, names)
        now = self.clock()
        for name in gone:
            missing = self.state.vanish(name)
            if missing is not None:
                self._apply(missing, now)

    def _missing(self, names: Iterable[str]) -> list[FileMissing]:
        """``_vanished``, but the events are returned for the caller to apply after its own."""
        found = (self.state.vanish(name) for name in scan.absent(self.paths.input_dir, names))
        return [missing for missing in found if missing is not None]

    async def _rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescan_interval)
            for line in await asyncio.to_thread(self.folders.finish_tails):
                log.info("finished after a disk fault: %s", line)
            await self._rescan_or_log()

    async def rescan(self) -> None:
        """Look at the raw folder again now (the facility asks when events may have been
        missed)."""
        await self._rescan_or_log()

    async def _rescan_or_log(self) -> None:
        """A rescan; when INPUT_DIR cannot be read it is logged (and /heartbeat says so), and
        the next rescan tries again."""
        try:
            await self._rescan()
        except OSError as error:
            gone = not os.path.lexists(self.paths.input_dir)
            if gone and self._on_gone is not None and self._on_gone():
                return
            log.error("rescan of %s failed: %s", self.paths.input_dir, error)

    async def on_changes(self, names: list[str], deleted: list[str]) -> None:
        """Raw files a watcher saw written to (``names``) or gone (``deleted``)."""
        unplaced = (None, FileState.WAITING, FileState.MISSING)
        fresh = [n for n in names if self.state.file_state(n) in unplaced]
        if fresh:
            self._observe(await asyncio.to_thread(scan.probe_many, self.paths.input_dir, fresh))
        self._vanished(deleted)

    async def _watch(self) -> None:
        await watch_raw_files(self.paths.input_dir, self.on_changes)

    async def _reap_forever(self) -> None:
        tick = min(1.0, self.settings.report_back_period / 4)
        while True:
            await asyncio.sleep(tick)
            for job in self._due():
                if job.jobid in self._busy or not job.live:
                    continue  # its engine's report got there while an earlier job was taken
                if await self._off_loop(job.jobid, self._take_back, job):
                    self._ended(Ending(job, JobState.EXPIRED), JobState.EXPIRED)

    def move_to(self, paths: RunPaths) -> None:
        """Its raw folder was moved (or its run was): serve it from ``paths`` from now on. Its
        files and job folders moved with it, so what the state machine holds stays true and
        nothing is read again; the jobs it leased are to be given back (``give_back``)."""
        self.paths = paths
        self.folders.paths = paths
        self.undecodable.folder = paths.input_dir

    async def give_back(self) -> None:
        """Take back every live job now, as when its lease runs out: its engine is told it is
        late, its files are offered again, and its output is set aside, never merged. For a
        raw folder that moved while its jobs were leased: the folders their engines were told
        are no longer where they were."""
        for jobid in [job.jobid for job in self.state.live_jobs()]:
            await self._end_in_flight(jobid)  # an end in flight finishes (or fails) first
            job = self.state.job(jobid)
            if job.live and await self._off_loop(jobid, self._take_back, job):
                self._ended(Ending(job, JobState.EXPIRED), JobState.EXPIRED)

    def reap(self) -> None:
        """Take back every job whose lease ran out, all on the calling thread."""
        for job in self._due():
            if self._take_back(job):
                self._ended(Ending(job, JobState.EXPIRED), JobState.EXPIRED)

    def _due(self) -> list[Job]:
        """Jobs whose lease ran out, but for those whose end is being carried out."""
        return [job for job in self.state.due(self.clock()) if job.jobid not in self._busy]

    def _take_back(self, job: Job) -> bool:
        """The disk part of an expiry; returns whether it is done (else the reaper retries)."""
        try:
            self.folders.commit_release(job.jobid, job.engine, Tail.EXPIRED)
        except FileNotFoundError:
            log.warning("job %s: its ASSIGNED_ folder was gone already", job.jobid)
        except OSError as error:
            log.error("job %s: could not take its lease back (%s); retrying", job.jobid, error)
            return False
        return True


def batch_reply(
    settings: Settings,
    paths: RunPaths,
    engine: str,
    jobid: str = "-1",
    batch: list[str] | None = None,
    input_dir: str = "",
    output_dir: str = "",
    extras: dict[str, object] | None = None,
) -> BCBatch:
    """A BCBatch for ``engine``: by default the no-work reply (jobid "-1", nothing in it). The
    folders are named under the roots; a run's ``extras`` go only with work."""
    files = batch or []
    period = settings.report_back_period
    return BCBatch(
        report_back_period=period,
        report_back_interval=period,
        jobid=jobid,
        job_input_dir=input_dir,
        job_output_dir=output_dir,
        bc_engine_id=engine,
        batch_size=len(files),
        batch=files,
        input_dir=str(paths.input_root or paths.input_dir),
        output_dir=str(paths.output_root or paths.output_dir),
        **((extras or {}) if files else {}),
    )


def snapshot(
    progress: Progress,
    now: float,
    *,
    input_dir: str,
    output_dir: str,
    ready: bool,
    phase: RunPhase,
    counts: dict[FileState, int],
    sizes: dict[FileState, int],
    jobs: Iterable[Job],
    quarantined: list[QuarantinedFile],
    benched: Iterable[Benched],
    job_problems: list[str],
    final_summary: str | None,
    runs: list[RunEntry] | None = None,
) -> RunStatus:
    """The snapshot of one raw folder, of a run, or of every run: what ``progress`` and the
    state machines say, as /status shows it."""
    return RunStatus(
        input_dir=input_dir,
        output_dir=output_dir,
        ready=ready,
        phase=phase,
        final_summary=final_summary,
        uptime_seconds=round(now - progress.started, 1),
        files=FileCounts(**{state.value: count for state, count in counts.items()}),
        bytes=FileBytes(**{state.value: size for state, size in sizes.items()}),
        rates=progress.rates(now),
        drain=progress.drain(now, counts),
        history=progress.history(now),
        engines=progress.engines(now),
        retired_engines=progress.retired_snapshot(now),
        recent_problems=progress.recent_problems(now),
        job_problems=job_problems,
        quarantined=quarantined,
        benched=[
            BenchedEngine(
                engine=each.engine, seconds_left=round(each.until - now, 1), reason=each.reason
            )
            for each in benched
        ],
        jobs=[
            LeasedJob(
                jobid=job.jobid,
                engine=job.engine,
                state=job.state.value,
                files=list(job.files),
                seconds_left=round(max(0.0, job.deadline - now), 3),
            )
            for job in jobs
        ],
        runs=runs or [],
    )


def _paths_of(settings: Settings) -> RunPaths:
    """One run served alone: INPUT_DIR is its raw folder, OUTPUT_DIR its output."""
    return RunPaths(settings.input_dir.resolve(), settings.output_dir.resolve())


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """No garbage collection while start-up reads a run back, then its objects frozen out of
    later ones. At a million files, start-up makes a million objects that all live on:
    collecting in between found nothing and took 0.2 s, and each full collection after it
    held the event loop for 60 ms. ``Manager.stop`` unfreezes them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _count_again(output: Path) -> None:
    """The agent's statistics of a job counted reads files the account then rejected: count
    what is left to merge again, so that the run's yield holds only merged reads (the rejected
    files' reads are counted when their retry is done). Nothing to do where it wrote none."""
    if not (output / STATS_FILE).exists():
        return
    record = scan.json_record(output / ATTEMPT_FILE) or {}
    command = record.get("command")
    words = [w for w in command if isinstance(w, str)] if isinstance(command, list) else []
    readstats.write_job_stats(output, readstats.job_stats(output, words))


# How a job folder found at start-up ended.
ENDED_AS = {
    FolderKind.DONE: JobState.DONE,
    FolderKind.FAILED: JobState.FAILED,
    FolderKind.QUARANTINED: JobState.QUARANTINED,
}


def _ended_at(changed: float | None, now: float, wall: float) -> float | None:
    """When an ended job folder ended, by the monotonic clock that read ``now`` when the wall
    clock read ``wall``: its status-change time ``changed``, which the rename that ended it
    (ASSIGNED_ to DONE_, FAILED_ or QUARANTINED_) sets, while its modification time is when it
    was assigned. None when it is gone since recovery read it: there is nothing to date."""
    if changed is None:
        return None
    return now - max(0.0, wall - changed)
