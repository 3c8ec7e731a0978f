"""The state machine says what changed: each change returns its event, and every consumer
(progress, the log, benching and a listener such as the facility) takes the run's snapshot from
those events alone, handed to it by ``Consumers.apply``."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import assert_never

import pytest

from bcmanager.core.benching import Benching
from bcmanager.core.consumers import Consumers
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
from bcmanager.core.logs import ENDINGS, Line, event_line
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
        Benching(after=3, seconds=60, longest=600, window=60).apply(each, 1.0)
        logged = event_line(each, Facts())
        assert (logged.event if logged else None) == line


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (Contacted("gpu1"), None),
        (Sized((("d", D, 10),)), None),
        (SequencingFinished("/run/final_summary_x.txt"), None),
        (Benched("gpu1", 60.0, "3 jobs in a row failed"), "benched"),
    ],
)
def test_what_the_state_machine_does_not_hold_is_an_event_too(
    event: Event, line: str | None
) -> None:
    Progress(0.0).apply(event, 1.0)
    assert Benching(after=3, seconds=60, longest=600, window=60).apply(event, 1.0) is None
    logged = event_line(event, Facts())
    assert (logged.event if logged else None) == line


def test_the_ended_jobs_a_start_up_found_are_one_event_that_counts_as_one_each() -> None:
    """A start-up records every ended job folder at once: the state machine holds each as
    ``record_ended`` would, and progress takes them in oldest first (undated ones first)
    whatever their order, as it would one record each; nothing is logged or benched."""
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
    assert Benching(after=3, seconds=60, longest=600, window=60).apply(found, now) is None
    at_once, each = Progress(0.0), Progress(0.0)
    at_once.apply(found, now, Facts(found=tuple(facts)))
    dated = sorted(zip(facts, found.jobs, strict=True), key=lambda f: f[0][0] or float("-inf"))
    for (ended, files), job in dated:
        each.apply(job, now, Facts(at=ended, files=files))
    for snapshot in (
        Progress.engines,
        Progress.retired_snapshot,
        Progress.recent_problems,
        Progress.rates,
        Progress.history,
    ):
        assert snapshot(at_once, now) == snapshot(each, now)
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


ENGINES = 4
WINDOW = 20.0  # seconds an engine's call says it works
BENCH_AFTER = 2
BENCH_SECONDS = 30.0
LONGEST = 1e9  # no streak grows old within a walk: the model need not forget


@dataclass
class Streak:
    since: float
    failures: int = 0
    times: int = 0
    until: float = 0.0
    reason: str = ""


@dataclass
class BenchModel:
    """The benching rules of benching.py's docstring, kept the plain way: what benching, fed
    only events, must hold."""

    contacts: dict[str, float] = field(default_factory=dict)
    successes: dict[str, float] = field(default_factory=dict)
    streaks: dict[str, Streak] = field(default_factory=dict)
    verdicts: list[Benched] = field(default_factory=list)

    def succeeded(self, engine: str, now: float) -> None:
        self.streaks.pop(engine, None)
        self.successes[engine] = now

    def failed(self, engine: str, now: float, reason: str) -> None:
        streak = self.streaks.setdefault(engine, Streak(since=now))
        streak.failures += 1
        others = any(
            other != engine and at >= streak.since - WINDOW for other, at in self.successes.items()
        )
        if streak.failures < BENCH_AFTER or not others:
            return
        seconds = min(LONGEST, BENCH_SECONDS * 2**streak.times)
        streak.times += 1
        streak.failures = 0
        streak.until = now + seconds
        streak.reason = (
            f"{BENCH_AFTER} jobs in a row failed while other engines succeeded "
            f"(last: {reason}); no work for {seconds:.0f} s"
        )
        self.verdicts.append(Benched(engine, streak.until, streak.reason))

    def benched(self, now: float) -> list[Benched]:
        return [
            Benched(engine, streak.until, streak.reason)
            for engine, streak in sorted(self.streaks.items())
            if streak.until > now
        ]

    def others_working(self, engine: str, now: float) -> bool:
        benched = {each.engine for each in self.benched(now)}
        return any(
            other != engine and at >= now - WINDOW and other not in benched
            for other, at in self.contacts.items()
        )


@dataclass
class Heard:
    """A listener, as the facility is one: the files' states, the live jobs and the benches,
    from the events alone; and the kinds of event heard, and the ends of jobs."""

    files: dict[str, FileState] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    benched: list[Benched] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)

    def __call__(self, event: Event, facts: Facts) -> None:
        ending = event.outcome.value if isinstance(event, Ended) else None
        self.kinds.add(ending or type(event).__name__)
        match event:
            case FileSeen():
                self.files[event.name] = event.after
            case FileMissing():
                self.files[event.name] = M
            case Leased() | Adopted():
                self.live.add(event.job.jobid)
                self.files.update(dict.fromkeys(event.job.files, L))
            case Split():
                self.live.add(event.part.jobid)
            case Ended():
                self.live.discard(event.job.jobid)
                self.files.update(dict.fromkeys(event.job.files, FILES_AFTER[event.outcome]))
            case Retried():
                self.files.update(dict.fromkeys(event.files, P))
            case Sized():
                self.files.update((name, state) for name, state, _ in event.files)
            case Benched():
                self.benched.append(event)
            case KeptAlive() | Late() | FoundEnded() | EndedFound() | Restored() | Contacted():
                pass
            case SequencingFinished():
                pass
            case _:
                assert_never(event)


@dataclass
class Told:
    """What the log lines alone say: the live jobs, the files done and quarantined, and the
    engines benched."""

    live: set[str] = field(default_factory=set)
    done: int = 0
    quarantined: int = 0
    benched: list[str] = field(default_factory=list)

    def read(self, line: Line) -> None:
        event, facts = line.event, line.facts
        if event in ("assigned", "adopted"):
            self.live.add(str(facts["jobid"]))
        elif event in ENDINGS.values():
            self.live.discard(str(facts["jobid"]))
            files = facts["files"]
            assert isinstance(files, int)
            self.done += files if event == "done" else 0
            self.quarantined += files if event == "quarantined" else 0
        elif event == "retried":
            files = facts["files"]
            assert isinstance(files, int)
            self.quarantined -= files
        elif event == "benched":
            self.benched.append(str(facts["engine"]))


class Walk:
    """A run driven at random as the manager drives it, every consumer fed only the events its
    state returns and those of what it does not hold (calls, sizes found at start-up, the
    sequencer's end), through ``Consumers.apply``. The sizes, the benching rules and the
    parts set apart are the test's own record, to check the consumers against."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.now = 0.0
        self.state = RunState(LEASE)
        self.progress = Progress(self.now)
        self.benching = Benching(BENCH_AFTER, BENCH_SECONDS, LONGEST, WINDOW)
        self.lines: list[Line] = []
        self.heard = Heard()
        self.consumers = Consumers(self.progress, self.benching, self.lines.append, self.heard)
        self.told = Told()
        self.model = BenchModel()
        self.sizes: dict[str, int] = {}
        self.names: list[str] = []
        self.jobs = 0
        self.leased_files = 0
        self.restored = 0  # files that entered the run done, by recovery
        self.summary: str | None = None

    def apply(self, event: Event | None, facts: Facts = NO_FACTS) -> None:
        if event is not None:
            self.consumers.apply(event, self.now, facts)

    def contact(self, engine: str) -> None:
        self.model.contacts[engine] = self.now
        self.apply(Contacted(engine))

    def finish(self, job: Job, outcome: JobState, *, part: bool = False) -> None:
        """End ``job`` as the manager does: a benched engine's failure is not counted against
        its files; the benching rules judge it unless it is a part set apart or a retry that
        another engine's failure made."""
        benched = self.benching.benched(job.engine, self.now) is not None
        failed = outcome in (JobState.FAILED, JobState.QUARANTINED)
        record = None
        if failed and self.random.random() < 0.5:
            record = AttemptRecord(
                exit_code=self.random.randrange(1, 3), signal=None, last_line="x"
            )
        ended = self.state.finish(job.jobid, outcome, counted=not (failed and benched))
        if outcome is JobState.DONE:
            self.model.succeeded(job.engine, self.now)
        elif failed and not part and (not job.retry or job.failed_by == job.engine):
            reason = record.describe() if record is not None else "no record of why"
            self.model.failed(job.engine, self.now, reason)
        self.apply(ended, Facts(record=record))

    def failure(self, job: Job) -> JobState:
        """A failure as the manager judges it: a benched engine's is not held against its
        files; another is judged by the failure policy."""
        if self.benching.benched(job.engine, self.now) is not None:
            return JobState.FAILED
        others = self.benching.others_working(job.engine, self.now)
        return self.state.judge_failure(job.jobid, attempts=2, others_working=others)

    def new_file(self, size: int) -> str:
        name = f"f{len(self.names)}"
        self.names.append(name)
        self.sizes[name] = size
        return name

    def step(self) -> None:
        self.now += self.random.uniform(0, 5)
        state, pick = self.state, self.random.choice
        move = self.random.randrange(11)
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
        elif move in (3, 4):  # an engine asks for work: none while it is benched
            engine = f"gpu{self.random.randrange(ENGINES)}"
            self.contact(engine)
            if self.benching.benched(engine, self.now) is not None:
                return
            self.jobs += 1
            steer = self.benching.others_working(engine, self.now)
            leased = state.lease(
                str(self.jobs), engine, self.random.randrange(1, 6), self.now, steer
            )
            self.leased_files += len(leased.job.files) if leased else 0
            self.apply(leased)
        elif move == 5 and state.live_jobs():
            job = pick(state.live_jobs())
            self.contact(job.engine)
            self.apply(state.keepalive(job.jobid, JobState.PROCESSING, self.now))
        elif move in (6, 7) and state.live_jobs():
            job = pick(state.live_jobs())
            self.contact(job.engine)
            outcome = pick([JobState.DONE, JobState.FAILED, JobState.STOPPED, None])
            if job.engine == "gpu0" and self.random.random() < 0.7:
                outcome = JobState.FAILED  # a bad node: it fails most of its jobs
            if outcome is None and job.files:  # a DONE whose account rejects some files
                self.jobs += 1
                rejected = tuple(self.random.sample(job.files, min(2, len(job.files))))
                part = str(self.jobs) + "p"
                self.apply(state.split(job.jobid, rejected, part))
                self.finish(state.job(part), self.failure(state.job(part)), part=True)
                outcome = JobState.DONE
            if outcome is None:
                outcome = JobState.DONE
            if outcome is JobState.FAILED:
                outcome = self.failure(job)
            self.finish(state.job(job.jobid), outcome)
        elif move == 8:
            for job in state.due(self.now):
                self.finish(job, JobState.EXPIRED)
            if self.random.random() < 0.2:
                retried = state.retry(state.quarantined())
                sized = tuple((name, self.sizes[name]) for name in retried.files)
                self.apply(retried, Facts(sizes=sized))
        elif move == 9:  # what a start-up finds: a file done, or a job leased, sized after
            size = self.random.randrange(1, 10_000)
            if self.random.random() < 0.5:
                name = self.new_file(size)
                self.apply(state.restore_many([name], D))
                self.restored += 1
                self.apply(Sized(((name, D, size),)))
            else:
                self.jobs += 1
                names = [self.new_file(size) for _ in range(self.random.randrange(1, 3))]
                engine = f"gpu{self.random.randrange(ENGINES)}"
                self.apply(state.adopt(str(self.jobs), engine, names, self.now))
                self.apply(Sized(tuple((name, L, size) for name in names)))
        elif move == 10 and self.random.random() < 0.02:
            summary = f"/run/final_summary_{self.jobs}.txt"
            self.summary = self.summary or summary
            self.apply(SequencingFinished(summary))

    def check(self) -> None:
        """Each consumer shows what the state machine holds. Progress: the bytes of each state,
        file by file; the live jobs; every done and leased file in the engines' tallies; the
        final summary. The log: the live jobs, the files done and quarantined. Benching: the
        benches and who works, as its rules say. The listener: each file's state, the live
        jobs, the benches."""
        counts = self.state.counts()
        expected = dict.fromkeys(FileState, 0)
        files = {}
        for name in self.names:
            found = self.state.file_state(name)
            assert found is not None
            files[name] = found
            expected[found] += 0 if found is M else self.sizes[name]
        live = {job.jobid for job in self.state.live_jobs()}
        assert self.progress.bytes_by_state() == expected
        engines = self.progress.engine_stats(self.now)
        assert {jobid for stats in engines for jobid in stats.current} == live
        tallies = [stats.work for stats in engines] + [self.progress.retired]
        assert sum(work.files_done for work in tallies) == counts[D] - self.restored
        assert sum(work.files_assigned for work in tallies) == self.leased_files
        drain = self.progress.drain(self.now, counts)
        assert drain.backlog_bytes == expected[P] + expected[L]
        assert self.progress.final_summary == self.summary

        for line in self.lines:
            self.told.read(line)
        self.lines.clear()
        assert self.told.live == live
        assert self.told.done == counts[D] - self.restored
        assert self.told.quarantined == counts[F]

        assert self.benching.all_benched(self.now) == self.model.benched(self.now)
        for index in range(ENGINES):
            engine = f"gpu{index}"
            working = self.benching.others_working(engine, self.now)
            assert working == self.model.others_working(engine, self.now)
        assert self.heard.benched == self.model.verdicts
        assert self.told.benched == [each.engine for each in self.model.verdicts]

        assert self.heard.files == files
        assert self.heard.live == live


@pytest.mark.parametrize("seed", range(5))
def test_every_consumer_fed_only_events_shows_the_state_machines_snapshot(seed: int) -> None:
    walk = Walk(seed)
    for _ in range(1_500):
        walk.step()
        walk.check()
    assert walk.heard.kinds == {
        "FileSeen",
        "FileMissing",
        "Leased",
        "Adopted",
        "KeptAlive",
        "Late",
        "Retried",
        "Restored",
        "Split",
        "Contacted",
        "Sized",
        "SequencingFinished",
        "Benched",
        *(outcome.value for outcome in FILES_AFTER),
    }
