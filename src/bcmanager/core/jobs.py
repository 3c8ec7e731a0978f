"""A run's vocabulary: where a raw file stands, and a job, the batch one engine holds.

These are the nouns that the state machine (``state.py``) moves and its records of change
(``events.py``) carry; both import them from here, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bcmanager.models import JobState


class FileState(str, Enum):
    """Where one raw file stands."""

    WAITING = "waiting"  # seen, but not complete yet: never offered while so
    PENDING = "pending"  # complete, queued for an engine
    LEASED = "leased"  # in the batch of a live job
    DONE = "done"  # its FASTQ is final
    FAILED = "failed"  # quarantined: failed alone on two engines (or N times); see ``retry``
    MISSING = "missing"  # gone from INPUT_DIR before it was leased: dropped until it returns


LIVE_JOB_STATES = frozenset({JobState.ASSIGNED, JobState.STARTED, JobState.PROCESSING})
ENDED_JOB_STATES = frozenset(
    {
        JobState.DONE,
        JobState.FAILED,
        JobState.QUARANTINED,
        JobState.STOPPED,
        JobState.EXPIRED,
    }
)
# What an engine may report through /completed.
COMPLETION_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.STOPPED})


@dataclass(slots=True)
class Job:
    """One batch handed to one engine."""

    jobid: str
    engine: str
    files: tuple[str, ...]
    state: JobState
    deadline: float  # monotonic second at which the lease runs out; meaningless once ended
    started: float  # monotonic second the job was assigned (or adopted)
    retry: bool = False  # a retry of failed files: given back, it stays a batch of its own
    failed_by: str | None = None  # a retry: the engine whose failure made its group

    @property
    def live(self) -> bool:
        return self.state in LIVE_JOB_STATES
