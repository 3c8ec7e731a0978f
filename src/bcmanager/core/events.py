"""What changed: the records ``RunState`` returns from each change it makes, and the few that
the manager and benching make of changes the state machine does not hold.

The state machine decides what happens to a file or a job; it does not tell anyone. Each of its
methods that changes something checks the change, makes it and returns what happened, as one of
the small records below (None where nothing changed). What the state machine does not hold is a
record too, made in one place: an engine's call (``Contacted``, by the manager), the sizes of the
files recovery placed (``Sized``, by the manager's first scan), the sequencer's end
(``SequencingFinished``, by the manager when the facility finds it) and an engine benched
(``Benched``, the verdict benching returns when it takes in an ``Ended``). ``Consumers.apply``
hands each record, with ``Facts`` learned on disk, to every consumer: ``Progress.apply`` (bytes,
rates, tallies, which /status and /metrics read), the log (``logs.event_line``), benching
(``Benching.apply``) and the listener (the facility). So no consumer is updated by hand beside a
change, and none can miss one: a new kind of change is a new class here, and the type checker
makes every consumer's ``match`` handle it (each ends in ``assert_never``).

Records are transient: made, applied, dropped. A job's record holds the ``Job`` as the change
left it, with its files, for a batch is what its consumers count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from bcmanager.core.jobs import FileState, Job
from bcmanager.models import JobState

if TYPE_CHECKING:
    from bcmanager.core.scan import AttemptRecord


@dataclass(frozen=True, slots=True)
class FileSeen:
    """A scan or a watch event saw a raw file that has no place yet: new to the run, still
    waiting (it grows while MinKNOW writes it), complete at last, or back from missing."""

    name: str
    before: FileState | None  # None: new to the run; else WAITING or MISSING
    after: FileState  # WAITING or PENDING


@dataclass(frozen=True, slots=True)
class FileMissing:
    """A waiting or pending file is gone from INPUT_DIR: dropped until it comes back."""

    name: str
    before: FileState  # WAITING or PENDING


@dataclass(frozen=True, slots=True)
class Leased:
    """A new job holds files: a group of failed files to retry, or the oldest pending ones."""

    job: Job


@dataclass(frozen=True, slots=True)
class Adopted:
    """Recovery: the job of an ASSIGNED_ folder holds its files again, with a fresh lease."""

    job: Job


@dataclass(frozen=True, slots=True)
class KeptAlive:
    """A live job's lease runs ``lease_seconds`` from now."""

    jobid: str
    engine: str


@dataclass(frozen=True, slots=True)
class Late:
    """A keepalive for a job that can no longer complete (ended, past its deadline, or never
    handed out): its engine is to stop working on it."""

    jobid: str
    engine: str | None  # None: no job of that id


@dataclass(frozen=True, slots=True)
class Split:
    """The account of a DONE set some files of a live job apart: ``part`` holds them now, with
    the same engine and lease, to be ended as a failed attempt; ``job`` keeps the rest."""

    job: Job
    part: Job


@dataclass(frozen=True, slots=True)
class Ended:
    """A job ended as ``outcome``: its files are ``FILES_AFTER[outcome]`` now. ``job`` is as
    it was, with its files; the record the state machine keeps of it has none."""

    job: Job
    outcome: JobState
    counted: bool  # a failure held against its file (a benched engine's is not)


@dataclass(frozen=True, slots=True)
class Retried:
    """An operator sent files back: these were quarantined and are pending again, each alone."""

    files: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FoundEnded:
    """Recovery: a DONE_, FAILED_ or QUARANTINED_ folder records how a job ended."""

    jobid: str
    engine: str
    outcome: JobState


@dataclass(frozen=True, slots=True)
class Contacted:
    """An engine called the manager: asked for work, kept a lease alive or reported an end."""

    engine: str


@dataclass(frozen=True, slots=True)
class Sized:
    """Start-up: the sizes of files recovery placed (done, failed or leased), learned after the
    server listens. One record per chunk the first scan sizes, as for ``Restored``."""

    files: tuple[tuple[str, FileState, int], ...]  # name, its state, its bytes


@dataclass(frozen=True, slots=True)
class SequencingFinished:
    """MinKNOW wrote the run's final summary (the facility found it); the first one counts."""

    summary: str


@dataclass(frozen=True, slots=True)
class Benched:
    """An engine that gets no work until ``until`` (monotonic seconds), and why: the verdict
    benching returns when a failure earns it, applied as an event of its own, and what
    /status lists."""

    engine: str
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class Restored:
    """Recovery: ``files`` files entered the run as ``state``: done or failed by what a job
    folder or the reads in pass/ and fail/ record, or pending again as retries of failed
    attempts. One record for a whole batch: a start-up restores up to a million files."""

    state: FileState
    files: int


@dataclass(frozen=True, slots=True)
class EndedFound:
    """Recovery: every DONE_, FAILED_ and QUARANTINED_ folder a start-up found, as one record
    of their ``FoundEnded`` records, in the order found. One record for them all, as
    ``Restored`` is for files: a run of a million files holds 100,000 such folders, and a
    record each cost its start-up a tenth of its time (docs/benchmarks.md, figure 1)."""

    jobs: tuple[FoundEnded, ...]


Event = (
    FileSeen
    | FileMissing
    | Leased
    | Adopted
    | KeptAlive
    | Late
    | Split
    | Ended
    | Retried
    | FoundEnded
    | Restored
    | EndedFound
    | Contacted
    | Sized
    | SequencingFinished
    | Benched
)


class Facts(NamedTuple):
    """What the manager learned on disk with a change, which the state machine neither needs
    nor keeps. Each consumer reads the fields of its event's kind; the others stay unset. A
    tuple, not a dataclass: one is made per file a scan sees, a million at a start-up, and a
    tuple is made in half the time."""

    size: int = 0  # FileSeen: the file's bytes now
    # Monotonic seconds, when this is not now. FileSeen: when the file was last written, so a
    # file found late counts in the minute it arrived. FoundEnded: when its folder ended.
    at: float | None = None
    record: AttemptRecord | None = None  # Ended: what the agent recorded of its attempt
    sizes: tuple[tuple[str, int], ...] = ()  # Retried: each file's bytes
    files: int = 0  # FoundEnded: the files its folder records
    # EndedFound: each job's ``at`` and ``files`` as for FoundEnded, in the order of its jobs.
    found: tuple[tuple[float | None, int], ...] = ()


NO_FACTS = Facts()
