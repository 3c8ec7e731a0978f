"""Which engines get no work for a while: those that fail every job while others succeed.

A node whose basecaller cannot run (a missing model, a broken driver, a full scratch disk)
fails every batch it takes, in milliseconds, and would otherwise take the whole run's work and
turn it into failed attempts. Rules:

- An engine whose last ``after`` jobs all failed, while another engine finished a job since
  the first of those failures (or within ``window`` seconds before it), is benched. Not every
  failure counts: a retry that fails on another engine is the bisection at work, not a sign of
  a bad engine; one that fails on the engine that failed it before is. Files a DONE's account
  set apart (a ``Split`` part) are not judged: the job they came from is.
  /assignwork gives it the no-work reply for ``seconds``.
  Each time it is benched again before a success, the time doubles, up to ``longest``.
- One DONE ends its streak and its bench history.
- Alone (no other engine succeeded), an engine is never benched: then the files may be bad,
  and the failure policy of ``state.py`` judges them.

It also knows which engines work now (called within ``window`` seconds), which the failure
policy asks before it judges a file on one engine's word.

Benching is a consumer of the run's events (``apply``): it learns of calls from ``Contacted``
and of ends from ``Ended``, and its verdict on a failure is itself an event (``Benched``), which
the caller hands to the other consumers. Like ``state.py`` this module does no I/O and reads no
clock. Its memory is bounded by the engines seen within ``window`` and those failing now, and
the parts set apart but not ended yet (ended within the same call); an engine that succeeds, or
whose last failure is older than ``longest``, is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import assert_never

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
from bcmanager.models import JobState


@dataclass(slots=True)
class Streak:
    """One engine's failures since its last success."""

    since: float  # when the first of them was reported
    last: float  # when the latest was
    failures: int = 0
    benched: int = 0  # times benched during this streak
    until: float = 0.0  # no work before this monotonic second
    reason: str = ""


class Benching:
    """The streaks of failing engines and the last successes of the others."""

    __slots__ = (
        "_contacts",
        "_last_success",
        "_parts",
        "_streaks",
        "after",
        "longest",
        "seconds",
        "window",
    )

    def __init__(self, after: int, seconds: float, longest: float, window: float) -> None:
        self.after = after
        self.seconds = seconds
        self.longest = longest
        self.window = window
        # Both ordered by time, oldest first, so that what is too old is dropped from the front.
        self._streaks: OrderedDict[str, Streak] = OrderedDict()
        self._contacts: OrderedDict[str, float] = OrderedDict()
        # The two latest successes by distinct engines: enough to tell whether anyone other
        # than a given engine succeeded since a given time.
        self._last_success: list[tuple[str, float]] = []
        self._parts: set[str] = set()  # jobs a DONE's account set apart, until they end

    def apply(self, event: Event, now: float, facts: Facts = NO_FACTS) -> Benched | None:
        """Take in one event of a run; returns the bench a failure earns, for the caller to
        apply as an event of its own."""
        match event:
            # What benching does not take in first: a start-up sees a million files.
            case (
                FileSeen()
                | FileMissing()
                | Leased()
                | Adopted()
                | KeptAlive()
                | Late()
                | Retried()
                | FoundEnded()
                | EndedFound()
                | Restored()
                | Sized()
                | SequencingFinished()
                | Benched()
            ):
                pass
            case Contacted():
                self._contact(event.engine, now)
            case Split():
                self._parts.add(event.part.jobid)
            case Ended():
                return self._ended(event, now, facts)
            case _:
                assert_never(event)
        return None

    def _ended(self, event: Ended, now: float, facts: Facts) -> Benched | None:
        """A DONE ends its engine's streak. A failure is held against its engine unless it is a
        part set apart (its job is judged instead) or a retry that another engine's failure
        made (the bisection at work)."""
        job = event.job
        part = job.jobid in self._parts
        self._parts.discard(job.jobid)
        if event.outcome is JobState.DONE:
            self._succeeded(job.engine, now)
            return None
        if event.outcome not in (JobState.FAILED, JobState.QUARANTINED) or part:
            return None
        if job.retry and job.failed_by != job.engine:
            return None
        reason = facts.record.describe() if facts.record is not None else "no record of why"
        return self._failed(job.engine, now, reason)

    def _succeeded(self, engine: str, now: float) -> None:
        self._streaks.pop(engine, None)
        others = [entry for entry in self._last_success if entry[0] != engine]
        self._last_success = [(engine, now), *others[:1]]

    def _failed(self, engine: str, now: float, reason: str) -> Benched | None:
        """A job of ``engine`` failed; returns the bench when this failure earns one."""
        streak = self._streaks.pop(engine, None) or Streak(since=now, last=now)
        self._streaks[engine] = streak
        streak.last = now
        streak.failures += 1
        while self._streaks:
            oldest = next(iter(self._streaks.values()))
            if oldest.last > now - self.longest or oldest.until > now:
                break
            self._streaks.popitem(last=False)
        # Another engine's success shortly before the streak began counts too: an engine that
        # fails in milliseconds takes every file in reach before the others finish a job.
        others = self._others_succeeded(engine, streak.since - self.window)
        if streak.failures < self.after or not others:
            return None
        seconds = min(self.longest, self.seconds * 2**streak.benched)
        streak.benched += 1
        streak.failures = 0
        streak.until = now + seconds
        streak.reason = (
            f"{self.after} jobs in a row failed while other engines succeeded "
            f"(last: {reason}); no work for {seconds:.0f} s"
        )
        return Benched(engine, streak.until, streak.reason)

    def _contact(self, engine: str, now: float) -> None:
        """``engine`` called the manager."""
        self._contacts.pop(engine, None)
        self._contacts[engine] = now
        while next(iter(self._contacts.values())) < now - self.window:
            self._contacts.popitem(last=False)

    def others_working(self, engine: str, now: float) -> bool:
        """Whether an engine other than ``engine``, not benched, called within the window."""
        return any(
            other != engine and at >= now - self.window and self.benched(other, now) is None
            for other, at in reversed(self._contacts.items())
        )

    def benched(self, engine: str, now: float) -> Benched | None:
        streak = self._streaks.get(engine)
        if streak is None or streak.until <= now:
            return None
        return Benched(engine, streak.until, streak.reason)

    def all_benched(self, now: float) -> list[Benched]:
        """Engines benched now (O(failing engines))."""
        return [
            Benched(engine, streak.until, streak.reason)
            for engine, streak in sorted(self._streaks.items())
            if streak.until > now
        ]

    def _others_succeeded(self, engine: str, since: float) -> bool:
        return any(other != engine and at >= since for other, at in self._last_success)
