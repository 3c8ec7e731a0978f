"""The state machine says what changed: each change returns its event, and progress and the log
take the run's picture from those events alone."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from bcmanager.core.events import (
    NO_FACTS,
    Adopted,
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
    Split,
)
from bcmanager.core.jobs import FileState, Job
from bcmanager.core.logs import event_line
from bcmanager.core.progress import Progress
from bcmanager.core.scan import AttemptRecord
from bcmanager.core.state import FILES_AFTER, RunState
from bcmanager.models import JobState

LEASE = 90.0
W, P, L, D, F, M = (
    FileState.WAITING,
    FileState.PENDING,
    FileState.LEASED,
    FileState.DONE,
    FileState.FAILED,
    FileState.MISSING,
)
# Job "1" as ``given`` leases it: file "l", to gpu1, at second 0.
JOB = Job("1", "gpu1", ("l",), JobState.ASSIGNED, deadline=LEASE, started=0.0)


def given() -> RunState:
    """A run with a file in each state: "w" waiting, "p1" and "p2" pending, "l" leased to job
    "1", "d" done, "q" quarantined, "m" missing."""
    state = RunState(LEASE)
    state.observe("l", complete=True)
    state.lease("1", "gpu1", 1, now=0)
    state.observe("w", complete=False)
    for name in ("m", "p1", "p2"):
        state.observe(name, complete=True)
    state.vanish("m")
    state.restore("d", D)
    state.restore_failures([], [("gpu1", "q")])
    return state


def ended(outcome: JobState) -> Ended:
    return Ended(replace(JOB, state=outcome), outcome, True)


Returned = Event | list[Restored] | None
Case = tuple[str, Callable[[RunState], Returned], Returned, dict[str, FileState], str | None]
# (what happens, the call, the event it returns, files' states after it, the line it is logged as)
CASES: list[Case] = [
    ("new, incomplete", lambda s: s.observe("n", False), FileSeen("n", None, W), {"n": W}, None),
    ("new, complete", lambda s: s.observe("n", True), FileSeen("n", None, P), {"n": P}, "arrived"),
    ("waiting, seen again", lambda s: s.observe("w", False), FileSeen("w", W, W), {"w": W}, None),
    ("waiting, complete", lambda s: s.observe("w", True), FileSeen("w", W, P), {"w": P}, "arrived"),
    ("missing, back", lambda s: s.observe("m", False), FileSeen("m", M, W), {"m": W}, None),
    ("pending, seen again", lambda s: s.observe("p1", True), None, {"p1": P}, None),
    ("leased, seen again", lambda s: s.observe("l", True), None, {"l": L}, None),
    ("pending, gone", lambda s: s.vanish("p1"), FileMissing("p1", P), {"p1": M}, "missing"),
    ("waiting, gone", lambda s: s.vanish("w"), FileMissing("w", W), {"w": M}, "missing"),
    ("leased, gone", lambda s: s.vanish("l"), None, {"l": L}, None),
    (
        "lease",
        lambda s: s.lease("2", "gpu2", 5, now=3),
        Leased(Job("2", "gpu2", ("p1", "p2"), JobState.ASSIGNED, 3 + LEASE, 3)),
        {"p1": L, "p2": L, "w": W},
        "assigned",
    ),
    ("abandon", lambda s: s.abandon("1"), None, {"l": P}, None),
    (
        "kept alive",
        lambda s: s.keepalive("1", JobState.STARTED, 5),
        KeptAlive("1", "gpu1"),
        {},
        None,
    ),
    ("late", lambda s: s.keepalive("1", JobState.STARTED, LEASE), Late("1", "gpu1"), {}, "late"),
    ("unknown", lambda s: s.keepalive("9", JobState.STARTED, 0), Late("9", None), {}, "late"),
    *(
        (
            f"ends {outcome.value}",
            lambda s, outcome=outcome: s.finish("1", outcome),
            ended(outcome),
            {"l": FILES_AFTER[outcome]},
            line,
        )
        for outcome, line in (
            (JobState.DONE, "done"),
            (JobState.FAILED, "failed"),
            (JobState.QUARANTINED, "quarantined"),
            (JobState.STOPPED, "released"),
            (JobState.EXPIRED, "expired"),
        )
    ),
    (
        "split",
        lambda s: s.split("1", ("l",), "7"),
        Split(replace(JOB, files=()), replace(JOB, jobid="7")),
        {"l": L},
        None,
    ),
    (
        "ends FAILED, not counted",
        lambda s: s.finish("1", JobState.FAILED, counted=False),
        replace(ended(JobState.FAILED), counted=False),
        {"l": P},
        "failed",
    ),
    ("retry", lambda s: s.retry(["q", "p1", "x"]), Retried(("q",)), {"q": P, "p1": P}, "retried"),
    (
        "adopt",
        lambda s: s.adopt("5", "gpu3", ["a", "d", "l"], now=7),
        Adopted(Job("5", "gpu3", ("a",), JobState.ASSIGNED, 7 + LEASE, 7)),
        {"a": L, "d": D, "l": L},
        "adopted",
    ),
    (
        "found ended",
        lambda s: s.record_ended("6", "gpu2", JobState.QUARANTINED, now=0),
        FoundEnded("6", "gpu2", JobState.QUARANTINED),
        {},
        None,
    ),
    (
        "restored",
        lambda s: s.restore_many(["d", "p1", "x", "y"], D),
        Restored(D, 2),
        {"d": D, "p1": P, "x": D, "y": D},
        None,
    ),
    (
        "failures restored",
        lambda s: s.restore_failures([("gpu2", ("r", "s", "d"))], [("gpu2", "t")]),
        [Restored(F, 1), Restored(P, 2)],
        {"r": P, "s": P, "d": D, "t": F},
        None,
    ),
]


@pytest.mark.parametrize(
    ("call", "event", "then", "line"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_each_change_returns_what_happened_and_is_logged_from_it(
    call: Callable[[RunState], Returned],
    event: Returned,
    then: dict[str, FileState],
    line: str | None,
) -> None:
    state = given()
    assert call(state) == event
    assert {name: state.file_state(name) for name in then} == then
    for each in event if isinstance(event, list) else [] if event is None else [event]:
        Progress(0.0).apply(each, 1.0)  # every kind is taken in
        logged = event_line(each, Facts())
        assert (logged.event if logged else None) == line


def test_the_ended_jobs_a_start_up_found_are_one_event_that_counts_as_one_each() -> None:
    """A start-up records every ended job folder at once: the state machine holds each as
    ``record_ended`` would, and progress takes them in oldest first (undated ones first)
    whatever their order, as it would one record each; nothing is logged."""
    now = 10_000.0
    folders = [  # (job id, engine, outcome, files, seconds ago; None: not dated)
        ("3", "gpu1", JobState.DONE, 30, 300),
        ("1", "old", JobState.DONE, 5, 7200),
        ("5", "gpu3", JobState.QUARANTINED, 2, None),
        ("4", "gpu2", JobState.QUARANTINED, 1, 200),
        ("2", "gpu1", JobState.FAILED, 30, 600),
    ]
    facts = [(None if ago is None else now - ago, files) for *_, files, ago in folders]
    state = RunState(LEASE)
    jobs = [(jobid, engine, end) for jobid, engine, end, *_ in folders]
    found = state.record_all_ended(jobs, now)
    assert found == EndedFound(tuple(FoundEnded(*job) for job in jobs))
    assert [state.job(jobid).state for jobid, *_ in folders] == [end for _, _, end, *_ in folders]
    assert event_line(found, Facts(found=tuple(facts))) is None
    at_once, each = Progress(0.0), Progress(0.0)
    at_once.apply(found, now, Facts(found=tuple(facts)))
    dated = sorted(zip(facts, found.jobs, strict=True), key=lambda f: f[0][0] or float("-inf"))
    for (ended, files), job in dated:
        each.apply(job, now, Facts(at=ended, files=files))
    for picture in (
        Progress.engines,
        Progress.retired_picture,
        Progress.recent_problems,
        Progress.rates,
        Progress.history,
    ):
        assert picture(at_once, now) == picture(each, now)
    assert [engine.engine for engine in at_once.engines(now)] == ["gpu1", "gpu2"]


def test_a_line_names_the_agents_record_of_a_failure() -> None:
    failure = ended(JobState.FAILED)
    record = AttemptRecord(exit_code=127, signal=None, last_line="sh: dorado: not found")
    line = event_line(failure, Facts(record=record))
    assert line is not None and line.level == logging.INFO
    assert line.facts == {
        "jobid": "1",
        "engine": "gpu1",
        "files": 1,
        "reason": "exit 127: sh: dorado: not found",
    }
    assert event_line(FileMissing("a", P), Facts()) == ("missing", logging.WARNING, {"file": "a"})


class Walk:
    """A run driven at random, its progress fed only the events its state returns; the sizes
    are the test's own record, to check progress against."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.now = 0.0
        self.state = RunState(LEASE)
        self.progress = Progress(self.now)
        self.sizes: dict[str, int] = {}
        self.names: list[str] = []
        self.jobs = 0
        self.leased_files = 0
        self.kinds: set[str] = set()  # the kinds of event applied, and the ends of jobs

    def apply(self, event: Event | None, facts: Facts = NO_FACTS) -> None:
        if event is not None:
            self.progress.apply(event, self.now, facts)
            ending = event.outcome.value if isinstance(event, Ended) else None
            self.kinds.add(ending or type(event).__name__)

    def step(self) -> None:
        self.now += self.random.uniform(0, 5)
        state, pick = self.state, self.random.choice
        move = self.random.randrange(9)
        if move <= 1 or not self.names:  # a file appears, or one being written grows
            name = pick(state.waiting()) if move == 1 and state.waiting() else f"f{len(self.names)}"
            if name not in self.sizes:
                self.names.append(name)
            self.sizes[name] = self.sizes.get(name, 0) + self.random.randrange(1, 10_000)
            seen = state.observe(name, complete=self.random.random() < 0.7)
            self.apply(seen, Facts(size=self.sizes[name], at=self.now))
        elif move == 2:  # a file is deleted, or comes back
            name = pick(self.names)
            if state.file_state(name) is M:
                self.apply(state.observe(name, True), Facts(size=self.sizes[name]))
            else:
                self.apply(state.vanish(name))
        elif move in (3, 4):
            self.jobs += 1
            engine = f"gpu{self.random.randrange(4)}"
            leased = state.lease(str(self.jobs), engine, self.random.randrange(1, 6), self.now)
            self.leased_files += len(leased.job.files) if leased else 0
            self.apply(leased)
        elif move == 5 and state.live_jobs():
            jobid = pick(state.live_jobs()).jobid
            self.apply(state.keepalive(jobid, JobState.PROCESSING, self.now))
        elif move in (6, 7) and state.live_jobs():
            job = pick(state.live_jobs())
            outcome = pick([JobState.DONE, JobState.FAILED, JobState.STOPPED, None])
            if outcome is None and job.files:  # a DONE whose account rejects some files
                self.jobs += 1
                rejected = tuple(self.random.sample(job.files, min(2, len(job.files))))
                part = str(self.jobs) + "p"
                self.apply(state.split(job.jobid, rejected, part))
                judged = state.judge_failure(part, attempts=2, others_working=False)
                self.apply(state.finish(part, judged))
                outcome = JobState.DONE
            if outcome is None:
                outcome = JobState.DONE
            if outcome is JobState.FAILED:
                outcome = state.judge_failure(job.jobid, attempts=2, others_working=False)
            self.apply(state.finish(job.jobid, outcome))
        elif move == 8:
            for job in state.due(self.now):
                self.apply(state.finish(job.jobid, JobState.EXPIRED))
            if self.random.random() < 0.2:
                retried = state.retry(state.quarantined())
                sized = tuple((name, self.sizes[name]) for name in retried.files)
                self.apply(retried, Facts(sizes=sized))

    def check(self) -> None:
        """Progress shows what the state machine holds: the bytes of each state, file by file;
        the live jobs; every done and leased file in the engines' tallies."""
        counts = self.state.counts()
        expected = dict.fromkeys(FileState, 0)
        for name in self.names:
            found = self.state.file_state(name)
            assert found is not None
            expected[found] += 0 if found is M else self.sizes[name]
        assert self.progress.bytes_by_state() == expected
        engines = self.progress.engine_stats(self.now)
        current = {jobid for stats in engines for jobid in stats.current}
        assert current == {job.jobid for job in self.state.live_jobs()}
        tallies = [stats.work for stats in engines] + [self.progress.retired]
        assert sum(work.files_done for work in tallies) == counts[D]
        assert sum(work.files_assigned for work in tallies) == self.leased_files
        drain = self.progress.drain(self.now, counts)
        assert drain.backlog_bytes == expected[P] + expected[L]


@pytest.mark.parametrize("seed", range(5))
def test_progress_fed_only_events_shows_the_state_machines_picture(seed: int) -> None:
    walk = Walk(seed)
    for step in range(1, 1_501):
        walk.step()
        if step % 10 == 0:
            walk.check()
    assert walk.kinds == {
        "FileSeen",
        "FileMissing",
        "Leased",
        "KeptAlive",
        "Late",
        "Retried",
        "Split",
        *(outcome.value for outcome in FILES_AFTER),
    }
