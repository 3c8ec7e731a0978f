"""How fast the run moves: bytes by state, arrival and basecalling rates, ETA, per-engine tallies,
recent failed and expired jobs, and whether sequencing has finished.

Like ``state.py`` this module does no I/O and reads no clock. It is fed the events that
``RunState`` returns from each change (``apply``), with ``now`` (monotonic seconds) and the facts
the manager learned on disk (sizes, times, an agent's record of a failure). It never decides a
file's or a job's state; it keeps what the state machine does not need: sizes, times and tallies.

Every call costs O(1) or O(batch), and so does every snapshot taken of it: rates come from fixed
rings of time buckets (60 one-minute buckets serve the 5- and 60-minute windows, 144 half-hour
buckets the chart of the last three days), never from a walk over the run's files or jobs.

Sizes. Bytes by state needs each file's size when it changes state. A size is kept only while
the file can still move (waiting, pending or leased): once done or failed it is added to that
state's total and forgotten. A dict entry with its int costs about 63 bytes a file, on top of
what ``RunState`` spends on the name, its state and the queue; a run whose files all wait for an
engine, the worst case, costs about 210 bytes a file all in (tests/test_progress.py holds it under
the design's 300), and a run that keeps up holds sizes only for its backlog. Parallel arrays
indexed by file would need a name-to-index dict of the same cost, so they would save nothing.

Engines. An engine keeps its own record while it holds a live job; an idle one keeps it for
``ENGINE_IDLE_SECONDS`` after it was last active, and only while it is among the ``IDLE_LISTED``
idle engines active last. The others are retired: their tallies are added into one ``Tallies``
and their records dropped, so sums over listed and retired engines stay exact. Kubernetes gives
a rescheduled pod a new engine id: without this, ids that will never call again would pile up
for the life of the manager, and /status and /metrics with them. Idle engines wait in a queue
ordered by when they were last active, so a call retires only what has aged out of its front:
each engine is retired once, O(1) amortized, and no call walks the engines.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, assert_never

from bcmanager.core.events import (
    NO_FACTS,
    Adopted,
    Benched,
    Contacted,
    Ended,
    EndedFound,
    Event,
    Facts,
    FileMissing,
    FileSeen,
    FoundEnded,
    KeptAlive,
    Late,
    Leased,
    Restored,
    Retried,
    SequencingFinished,
    Sized,
    Split,
)
from bcmanager.core.jobs import FileState, Job
from bcmanager.core.scan import AttemptRecord
from bcmanager.core.state import FILES_AFTER
from bcmanager.models import (
    Drain,
    EngineStatus,
    History,
    JobState,
    ProblemJob,
    Rate,
    Rates,
    RateSeries,
    RetiredEngines,
    RunPhase,
    WindowRates,
)

MINUTE = 60.0
RECENT_PROBLEMS = 20  # failed and expired jobs kept for the page, newest first
# Upper bounds (seconds) of the job duration histogram's buckets; the last one is unbounded.
DURATION_BOUNDS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
# An idle engine is listed for this long after it was last active: its last call, or the end of
# its last job (a lease that runs out ends one without a call). A running agent without work
# asks for some every 10 s (the reference agent's poll interval), so a quarter of an hour of
# silence means it is gone, not waiting; and it is long enough for an operator to see on the
# page that a node went quiet, and when.
ENGINE_IDLE_SECONDS = 15 * MINUTE
# At most this many idle engines are listed, those active last. A large site runs about a hundred
# GPUs (a PromethION 48 flow cells, a cluster a few nodes of 8 GPUs), so 128 lists every engine of
# a real site that is merely between jobs, while /status and /metrics stay under 100 kB however
# many pods a scheduler went through.
IDLE_LISTED = 128
# Keeping up: the backlog is basecalled within this horizon at the last hour's pace, and the
# files waiting for an engine grew by no more than a minute of basecalling. Ten minutes is a
# few jobs of a real basecaller, so a run that keeps up holds only work in flight.
DRAIN_HORIZON = 10 * MINUTE
# A rate over less than this is mostly noise; a younger window is measured over what it saw.
SHORTEST_SPAN = 10.0


def run_phase(finished: bool, counts: dict[FileState, int]) -> RunPhase:
    """The phase from the summary's presence and the file counts. A file still waiting after
    MinKNOW wrote its final summary is still being written (or copied: on a network
    filesystem the last files may land after the summary), so it holds the run back from
    complete; a missing one does not, as nothing more can come of it."""
    if not finished:
        return RunPhase.SEQUENCING
    if counts[FileState.PENDING] or counts[FileState.LEASED] or counts[FileState.WAITING]:
        return RunPhase.BASECALLING
    return RunPhase.COMPLETE


class RateRing:
    """Files and bytes per time bucket over the last ``size`` buckets.

    A place in the ring holds one bucket, named by its number (``at // bucket_seconds``); a place
    still holding a bucket from an earlier lap counts as empty. Events older than the ring are
    dropped, so an old file found at start-up does not reach into the current rates.
    """

    __slots__ = ("_bucket", "_bytes", "_files", "bucket_seconds")

    def __init__(self, bucket_seconds: float, size: int) -> None:
        self.bucket_seconds = bucket_seconds
        self._bucket = [-1] * size
        self._files = [0] * size
        self._bytes = [0] * size

    def add(self, at: float, files: int, size: int) -> None:
        bucket = int(at // self.bucket_seconds)
        place = bucket % len(self._bucket)
        if bucket < self._bucket[place]:
            return
        same = self._bucket[place] == bucket
        self._bucket[place] = bucket
        self._files[place] = files + (self._files[place] if same else 0)
        self._bytes[place] = size + (self._bytes[place] if same else 0)

    def absorb(self, other: RateRing) -> None:
        """Add ``other``'s buckets (a ring of the same shape) to this one."""
        for bucket, files, size in zip(other._bucket, other._files, other._bytes, strict=True):
            if bucket >= 0:
                self.add(bucket * other.bucket_seconds, files, size)

    def totals(self, now: float, buckets: int) -> tuple[int, int]:
        """Files and bytes of the last ``buckets`` buckets, the current (partial) one included."""
        newest = int(now // self.bucket_seconds)
        files = size = 0
        for bucket, count, volume in zip(self._bucket, self._files, self._bytes, strict=True):
            if newest - buckets < bucket <= newest:
                files += count
                size += volume
        return files, size

    def series(self, now: float) -> list[int]:
        """Files per bucket over the whole ring, oldest first, ending with the current one."""
        newest = int(now // self.bucket_seconds)
        size = len(self._bucket)
        by_bucket = dict(zip(self._bucket, self._files, strict=True))
        return [by_bucket.get(bucket, 0) for bucket in range(newest - size + 1, newest + 1)]

    def covered(self, now: float, buckets: int) -> float:
        """Seconds that the last ``buckets`` buckets span up to ``now``."""
        return (buckets - 1) * self.bucket_seconds + now % self.bucket_seconds


class DurationHistogram:
    """Job durations in the cumulative buckets Prometheus expects; ``DURATION_BOUNDS`` plus +Inf."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        for index, bound in enumerate(DURATION_BOUNDS):
            if seconds <= bound:
                self.counts[index] += 1
                break
        else:
            self.counts[-1] += 1
        self.count += 1
        self.total += seconds

    def absorb(self, other: DurationHistogram) -> None:
        self.counts = [
            mine + theirs for mine, theirs in zip(self.counts, other.counts, strict=True)
        ]
        self.count += other.count
        self.total += other.total

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus spells it, observations at or below it)."""
        bounds = [*(repr(bound) for bound in DURATION_BOUNDS), "+Inf"]
        running, found = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            found.append((bound, running))
        return found


@dataclass(slots=True)
class Tallies:
    """Jobs and files by how they ended: one engine's, or the sum of the retired engines'."""

    jobs_assigned: int = 0
    files_assigned: int = 0
    jobs_done: int = 0
    files_done: int = 0
    bytes_done: int = 0
    seconds_done: float = 0.0  # summed durations of the done jobs
    jobs_failed: int = 0
    files_failed: int = 0
    jobs_released: int = 0
    files_released: int = 0
    jobs_expired: int = 0
    files_expired: int = 0

    def ended(self, outcome: JobState, files: int) -> None:
        if outcome is JobState.DONE:
            self.jobs_done += 1
            self.files_done += files
        elif outcome in (JobState.FAILED, JobState.QUARANTINED):
            self.jobs_failed += 1
            self.files_failed += files
        elif outcome is JobState.STOPPED:
            self.jobs_released += 1
            self.files_released += files
        else:
            self.jobs_expired += 1
            self.files_expired += files

    def add(self, other: Tallies) -> None:
        for each in fields(self):
            setattr(self, each.name, getattr(self, each.name) + getattr(other, each.name))

    def mean_seconds_per_file(self) -> float | None:
        return round(self.seconds_done / self.files_done, 3) if self.files_done else None


@dataclass(slots=True)
class EngineStats:
    """One listed engine's work since the manager started, or since it was last folded (jobs
    adopted at start-up count when they end, not when they were assigned)."""

    engine: str
    last_contact: float
    last_active: float  # its last call, or the end of its last job: when it started to idle
    current: dict[str, float] = field(default_factory=dict)  # live jobid -> when it started
    work: Tallies = field(default_factory=Tallies)


# Why a job that ended badly did, in words, by how it ended.
REASONS = {
    JobState.FAILED: "the engine reported FAILED: its files are tried again",
    JobState.QUARANTINED: "failed alone often enough: set aside until `bcmanager retry`",
    JobState.EXPIRED: "no keepalive within the lease",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """A job that failed, lost its lease or left no output; ``at`` is None for a FAILED_
    folder found at start-up."""

    jobid: str
    engine: str
    outcome: JobState
    files: int
    at: float | None
    record: AttemptRecord | None = None  # what the agent recorded, for a failure


class Progress:
    """The run's motion, fed the events of ``RunState`` (``apply``)."""

    __slots__ = (
        "_bytes",
        "_engines",
        "_first_arrival",
        "_idle",
        "_observed_since",
        "_since",
        "_sizes",
        "arrived",
        "arrived_long",
        "basecalled",
        "basecalled_long",
        "durations",
        "final_summary",
        "problems",
        "retired",
        "retired_engines",
        "started",
    )

    def __init__(self, now: float) -> None:
        self.started = now
        self._sizes: dict[str, int] = {}  # files that can still change state
        # When each of those became pending: the scheduler serves the run whose oldest file
        # has waited longest, and /status shows that wait as the run's lag.
        self._since: dict[str, float] = {}
        self._bytes: dict[FileState, int] = dict.fromkeys(FileState, 0)
        self.arrived = RateRing(MINUTE, 60)
        self.basecalled = RateRing(MINUTE, 60)
        self.arrived_long = RateRing(30 * MINUTE, 144)
        self.basecalled_long = RateRing(30 * MINUTE, 144)
        self._first_arrival: float | None = None
        # Basecalling is measured from here: the start, or the oldest end found on disk.
        self._observed_since = now
        self._engines: dict[str, EngineStats] = {}  # listed engines
        # Listed engines without a live job, least recently active first.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self.retired = Tallies()  # the sum of the folded engines' tallies
        self.retired_engines = 0  # engine records folded (an id that comes back counts again)
        self.durations: dict[JobState, DurationHistogram] = {}
        self.problems: deque[Problem] = deque(maxlen=RECENT_PROBLEMS)
        self.final_summary: str | None = None  # MinKNOW's final_summary_*.txt, once seen

    @classmethod
    def merged(cls, parts: Iterable[Progress], now: float) -> Progress:
        """The sum of several raw folders' progress, for the snapshot of a run or of the
        whole root: O(buckets and listed engines) per part, never O(files). Sizes of single
        files are not carried over: a merged progress is for looking at, not for feeding."""
        total = cls(now)
        for part in parts:
            total.absorb(part, now)
        return total

    def absorb(self, part: Progress, now: float) -> None:
        """Add ``part`` to this merged progress: one part at a time, so the snapshot of a root
        of many raw folders can let the event loop run between them."""
        self.started = min(self.started, part.started)
        self._observed_since = min(self._observed_since, part._observed_since)
        first = part._first_arrival
        if first is not None and (self._first_arrival is None or first < self._first_arrival):
            self._first_arrival = first
        for state, size in part._bytes.items():
            self._bytes[state] += size
        for mine, theirs in (
            (self.arrived, part.arrived),
            (self.basecalled, part.basecalled),
            (self.arrived_long, part.arrived_long),
            (self.basecalled_long, part.basecalled_long),
        ):
            mine.absorb(theirs)
        for stats in part.engine_stats(now):
            into = self._engine(stats.engine, stats.last_active)
            into.last_contact = max(into.last_contact, stats.last_contact)
            into.last_active = max(into.last_active, stats.last_active)
            into.current.update(stats.current)
            into.work.add(stats.work)
        self.retired.add(part.retired)
        self.retired_engines += part.retired_engines
        for outcome, histogram in part.durations.items():
            self.durations.setdefault(outcome, DurationHistogram()).absorb(histogram)
        problems = sorted(
            [*self.problems, *part.problems],
            key=lambda problem: -1.0 if problem.at is None else problem.at,
            reverse=True,
        )
        self.problems.clear()
        self.problems.extend(problems[:RECENT_PROBLEMS])

    def apply(self, event: Event, now: float, facts: Facts = NO_FACTS) -> None:
        """Take in one change of the run: ``event`` as ``RunState`` returned it at ``now``, with
        what the disk said of it (``facts``: see which field each kind of event reads)."""
        match event:
            case FileSeen():
                self._file_seen(event, facts.size, now if facts.at is None else facts.at)
            case FileMissing():
                self._file_missing(event)
            case Leased():
                self._job_assigned(event.job, now)
            case Adopted():
                self._job_adopted(event.job, now)
            case Split():
                self._job_split(event)
            case Ended():
                self._job_ended(event.job, event.outcome, now, facts.record)
            case Retried():
                self._files_retried(facts.sizes)
            case FoundEnded():
                self._job_found(event, facts.files, facts.at)
            case EndedFound():
                self._jobs_found(event.jobs, facts.found)
            case Contacted():
                self._contact(event.engine, now)
            case Sized():
                self._files_sized(event.files)
            case SequencingFinished():
                if self.final_summary is None:
                    self.final_summary = event.summary
            case KeptAlive() | Late() | Restored() | Benched():
                # A lease refreshed or refused moves nothing measured (the call itself is a
                # ``Contacted``); files restored at start-up are sized later (``Sized``); a
                # bench is benching's to show.
                pass
            case _:
                assert_never(event)

    # -- files ------------------------------------------------------------------------------

    def _file_seen(self, event: FileSeen, size: int, at: float) -> None:
        """A new or a waiting file (now waiting or pending) of ``size`` bytes, last written at
        ``at``. A file that became pending arrived at ``at``."""
        name, before, after = event.name, event.before, event.after
        if before is not None:
            self._bytes[before] -= self._sizes.get(name, 0)
        self._sizes[name] = size
        self._bytes[after] += size
        if after is FileState.PENDING:
            self._since[name] = at
            self.arrived.add(at, 1, size)
            self.arrived_long.add(at, 1, size)
            if self._first_arrival is None or at < self._first_arrival:
                self._first_arrival = at

    def _file_missing(self, event: FileMissing) -> None:
        """A waiting or pending file is gone: its bytes leave the totals (a missing file has
        none) and its size is forgotten."""
        self._bytes[event.before] -= self._sizes.pop(event.name, 0)
        self._since.pop(event.name, None)

    def _files_sized(self, files: Iterable[tuple[str, FileState, int]]) -> None:
        """Start-up: the sizes of files recovery found done, failed or leased."""
        for name, state, size in files:
            self._bytes[state] += size
            if state not in (FileState.DONE, FileState.FAILED):
                self._sizes[name] = size

    @property
    def sizes(self) -> Mapping[str, int]:
        """The sizes of the files that can still change state (read-only)."""
        return self._sizes

    def waited(self, name: str | None, now: float) -> float | None:
        """How long pending file ``name`` has waited since it arrived; None for no file."""
        if name is None:
            return None
        return max(0.0, now - self._since.get(name, now))

    def bytes_by_state(self) -> dict[FileState, int]:
        return dict(self._bytes)

    def _move_bytes(self, files: Iterable[str], before: FileState, after: FileState) -> int:
        total = 0
        if after in (FileState.DONE, FileState.FAILED):
            for name in files:
                total += self._sizes.pop(name, 0)
                self._since.pop(name, None)
        else:
            for name in files:
                total += self._sizes.get(name, 0)
        self._bytes[before] -= total
        self._bytes[after] += total
        return total

    # -- jobs -------------------------------------------------------------------------------

    def _engine(self, engine: str, now: float) -> EngineStats:
        stats = self._engines.get(engine)
        if stats is None:
            stats = self._engines[engine] = EngineStats(engine, now, now)
        return stats

    def _requeue_idle(self, stats: EngineStats, now: float) -> None:
        """After a change to ``stats``: an engine with a live job leaves the idle queue, an idle
        one goes to its back as active ``now``; then what aged out of the front is folded."""
        if stats.current:
            self._idle.pop(stats.engine, None)
        else:
            stats.last_active = now
            self._idle[stats.engine] = None
            self._idle.move_to_end(stats.engine)
        self._fold(now)

    def _fold(self, now: float) -> None:
        """Fold the idle engines beyond ``IDLE_LISTED`` or idle past ``ENGINE_IDLE_SECONDS``,
        oldest first. ``now`` never goes back (a monotonic clock), so the queue is in order of
        ``last_active`` and the loop stops at the first engine it keeps."""
        idle = self._idle
        horizon = now - ENGINE_IDLE_SECONDS
        while idle:
            oldest = self._engines[next(iter(idle))]
            if len(idle) <= IDLE_LISTED and oldest.last_active > horizon:
                return
            idle.popitem(last=False)
            del self._engines[oldest.engine]
            self.retired.add(oldest.work)
            self.retired_engines += 1

    def _contact(self, engine: str, now: float) -> None:
        stats = self._engine(engine, now)
        stats.last_contact = now
        self._requeue_idle(stats, now)

    def _job_assigned(self, job: Job, now: float) -> None:
        stats = self._engine(job.engine, now)
        stats.last_contact = now
        stats.current[job.jobid] = now
        stats.work.jobs_assigned += 1
        stats.work.files_assigned += len(job.files)
        self._requeue_idle(stats, now)
        self._move_bytes(job.files, FileState.PENDING, FileState.LEASED)

    def _job_adopted(self, job: Job, now: float) -> None:
        """Start-up: an ASSIGNED_ folder got a fresh lease (its files are sized later)."""
        stats = self._engine(job.engine, now)
        stats.current[job.jobid] = job.started
        self._requeue_idle(stats, now)

    def _job_split(self, event: Split) -> None:
        """Files of a job set apart: the part runs since the job started, on its engine."""
        stats = self._engines.get(event.job.engine)
        if stats is not None and event.job.jobid in stats.current:
            stats.current[event.part.jobid] = stats.current[event.job.jobid]

    def _job_found(self, event: FoundEnded, files: int, ended: float | None) -> None:
        """Start-up: a DONE_, FAILED_ or QUARANTINED_ folder of ``files`` files. A QUARANTINED_
        one waits for an operator: it is a problem to show. One that ended at ``ended`` (by
        this clock, before now; None when its date is not known) counts in its engine's
        tallies and the basecalling rates, so a restart does not start them from zero; bytes
        are not known per job then, so byte rates count only what ends after the start. Fed
        oldest first: engines idle for long are retired as they would have been."""
        engine, outcome = event.engine, event.outcome
        if outcome is JobState.QUARANTINED:
            self.problems.appendleft(Problem(event.jobid, engine, outcome, files, None))
        if ended is None:
            return
        stats = self._engine(engine, ended)
        stats.last_contact = max(stats.last_contact, ended)
        stats.work.ended(outcome, files)
        if outcome is JobState.DONE:
            self.basecalled.add(ended, files, 0)
            self.basecalled_long.add(ended, files, 0)
            self._observed_since = min(self._observed_since, ended)
        if not stats.current:
            self._requeue_idle(stats, ended)

    def _jobs_found(
        self, jobs: tuple[FoundEnded, ...], found: tuple[tuple[float | None, int], ...]
    ) -> None:
        """Start-up: every ended job folder, with when each ended and its files, taken in
        oldest first (undated ones first), as ``_job_found`` expects."""
        dated = sorted(zip(found, jobs, strict=True), key=_oldest_first)
        for (ended, files), job in dated:
            self._job_found(job, files, ended)

    def _files_retried(self, sized: Iterable[tuple[str, int]]) -> None:
        """An operator sent quarantined files back: pending again, with these sizes."""
        for name, size in sized:
            self._bytes[FileState.FAILED] -= size
            self._bytes[FileState.PENDING] += size
            self._sizes[name] = size

    def _job_ended(
        self, job: Job, outcome: JobState, now: float, record: AttemptRecord | None
    ) -> None:
        """``job`` ended as ``outcome`` at ``now``; ``record`` is what its agent recorded of a
        failure."""
        stats = self._engine(job.engine, now)
        stats.current.pop(job.jobid, None)
        stats.work.ended(outcome, len(job.files))
        seconds = now - job.started
        self.durations.setdefault(outcome, DurationHistogram()).observe(seconds)
        size = self._move_bytes(job.files, FileState.LEASED, FILES_AFTER[outcome])
        if outcome is JobState.DONE:
            stats.work.bytes_done += size
            stats.work.seconds_done += seconds
            self.basecalled.add(now, len(job.files), size)
            self.basecalled_long.add(now, len(job.files), size)
        elif outcome is not JobState.STOPPED:
            self.problems.appendleft(
                Problem(job.jobid, job.engine, outcome, len(job.files), now, record)
            )
        self._requeue_idle(stats, now)

    def engine_stats(self, now: float) -> list[EngineStats]:
        """The listed engines by name, after folding those that aged out by ``now``: the live
        ones and at most ``IDLE_LISTED`` idle ones."""
        self._fold(now)
        return [self._engines[name] for name in sorted(self._engines)]

    def idle_engines(self) -> int:
        """Listed engines that hold no live job."""
        return len(self._idle)

    # -- the snapshot ------------------------------------------------------------------------

    def rates(self, now: float) -> Rates:
        return Rates(last_5_minutes=self._window(now, 5), last_60_minutes=self._window(now, 60))

    def _window(self, now: float, minutes: int) -> WindowRates:
        """Rates over the last ``minutes`` minutes, or over less where the run is younger:
        arrivals since the first one, basecalling since the first arrival and since the
        manager started or the oldest basecalling found on disk."""
        span = self.arrived.covered(now, minutes)
        first = self._first_arrival
        arrived_span = span if first is None else min(span, now - first)
        since = self._observed_since
        basecalled_origin = since if first is None else max(since, first)
        basecalled_span = min(span, now - basecalled_origin)
        return WindowRates(
            arrived=_per_minute(self.arrived.totals(now, minutes), arrived_span),
            basecalled=_per_minute(self.basecalled.totals(now, minutes), basecalled_span),
        )

    def drain(self, now: float, counts: dict[FileState, int]) -> Drain:
        """The backlog, when it is gone at the basecalling pace of the last hour, and whether
        files pile up waiting for an engine.

        Arrivals minus basecalled files over the hour is the backlog's growth, and it counts
        the work in the engines' hands: a run that keeps up but has ten files in flight grew
        its backlog by ten since it started. That stock is taken off, so what remains is a
        bound on how much the files waiting for an engine grew. Keeping up: that grew by no
        more than a minute's basecalling, and the backlog is done within ``DRAIN_HORIZON``."""
        backlog = counts[FileState.PENDING] + counts[FileState.LEASED]
        hour = self._window(now, 60)
        pace = hour.basecalled.files_per_minute
        if backlog == 0:
            eta: float | None = 0.0
        elif pace > 0:
            eta = round(backlog / pace * MINUTE, 1)
        else:
            eta = None
        span = max(self.arrived.covered(now, 60), SHORTEST_SPAN) / MINUTE  # minutes
        arrived, _ = self.arrived.totals(now, 60)
        basecalled, _ = self.basecalled.totals(now, 60)
        piled = arrived - basecalled - counts[FileState.LEASED]
        if self._first_arrival is not None:
            span = min(span, max(now - self._first_arrival, SHORTEST_SPAN) / MINUTE)
        return Drain(
            backlog_files=backlog,
            backlog_bytes=self._bytes[FileState.PENDING] + self._bytes[FileState.LEASED],
            eta_seconds=eta,
            growth_files_per_minute=round(piled / span, 3),
            horizon_seconds=DRAIN_HORIZON,
            keeping_up=backlog == 0 or (eta is not None and eta <= DRAIN_HORIZON and piled <= pace),
        )

    def history(self, now: float) -> History:
        return History(
            last_hour=_series(self.arrived, self.basecalled, now),
            last_3_days=_series(self.arrived_long, self.basecalled_long, now),
        )

    def engines(self, now: float) -> list[EngineStatus]:
        return [
            EngineStatus(
                engine=stats.engine,
                current_jobs=list(stats.current),
                seconds_since_contact=round(now - stats.last_contact, 1),
                **_tallies(stats.work),
            )
            for stats in self.engine_stats(now)
        ]

    def retired_snapshot(self, now: float) -> RetiredEngines:
        """The engines folded by ``now``, summed."""
        self._fold(now)
        return RetiredEngines(
            engines=self.retired_engines,
            idle_seconds=ENGINE_IDLE_SECONDS,
            idle_listed=IDLE_LISTED,
            **_tallies(self.retired),
        )

    def recent_problems(self, now: float) -> list[ProblemJob]:
        return [
            ProblemJob(
                jobid=problem.jobid,
                engine=problem.engine,
                outcome=problem.outcome.value,
                reason=(problem.record and problem.record.rejected) or REASONS[problem.outcome],
                exit_code=problem.record.exit_code if problem.record else None,
                signal=problem.record.signal if problem.record else None,
                last_line=problem.record.last_line if problem.record else None,
                files=problem.files,
                seconds_ago=None if problem.at is None else round(now - problem.at, 1),
            )
            for problem in self.problems
        ]


def _oldest_first(found: tuple[tuple[float | None, int], FoundEnded]) -> float:
    """Sort key of ended jobs found at start-up: undated ones first, then by when they ended
    (a float alone: the sort of 100,000 of them compares nothing else)."""
    ended = found[0][0]
    return float("-inf") if ended is None else ended


def _tallies(work: Tallies) -> dict[str, Any]:
    """The fields of ``EngineTallies`` from ``work`` (pydantic checks their types)."""
    return {
        "jobs_assigned": work.jobs_assigned,
        "files_assigned": work.files_assigned,
        "jobs_done": work.jobs_done,
        "files_done": work.files_done,
        "bytes_done": work.bytes_done,
        "jobs_failed": work.jobs_failed,
        "files_failed": work.files_failed,
        "jobs_expired": work.jobs_expired,
        "files_expired": work.files_expired,
        "jobs_released": work.jobs_released,
        "files_released": work.files_released,
        "mean_seconds_per_file": work.mean_seconds_per_file(),
    }


def _per_minute(totals: tuple[int, int], seconds: float) -> Rate:
    files, size = totals
    scale = MINUTE / max(seconds, SHORTEST_SPAN)
    return Rate(files_per_minute=round(files * scale, 3), bytes_per_minute=round(size * scale, 1))


def _series(arrived: RateRing, basecalled: RateRing, now: float) -> RateSeries:
    return RateSeries(
        bucket_seconds=int(arrived.bucket_seconds),
        current_bucket_seconds=round(arrived.covered(now, 1), 1),
        arrived=arrived.series(now),
        basecalled=basecalled.series(now),
    )
