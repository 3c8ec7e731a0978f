"""The run's state machine: which raw file is waiting, pending, leased, done or failed, and which
job holds which lease.

Rules of this module:

- Everything that decides the state of a file or a job lives here, in this file, as plain Python.
  It does no I/O and reads no clock: callers pass ``now`` (monotonic seconds) and filesystem facts
  in, and carry out on disk what a method describes, *before* they tell this module it happened.
- The allowed moves are data (``FILE_TRANSITIONS``, ``JOB_TRANSITIONS``). Any other move raises
  ``InvalidTransition`` (or a subclass naming the case); nothing is silently ignored.
- Every method costs O(1) or O(batch). Nothing walks all the files of a run, which can hold a
  million of them; files are names in one dict, not objects.
- It tells no one. Each method that changes a file or a job checks the change, makes it, and
  returns what happened as a record of ``events.py`` (None where nothing changed): ``observe``
  a FileSeen, ``vanish`` a FileMissing, ``lease`` Leased, ``keepalive`` KeptAlive or Late,
  ``finish`` Ended, ``retry`` Retried; recovery's ``adopt`` Adopted, ``record_ended``
  FoundEnded (``record_all_ended`` one EndedFound of them all), the ``restore`` methods
  Restored. The caller hands each one on to whatever
  follows the run (progress, and through it /status and /metrics; the log), so a change and
  what is told of it cannot drift apart.

Theory of operation: a raw file enters as WAITING (its POD5 end signature is not there yet) or
PENDING (complete), and PENDING files wait in a FIFO queue, oldest first. A waiting or pending
file that disappears from INPUT_DIR (an operator moved or deleted it) becomes MISSING, and comes
back if it reappears. ``lease`` takes a batch
off the front and makes a Job that holds those files until ``report_back_period`` seconds after
its last keepalive. A job ends in exactly one of five ways: DONE (its files are done), FAILED
(an attempt failed: its files are retried), QUARANTINED (its one file has failed often enough to
be set aside), STOPPED (the engine gave it back) or EXPIRED (its lease ran out). The last two
put the files back at the *front* of the queue, so returned work goes out before newer files.
An engine's DONE is checked against the reads that came out first (``account.py``): the files
it rejects are set apart (``split``) and end as a failed attempt of their own, and when it
rejects all of them the job itself ends as that failure.

Failures (docs/reliability.md). A failed attempt is not a bad file. The files of a FAILED job of
n > 1 files are retried in two halves, each its own job, recursively, so a bad file ends alone;
retries are leased before any other file and never mixed with others. A file that fails alone
is quarantined (FileState.FAILED) once it failed alone on two engines, or ``attempts`` times
while no other engine works; meanwhile a retry of one file goes to an engine that has not failed
it, if another works. ``retry`` sends quarantined files back. An ended job keeps no
file list: memory follows what is live, not the run's history.

A job past its deadline is late even before the reaper expires it: it gets no more
keepalives and can no longer complete. After a restart, the caller rebuilds all of this from the
job folders on disk with ``adopt`` and ``restore``.

One change, end to end: the disk changes (MinKNOW closes a raw file; a rename commits an
engine's report), the manager tells this module, which applies the change and returns its
event, and the manager hands the event to ``Progress.apply`` (bytes, rates, tallies: what
/status and /metrics show) and to the log (one line per event).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from itertools import filterfalse

from bcmanager.core.events import (
    Adopted,
    Ended,
    EndedFound,
    FileMissing,
    FileSeen,
    FoundEnded,
    KeptAlive,
    Late,
    Leased,
    Restored,
    Retried,
    Split,
)
from bcmanager.core.jobs import (
    COMPLETION_STATES,
    ENDED_JOB_STATES,
    LIVE_JOB_STATES,
    FileState,
    Job,
)
from bcmanager.models import JobState

# How the manager may carry out what an engine reported: a DONE whose account rejects every
# file ends as a failure (see ``account.py``), a FAILED may quarantine. A repeated report is
# answered as the first one was, whichever way.
ENDS_OF: dict[JobState, frozenset[JobState]] = {
    JobState.DONE: frozenset({JobState.DONE, JobState.FAILED, JobState.QUARANTINED}),
    JobState.FAILED: frozenset({JobState.FAILED, JobState.QUARANTINED}),
    JobState.STOPPED: frozenset({JobState.STOPPED}),
}

# None stands for "not known yet": how a file enters the run.
FILE_TRANSITIONS: dict[FileState | None, frozenset[FileState]] = {
    None: frozenset(FileState),  # a scan finds it, or recovery finds it in a job folder
    FileState.WAITING: frozenset({FileState.PENDING, FileState.MISSING}),
    FileState.PENDING: frozenset({FileState.LEASED, FileState.MISSING}),
    FileState.LEASED: frozenset({FileState.PENDING, FileState.DONE, FileState.FAILED}),
    FileState.DONE: frozenset(),
    FileState.FAILED: frozenset({FileState.PENDING}),  # an operator's retry
    FileState.MISSING: frozenset({FileState.WAITING, FileState.PENDING}),
}

# A live job may report any live state (clients differ in what they send) or end.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.ASSIGNED: LIVE_JOB_STATES | ENDED_JOB_STATES,
    JobState.STARTED: LIVE_JOB_STATES | ENDED_JOB_STATES,
    JobState.PROCESSING: LIVE_JOB_STATES | ENDED_JOB_STATES,
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.STOPPED: frozenset(),
    JobState.EXPIRED: frozenset(),
    JobState.QUARANTINED: frozenset(),
}

# How each end of a job leaves its files.
FILES_AFTER: dict[JobState, FileState] = {
    JobState.DONE: FileState.DONE,
    JobState.FAILED: FileState.PENDING,
    JobState.QUARANTINED: FileState.FAILED,
    JobState.STOPPED: FileState.PENDING,
    JobState.EXPIRED: FileState.PENDING,
}


class StateError(Exception):
    """A request the state machine cannot honour; the message says why."""


class InvalidTransition(StateError):
    """A move that the transition tables do not allow."""


class LeaseExpired(InvalidTransition):
    """The job's lease ran out: its files went to others, it can no longer complete."""


class UnknownJob(StateError):
    """No job with this id was ever handed out by this run."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Failed files to lease together, as a batch of their own, before any other file."""

    files: tuple[str, ...]
    avoid: str | None = None  # the engine whose failure made this group: others go first


class Completion(str, Enum):
    """What a completion request asks of the caller."""

    APPLY = "apply"  # carry out the job's end on disk, then call finish()
    REPEAT = "repeat"  # the job already ended this way: answer ok, change nothing


class RunState:
    """Every raw file and job of one run, and the pending queue."""

    __slots__ = (
        "_counts",
        "_failed_alone",
        "_files",
        "_jobs",
        "_live",
        "_missing",
        "_pending",
        "_quarantined",
        "_retries",
        "_waiting",
        "lease_seconds",
    )

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._files: dict[str, FileState] = {}
        self._counts: dict[FileState, int] = dict.fromkeys(FileState, 0)
        self._pending: deque[str] = deque()
        self._waiting: set[str] = set()
        self._missing: set[str] = set()
        self._quarantined: set[str] = set()
        # Failed files to try again, each group a batch of its own, leased before anything
        # else; and the engines each file failed alone on. Both hold only failing files.
        self._retries: deque[Retry] = deque()
        self._failed_alone: dict[str, list[str]] = {}
        self._jobs: dict[str, Job] = {}
        # Live jobs ordered by deadline: every lease lasts lease_seconds, so refreshing one moves
        # it to the end and the expired ones are always at the front.
        self._live: OrderedDict[str, Job] = OrderedDict()

    # -- files ------------------------------------------------------------------------------

    def file_state(self, name: str) -> FileState | None:
        return self._files.get(name)

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names a scan has still to look at, in their order (safe to call from a scanning
        thread). The loop runs in C: a start-up asks this of a million names."""
        return list(filterfalse(self._files.__contains__, names))

    def counts(self) -> dict[FileState, int]:
        return dict(self._counts)

    def waiting(self) -> list[str]:
        return list(self._waiting)

    def quarantined(self) -> list[str]:
        """Quarantined files, by name (they wait for an operator: few)."""
        return sorted(self._quarantined)

    def missing(self) -> list[str]:
        """Files that went missing: a scan looks for them again."""
        return list(self._missing)

    def pending_count(self) -> int:
        return self._counts[FileState.PENDING]

    def pending(self) -> list[str]:
        """The queue as it stands, oldest first (a copy: safe to read from a scanning thread,
        as the copy is made in C, holding the interpreter lock). It may name files that left
        the queue since: callers check each name's state. Failed files waiting for a retry
        come first."""
        retries = [name for group in list(self._retries) for name in group.files]
        return retries + list(self._pending)

    def first_pending(self) -> str | None:
        """The oldest pending file, in the order ``pending`` gives (retries first), or None:
        how long it has waited is what a scheduler weighs queues by, asked at every request,
        so this drops the stale entries it passes (as ``lease`` would) instead of copying
        the queue. O(1) amortised; a retry group costs its own length, and holds only
        failing files."""
        while self._retries:
            group = self._retries[0]
            files = tuple(n for n in group.files if self._files.get(n) is FileState.PENDING)
            if files:
                if files != group.files:
                    self._retries[0] = Retry(files, group.avoid)
                return files[0]
            self._retries.popleft()
        return self._first_queued()

    def _first_queued(self) -> str | None:
        """The front of the pending queue once the stale names before it are dropped: a name
        whose file went missing has left its place; one that came back is queued again, and
        is taken at its first place and dropped at the other."""
        while self._pending:
            name = self._pending[0]
            if self._files.get(name) is FileState.PENDING:
                return name
            self._pending.popleft()
        return None

    def has_job(self, jobid: str) -> bool:
        return jobid in self._jobs

    def job_ids(self) -> frozenset[str]:
        return frozenset(self._jobs)

    def observe(self, name: str, complete: bool) -> FileSeen | None:
        """A scan or a watch event saw raw file ``name``. A file new to the run, waiting or
        missing is waiting or pending now, as ``complete`` says (a waiting file seen again is
        reported too: its size grew); a file with a place (pending, leased, done, failed)
        keeps it, and None says so."""
        current = self._files.get(name)
        if current is None or current is FileState.MISSING or current is FileState.WAITING:
            new = FileState.PENDING if complete else FileState.WAITING
            if new is not current:
                self._move(name, new)
                if complete:
                    self._pending.append(name)
            return FileSeen(name, current, new)
        return None

    def vanish(self, name: str) -> FileMissing | None:
        """A waiting or pending file is gone from INPUT_DIR: it is MISSING, never leased as a
        link to nothing. None when nothing changed (leased, done and failed files keep their
        state: their job folders record them). Its place in the queue is skipped when
        ``lease`` reaches it."""
        current = self._files.get(name)
        if current is not FileState.WAITING and current is not FileState.PENDING:
            return None
        self._move(name, FileState.MISSING)
        return FileMissing(name, current)

    def restore(self, name: str, state: FileState) -> Restored:
        """Recovery: a file found in a DONE_ or FAILED_ folder, or with FASTQ in pass/fail."""
        return self.restore_many((name,), state)

    def restore_many(self, names: Iterable[str], state: FileState) -> Restored:
        """``restore`` for many files at once: a start-up restores up to a million, so this
        works with whole dicts (in C). A file not known yet enters as done or failed
        (``FILE_TRANSITIONS[None]``); a known one keeps its state."""
        if state not in (FileState.DONE, FileState.FAILED):
            raise InvalidTransition(f"restore() records done or failed files, not {state.value}")
        restored = dict.fromkeys(names, state)
        for known in restored.keys() & self._files.keys():
            del restored[known]
        self._files.update(restored)
        self._counts[state] += len(restored)
        return Restored(state, len(restored))

    def _move(self, name: str, new: FileState) -> None:
        current = self._files.get(name)
        if new not in FILE_TRANSITIONS[current]:
            shown = current.value if current else "unknown"
            raise InvalidTransition(f"file {name}: {shown} -> {new.value} is not allowed")
        if current is not None:
            self._counts[current] -= 1
            if current is FileState.WAITING:
                self._waiting.discard(name)
            elif current is FileState.MISSING:
                self._missing.discard(name)
            elif current is FileState.FAILED:
                self._quarantined.discard(name)
        self._files[name] = new
        self._counts[new] += 1
        if new is FileState.WAITING:
            self._waiting.add(name)
        elif new is FileState.MISSING:
            self._missing.add(name)
        elif new is FileState.FAILED:
            self._quarantined.add(name)

    # -- jobs -------------------------------------------------------------------------------

    def job(self, jobid: str) -> Job:
        try:
            return self._jobs[jobid]
        except KeyError:
            raise UnknownJob(f"job {jobid} is not known to this run") from None

    def live_jobs(self) -> list[Job]:
        return list(self._live.values())

    def lease(
        self,
        jobid: str,
        engine: str,
        batch_size: int,
        now: float,
        steer: bool = False,
        *,
        sizes: Mapping[str, int] | None = None,
        max_bytes: int | None = None,
    ) -> Leased | None:
        """Take up to ``batch_size`` pending files into a new job; None if none. A retry of
        failed files goes first, alone; else the oldest pending files. With ``steer`` (another
        engine works now), a retry that ``engine`` made by failing, or a file that failed
        alone on it, is left for another one.

        With both ``sizes`` and ``max_bytes``, the oldest files are taken while the batch holds at
        most ``max_bytes`` (files range from megabytes to tens of gigabytes, so a count alone
        says little of a batch's work), but always one file at least, however large, so that
        no file waits for ever. A file ``sizes`` does not know yet weighs nothing: the count
        still caps the batch. A retry group is leased as it stands: its halves are the
        bisection's, not a budget's.

        The caller builds the job's folders next, and hands the event on once they stand; if
        that fails it calls ``abandon`` instead.
        """
        if jobid in self._jobs:
            raise InvalidTransition(f"job {jobid} exists already")
        retry, failed_by = self._take_retry(engine, batch_size, steer)
        if retry:
            for name in retry:
                self._move(name, FileState.LEASED)
            job = Job(jobid, engine, retry, JobState.ASSIGNED, now, now, True, failed_by)
            return Leased(self._start(job))
        files: list[str] = []
        taken = 0
        while len(files) < batch_size and (oldest := self._first_queued()) is not None:
            if sizes is not None and max_bytes is not None:
                taken += sizes.get(oldest, 0)
                if files and taken > max_bytes:
                    break
            self._pending.popleft()
            self._move(oldest, FileState.LEASED)
            files.append(oldest)
        if not files:
            return None
        return Leased(self._start(Job(jobid, engine, tuple(files), JobState.ASSIGNED, now, now)))

    def abandon(self, jobid: str) -> None:
        """The job's folders could not be built: forget it, its files back in front. Nothing
        happened that anyone was told of (the lease's event is handed on only once the folders
        stand), so this returns no event."""
        job = self.job(jobid)
        if job.state is not JobState.ASSIGNED:
            raise InvalidTransition(
                f"job {jobid} is {job.state.value}: only a new job is abandoned"
            )
        self._end_live(job)
        del self._jobs[jobid]
        self._return_to_front(job)

    def _take_retry(
        self, engine: str, batch_size: int, steer: bool
    ) -> tuple[tuple[str, ...], str | None]:
        """The first group of failed files that ``engine`` may have (at most ``batch_size`` of
        it; the rest stays a group), and the engine whose failure made it. Costs O(groups):
        only failing files are in groups."""
        chosen: tuple[str, ...] = ()
        failed_by: str | None = None
        kept: deque[Retry] = deque()
        while self._retries:
            group = self._retries.popleft()
            files = tuple(n for n in group.files if self._files.get(n) is FileState.PENDING)
            if not files:
                continue  # gone missing since, or taken back by an operator
            alone_on = self._failed_alone.get(files[0], ()) if len(files) == 1 else ()
            if chosen or (steer and (engine == group.avoid or engine in alone_on)):
                kept.append(Retry(files, group.avoid))
                continue
            chosen, rest, failed_by = files[:batch_size], files[batch_size:], group.avoid
            if rest:
                kept.append(Retry(rest, group.avoid))
        self._retries = kept
        return chosen, failed_by

    def judge_failure(self, jobid: str, attempts: int, others_working: bool) -> JobState:
        """How an engine's FAILED report of a live job ends: QUARANTINED when its one file has
        now failed alone on two engines, or ``attempts`` times while ``others_working`` is
        false; FAILED (its files retried) otherwise."""
        job = self.job(jobid)
        return self.judge_files(job.files, job.engine, attempts, others_working)

    def judge_files(
        self, files: tuple[str, ...], engine: str, attempts: int, others_working: bool
    ) -> JobState:
        """``judge_failure`` for ``files`` failing on ``engine``: a job's, or a part of one."""
        if len(files) != 1:
            return JobState.FAILED
        engines = [*self._failed_alone.get(files[0], ()), engine]
        if len(set(engines)) >= 2 or (not others_working and len(engines) >= attempts):
            return JobState.QUARANTINED
        return JobState.FAILED

    def failed_alone(self, name: str) -> list[str]:
        """The engines ``name`` failed alone on, one entry per attempt."""
        return list(self._failed_alone.get(name, ()))

    def retry(self, names: Iterable[str]) -> Retried:
        """An operator sends files back: their failed attempts forgotten, and the quarantined
        ones pending again, each alone; the event names those."""
        names = list(names)
        for name in names:
            self._failed_alone.pop(name, None)
        sent = [name for name in names if self._files.get(name) is FileState.FAILED]
        for name in sent:
            self._move(name, FileState.PENDING)
            self._retries.append(Retry((name,)))
        return Retried(tuple(sent))

    def restore_failures(
        self,
        attempts: Iterable[tuple[str, tuple[str, ...]]],
        quarantined: Iterable[tuple[str, str]],
    ) -> list[Restored]:
        """Recovery: the failed attempts found on disk, (engine, files) of each, and the
        quarantined files, (engine, file). Files recorded elsewhere keep their state. The
        others are quarantined, or pending as retries: the half of the smallest failed batch
        that holds each (bisection goes on where it stopped), or alone. The events count
        both, quarantined first."""
        set_aside = retried = 0
        smallest: dict[str, tuple[str, ...]] = {}
        for engine, files in attempts:
            for name in files:
                if len(files) == 1:
                    self._failed_alone.setdefault(name, []).append(engine)
                if name not in smallest or len(files) < len(smallest[name]):
                    smallest[name] = files
        for engine, name in quarantined:
            self._failed_alone.setdefault(name, []).append(engine)
            if name not in self._files:
                self._move(name, FileState.FAILED)
                set_aside += 1
        groups: dict[tuple[str, ...], None] = {}
        for name, files in smallest.items():
            if name in self._files:
                continue
            groups[_half_with(files, name)] = None
        for group in groups:
            for name in group:
                if name not in self._files:
                    self._move(name, FileState.PENDING)
                    retried += 1
            self._retries.append(Retry(group))
        return [Restored(FileState.FAILED, set_aside), Restored(FileState.PENDING, retried)]

    def adopt(self, jobid: str, engine: str, files: Iterable[str], now: float) -> Adopted:
        """Recovery: an ASSIGNED_ folder found on disk gets a fresh lease.

        A file already recorded elsewhere (done, failed, leased to another job) stays where it
        is and is left out of this job, so it can never be merged or handed out twice.
        """
        owned = tuple(dict.fromkeys(name for name in files if name not in self._files))
        for name in owned:
            self._move(name, FileState.LEASED)
        return Adopted(self._start(Job(jobid, engine, owned, JobState.ASSIGNED, now, now)))

    def record_ended(self, jobid: str, engine: str, state: JobState, now: float) -> FoundEnded:
        """Recovery: a DONE_ or FAILED_ folder found on disk, so that a retried completion of
        that job is answered ok. Its files are restored separately."""
        if state not in (JobState.DONE, JobState.FAILED, JobState.QUARANTINED):
            raise InvalidTransition(
                f"only DONE, FAILED or QUARANTINED jobs are found on disk, not {state.value}"
            )
        self._jobs[jobid] = Job(jobid, engine, (), state, now, now)
        return FoundEnded(jobid, engine, state)

    def record_all_ended(
        self, folders: Iterable[tuple[str, str, JobState]], now: float
    ) -> EndedFound:
        """``record_ended`` for each (job id, engine, how it ended) of the job folders a
        start-up found, in their order, as one record."""
        return EndedFound(
            tuple(self.record_ended(jobid, engine, state, now) for jobid, engine, state in folders)
        )

    def keepalive(self, jobid: str, reported: JobState, now: float) -> KeptAlive | Late:
        """Refresh a live job's lease; ``Late`` when the job is late (stop working on it).

        A job we do not hold is late, as the protocol says. ``reported`` is recorded when it is a
        live state; an engine that reports an end here has still to call /completed.
        """
        job = self._jobs.get(jobid)
        if job is None or not job.live or now >= job.deadline:
            return Late(jobid, None if job is None else job.engine)
        if reported in LIVE_JOB_STATES:
            self._transition(job, reported)
        job.deadline = now + self.lease_seconds
        self._live.move_to_end(jobid)
        return KeptAlive(jobid, job.engine)

    def check_completion(self, jobid: str, outcome: JobState, now: float) -> Completion:
        """Whether a completion may be carried out; raises if it may not."""
        if outcome not in COMPLETION_STATES:
            raise InvalidTransition(f"a job completes as DONE, FAILED or STOPPED, not {outcome}")
        job = self.job(jobid)
        if job.state in ENDS_OF[outcome]:
            return Completion.REPEAT
        if job.state is JobState.EXPIRED or (job.live and now >= job.deadline):
            raise LeaseExpired(f"job {jobid} lost its lease; its files went to other engines")
        if outcome not in JOB_TRANSITIONS[job.state]:
            raise InvalidTransition(
                f"job {jobid} is {job.state.value}; it cannot become {outcome.value}"
            )
        return Completion.APPLY

    def finish(self, jobid: str, outcome: JobState, *, counted: bool = True) -> Ended:
        """The job's end is on disk: record it. DONE, FAILED and STOPPED follow the
        engine's report, EXPIRED the reaper (see ``due``). The event holds the job as it was,
        with its files; the record kept of it from now on has none. A failure that is not
        ``counted`` (a benched engine's) is no evidence against its file."""
        job = self.job(jobid)
        self._transition(job, outcome)
        self._end_live(job)
        after = FILES_AFTER[outcome]
        if counted and len(job.files) == 1 and outcome in (JobState.FAILED, JobState.QUARANTINED):
            self._failed_alone.setdefault(job.files[0], []).append(job.engine)
        if outcome is JobState.FAILED:
            for name in job.files:
                self._move(name, FileState.PENDING)
            halves = _halves(job.files)
            self._retries.extendleft(Retry(half, job.engine) for half in reversed(halves))
        elif after is FileState.PENDING:
            self._return_to_front(job)
        else:
            for name in job.files:
                self._move(name, after)
        self._jobs[jobid] = Job(jobid, job.engine, (), outcome, job.deadline, job.started)
        return Ended(job, outcome, counted)

    def split(self, jobid: str, files: tuple[str, ...], part_id: str) -> Split:
        """Set ``files`` of a live job apart as a job of their own (``part_id``), with the same
        engine and lease: the account of a DONE rejected them, and the caller ends that part
        as a failed attempt (``finish``) while the job goes on to DONE with the rest."""
        job = self.job(jobid)
        moving = set(files)
        if not job.live or not files or not moving <= set(job.files):
            raise InvalidTransition(f"job {jobid} cannot set apart {len(files)} of its files")
        if part_id in self._jobs:
            raise InvalidTransition(f"job {part_id} exists already")
        job.files = tuple(name for name in job.files if name not in moving)
        part = Job(
            part_id,
            job.engine,
            files,
            job.state,
            job.deadline,
            job.started,
            job.retry,
            job.failed_by,
        )
        self._jobs[part_id] = part
        self._live[part_id] = part
        return Split(job, part)

    def due(self, now: float) -> list[Job]:
        """Live jobs whose lease has run out, oldest first. The caller takes each job's folder
        back on disk, then calls ``finish(jobid, JobState.EXPIRED)``."""
        expired = []
        for job in self._live.values():
            if job.deadline > now:
                break
            expired.append(job)
        return expired

    def _start(self, job: Job) -> Job:
        job.deadline = job.started + self.lease_seconds
        self._jobs[job.jobid] = job
        self._live[job.jobid] = job
        return job

    def _transition(self, job: Job, new: JobState) -> None:
        if new not in JOB_TRANSITIONS[job.state]:
            raise InvalidTransition(f"job {job.jobid}: {job.state.value} -> {new.value}")
        job.state = new

    def _end_live(self, job: Job) -> None:
        self._live.pop(job.jobid, None)

    def _return_to_front(self, job: Job) -> None:
        """A job's files back in front of the queue; a retry's as the group it was."""
        for name in job.files:
            self._move(name, FileState.PENDING)
        if job.retry:
            self._retries.appendleft(Retry(job.files))
            return
        files = job.files
        self._pending.extendleft(reversed(files))


def _halves(files: tuple[str, ...]) -> list[tuple[str, ...]]:
    """A failed batch split for its retry: two halves, or the one file alone. By name, so that
    a restart, which reads the batch from a folder in no particular order, splits it the same."""
    ordered = tuple(sorted(files))
    if len(ordered) == 1:
        return [ordered]
    middle = (len(ordered) + 1) // 2
    return [ordered[:middle], ordered[middle:]]


def _half_with(files: tuple[str, ...], name: str) -> tuple[str, ...]:
    """The half of a failed batch that holds ``name``, as ``_halves`` splits it."""
    for half in _halves(files):
        if name in half:
            return half
    raise ValueError(f"{name} is not in the batch")
