"""Rates, windows, ETA, bytes and per-engine tallies: the sans-IO progress module fed the events
of the state machine, with a clock the test moves by hand."""

from __future__ import annotations

import tracemalloc

import pytest
from test_scaling import lines_executed

from bcmanager.core.events import Contacted, Facts, SequencingFinished, Sized
from bcmanager.core.jobs import FileState, Job
from bcmanager.core.progress import (
    DRAIN_HORIZON,
    ENGINE_IDLE_SECONDS,
    IDLE_LISTED,
    Progress,
    RateRing,
    run_phase,
)
from bcmanager.core.state import RunState
from bcmanager.models import JobState, RunPhase

MB = 1_000_000


class Run:
    """A RunState whose events feed a Progress, as the manager's do."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self.state = RunState(lease_seconds=3600)
        self.progress = Progress(now)
        self.next_job = 0

    def arrive(
        self, name: str, size: int = MB, *, written: float | None = None, complete: bool = True
    ) -> None:
        seen = self.state.observe(name, complete)
        assert seen is not None
        self.progress.apply(seen, self.now, Facts(size=size, at=written))

    def lease(self, engine: str, count: int) -> Job:
        self.next_job += 1
        leased = self.state.lease(str(self.next_job), engine, count, self.now)
        assert leased is not None
        self.progress.apply(leased, self.now)
        return leased.job

    def end(self, job: Job, outcome: JobState) -> None:
        if outcome is not JobState.EXPIRED:
            # The engine reported FAILED, which the policy judged QUARANTINED.
            reported = JobState.FAILED if outcome is JobState.QUARANTINED else outcome
            self.state.check_completion(job.jobid, reported, self.now)
        self.progress.apply(self.state.finish(job.jobid, outcome), self.now)

    def status(self) -> tuple[dict[FileState, int], dict[FileState, int]]:
        return self.state.counts(), self.progress.bytes_by_state()


def test_ring_counts_only_the_buckets_of_the_window() -> None:
    ring = RateRing(bucket_seconds=60, size=60)
    ring.add(0, 1, 10)  # minute 0
    ring.add(59.9, 2, 20)  # minute 0
    ring.add(60, 4, 40)  # minute 1
    ring.add(300, 8, 80)  # minute 5
    assert ring.totals(now=330, buckets=1) == (8, 80)
    assert ring.totals(now=330, buckets=5) == (12, 120)  # minutes 1 to 5
    assert ring.totals(now=330, buckets=6) == (15, 150)
    assert ring.series(now=330)[-6:] == [3, 4, 0, 0, 0, 8]
    assert ring.covered(now=330, buckets=5) == 4 * 60 + 30


def test_ring_forgets_a_lap_ago_and_drops_events_older_than_itself() -> None:
    ring = RateRing(bucket_seconds=60, size=60)
    ring.add(0, 5, 50)
    ring.add(3600, 1, 10)  # minute 60 takes the place of minute 0
    ring.add(30, 7, 70)  # minute 0 again: older than the ring now, dropped
    assert ring.totals(now=3600, buckets=60) == (1, 10)
    assert ring.totals(now=3600 + 59 * 60, buckets=60) == (1, 10)
    assert ring.totals(now=3600 + 60 * 60, buckets=60) == (0, 0)  # a full lap later
    assert sum(ring.series(now=3600 + 60 * 60)) == 0


def test_rates_compare_the_sequencer_with_basecalling() -> None:
    run = Run()
    # Ten minutes: a 2 MB file arrives every 5 s (12 a minute), one is basecalled every 6 s.
    for second in range(600):
        run.now = 1_000.0 + second
        if second % 5 == 0:
            run.arrive(f"f{second}.pod5", size=2 * MB)
        if second % 6 == 3:
            run.end(run.lease("gpu1", 1), JobState.DONE)
    run.now = 1_600.0
    rates = run.progress.rates(run.now)
    # The 60-minute window is measured over the ten minutes the run has lasted.
    assert rates.last_60_minutes.arrived.files_per_minute == pytest.approx(12, rel=0.02)
    assert rates.last_60_minutes.basecalled.files_per_minute == pytest.approx(10, rel=0.02)
    assert rates.last_60_minutes.basecalled.bytes_per_minute == pytest.approx(20 * MB, rel=0.02)
    assert rates.last_5_minutes.arrived.files_per_minute == pytest.approx(12, rel=0.02)
    assert rates.last_5_minutes.basecalled.files_per_minute == pytest.approx(10, rel=0.02)
    drain = run.progress.drain(run.now, run.state.counts())
    assert drain.backlog_files == 20 and drain.backlog_bytes == 40 * MB
    assert drain.keeping_up is False
    assert drain.growth_files_per_minute == pytest.approx(2, rel=0.05)
    assert drain.eta_seconds == pytest.approx(20 / 10 * 60, rel=0.02)
    history = run.progress.history(run.now)
    assert history.last_hour.bucket_seconds == 60 and len(history.last_hour.arrived) == 60
    assert sum(history.last_hour.arrived) == 120 and sum(history.last_hour.basecalled) == 100
    assert history.last_hour.arrived[-5:-1] == [12] * 4
    assert history.last_hour.basecalled[-5:-1] == [10] * 4
    assert history.last_3_days.bucket_seconds == 1800
    assert sum(history.last_3_days.basecalled) == 100


def test_eta_once_the_sequencer_stopped_and_when_nothing_moves() -> None:
    run = Run()
    for index in range(30):
        run.arrive(f"f{index}.pod5")
    drain = run.progress.drain(run.now, run.state.counts())
    assert drain.eta_seconds is None and drain.keeping_up is False
    run.now += 60
    run.end(run.lease("gpu1", 10), JobState.DONE)  # 10 files in the run's first two minutes
    run.now += 60
    drain = run.progress.drain(run.now, run.state.counts())
    assert drain.eta_seconds == pytest.approx(20 / 5 * 60, rel=0.01)
    run.end(run.lease("gpu1", 20), JobState.DONE)
    drain = run.progress.drain(run.now, run.state.counts())
    assert drain.backlog_files == 0 and drain.eta_seconds == 0 and drain.keeping_up is True


def test_files_found_at_start_up_count_in_the_minute_they_were_written() -> None:
    run = Run(now=10_000.0)
    run.arrive("old.pod5", written=10_000.0 - 7200)  # two hours ago: not in any window
    run.arrive("recent.pod5", written=10_000.0 - 150)
    rates = run.progress.rates(run.now)
    # The window holds four whole minutes and the 40 s of the current one.
    assert rates.last_5_minutes.arrived.files_per_minute == pytest.approx(60 / 280, rel=0.01)
    assert sum(run.progress.history(run.now).last_hour.arrived) == 1
    # Basecalling is measured from the manager's start only: it did nothing before.
    run.now += 120
    run.end(run.lease("gpu1", 2), JobState.DONE)
    hour = run.progress.rates(run.now).last_60_minutes
    assert hour.basecalled.files_per_minute == pytest.approx(2 / 2, rel=0.01)


def test_bytes_follow_each_file_through_every_state() -> None:
    run = Run()
    run.arrive("growing.pod5", size=100, complete=False)
    run.arrive("growing.pod5", size=300, complete=False)
    for index in range(6):
        run.arrive(f"f{index}.pod5", size=1000 + index)
    assert run.progress.bytes_by_state()[FileState.WAITING] == 300
    done, failed, stopped, expired = (run.lease(f"gpu{i}", 1) for i in range(4))
    assert run.status()[1][FileState.LEASED] == 1000 + 1001 + 1002 + 1003
    run.end(done, JobState.DONE)
    run.end(failed, JobState.QUARANTINED)
    run.end(stopped, JobState.STOPPED)
    run.end(expired, JobState.EXPIRED)
    # The growing file completes at last.
    run.arrive("growing.pod5", size=500)
    counts, sizes = run.status()
    assert sizes == {
        FileState.WAITING: 0,
        FileState.PENDING: 1002 + 1003 + 1004 + 1005 + 500,
        FileState.LEASED: 0,
        FileState.DONE: 1000,
        FileState.FAILED: 1001,
        FileState.MISSING: 0,
    }
    assert counts[FileState.PENDING] == 5
    # Files found at start-up are sized later, in whatever state recovery put them.
    run.progress.apply(Sized((("restored.pod5", FileState.DONE, 7000),)), run.now)
    assert run.progress.bytes_by_state()[FileState.DONE] == 8000


def test_engine_tallies_and_recent_problems() -> None:
    run = Run()
    for index in range(40):
        run.arrive(f"f{index}.pod5")
    first = run.lease("gpu1", 10)
    run.now += 100
    run.end(first, JobState.DONE)
    second = run.lease("gpu1", 10)
    run.now += 20
    run.end(second, JobState.DONE)
    failed = run.lease("gpu2", 5)
    run.end(failed, JobState.QUARANTINED)
    lost = run.lease("gpu2", 5)
    run.now += 95
    run.end(lost, JobState.EXPIRED)
    given_back = run.lease("gpu3", 3)
    run.end(given_back, JobState.STOPPED)
    holding = run.lease("gpu3", 2)
    run.now += 12
    gpu1, gpu2, gpu3 = run.progress.engines(run.now)
    assert (gpu1.engine, gpu1.jobs_done, gpu1.files_done) == ("gpu1", 2, 20)
    assert gpu1.bytes_done == 20 * MB
    assert gpu1.mean_seconds_per_file == pytest.approx(120 / 20)
    assert gpu1.current_jobs == [] and gpu1.seconds_since_contact == pytest.approx(127)
    assert (gpu2.jobs_failed, gpu2.jobs_expired, gpu2.mean_seconds_per_file) == (1, 1, None)
    assert (gpu3.jobs_released, gpu3.current_jobs, gpu3.files_assigned) == (1, [holding.jobid], 5)
    assert [(p.jobid, p.outcome, p.files) for p in run.progress.recent_problems(run.now)] == [
        (lost.jobid, "EXPIRED", 5),
        (failed.jobid, "QUARANTINED", 5),
    ]
    expired = run.progress.durations[JobState.EXPIRED]
    assert expired.count == 1 and expired.total == pytest.approx(95)
    assert dict(expired.cumulative())["60.0"] == 0 and dict(expired.cumulative())["120.0"] == 1


def test_an_idle_engine_is_retired_after_the_idle_time_and_a_live_one_is_kept() -> None:
    run = Run()
    for index in range(10):
        run.arrive(f"f{index}.pod5")
    holding = run.lease("busy", 2)  # and never calls again
    run.end(run.lease("worker", 3), JobState.DONE)
    run.progress.apply(Contacted("asker"), run.now)  # a no-work reply
    run.now += ENGINE_IDLE_SECONDS - 1
    assert [e.engine for e in run.progress.engines(run.now)] == ["asker", "busy", "worker"]
    run.now += 1  # idle for ENGINE_IDLE_SECONDS now: retired, with their work
    [busy] = run.progress.engines(run.now)
    assert busy.engine == "busy" and busy.current_jobs == [holding.jobid]
    assert busy.seconds_since_contact == ENGINE_IDLE_SECONDS
    retired = run.progress.retired_snapshot(run.now)
    assert (retired.engines, retired.jobs_assigned, retired.jobs_done) == (2, 1, 1)
    assert (retired.files_done, retired.bytes_done) == (3, 3 * MB)
    # An engine whose lease runs out without a word starts to idle then, and is listed until
    # it has idled for as long.
    run.end(holding, JobState.EXPIRED)
    run.now += ENGINE_IDLE_SECONDS - 1
    [busy] = run.progress.engines(run.now)
    assert (busy.current_jobs, busy.jobs_expired, busy.files_expired) == ([], 1, 2)
    # An engine that calls again after it was retired is listed again, counting from zero.
    run.end(run.lease("worker", 1), JobState.FAILED)
    run.now += 1
    [worker] = run.progress.engines(run.now)
    assert (worker.engine, worker.jobs_assigned, worker.jobs_failed, worker.jobs_done) == (
        "worker",
        1,
        1,
        0,
    )
    retired = run.progress.retired_snapshot(run.now)
    assert (retired.engines, retired.jobs_expired, retired.files_expired) == (3, 1, 2)
    assert (retired.jobs_assigned, retired.files_assigned) == (2, 5)


def test_only_the_idle_engines_active_last_are_listed_and_the_totals_stay_exact() -> None:
    run = Run()
    count = 3 * IDLE_LISTED
    for index in range(count + 5):
        run.arrive(f"f{index}.pod5", size=MB + index)
    held = [run.lease(f"early{index}", 1) for index in range(5)]
    for index in range(count):
        run.now += 1
        job = run.lease(f"pod{index:04d}", 1)
        run.end(job, JobState.DONE if index % 3 else JobState.QUARANTINED)
    listed = run.progress.engines(run.now)
    idle = [engine.engine for engine in listed if not engine.current_jobs]
    assert idle == [f"pod{index:04d}" for index in range(count - IDLE_LISTED, count)]
    assert [engine.current_jobs for engine in listed[:5]] == [[job.jobid] for job in held]
    retired = run.progress.retired_snapshot(run.now)
    assert retired.engines == count - IDLE_LISTED
    counts, sizes = run.status()
    assert sum(e.files_done for e in listed) + retired.files_done == counts[FileState.DONE]
    assert sum(e.bytes_done for e in listed) + retired.bytes_done == sizes[FileState.DONE]
    assert sum(e.files_failed for e in listed) + retired.files_failed == counts[FileState.FAILED]
    assigned = sum(e.files_assigned for e in listed) + retired.files_assigned
    assert assigned == count + 5


def test_a_new_engine_costs_the_same_however_many_came_before() -> None:
    """Retiring is O(1) amortized: no call walks the engines seen before."""

    def cost(seen: int) -> tuple[int, int]:
        progress = Progress(0.0)
        for index in range(seen):
            progress.apply(Contacted(f"pod{index}"), float(index))
        now = float(seen)
        return (
            lines_executed(lambda: progress.apply(Contacted("newcomer"), now)),
            lines_executed(lambda: progress.engines(now)),
        )

    assert cost(1_000) == cost(20_000)


def test_the_phase_follows_the_final_summary_and_the_backlog() -> None:
    counts = dict.fromkeys(FileState, 0)
    assert run_phase(False, counts) is RunPhase.SEQUENCING
    assert run_phase(True, {**counts, FileState.LEASED: 1}) is RunPhase.BASECALLING
    assert run_phase(True, {**counts, FileState.PENDING: 1}) is RunPhase.BASECALLING
    # A file still waiting after the sequencer stopped is still being written; a missing one
    # will never come.
    assert run_phase(True, {**counts, FileState.WAITING: 1, FileState.DONE: 9}) is (
        RunPhase.BASECALLING
    )
    assert run_phase(True, {**counts, FileState.MISSING: 1, FileState.DONE: 9}) is (
        RunPhase.COMPLETE
    )
    progress = Progress(0.0)
    progress.apply(SequencingFinished("/run/final_summary_x.txt"), 1.0)
    progress.apply(SequencingFinished("/run/final_summary_y.txt"), 2.0)
    assert progress.final_summary == "/run/final_summary_x.txt"  # the first one counts


def test_a_pending_file_costs_under_300_bytes_all_in() -> None:
    """The worst case for memory: every file of the run waits for an engine, so every size is
    kept. Names, state and progress together stay under the design's 300 bytes a file."""
    count = 100_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run = Run()
        for index in range(count):
            run.arrive(f"PAW12345_pass_1a2b3c4d_5e6f7a8b_{index}.pod5", size=150 * MB + index)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert run.state.pending_count() == count
    assert used / count < 300, f"{used / count:.0f} bytes a file"


def test_a_young_run_is_measured_over_the_time_it_has_lasted() -> None:
    """The demo once printed 51 files/min at 34 s, when 90 a minute arrived."""
    run = Run(now=0.0)
    for index in range(51):
        run.now = index * 34 / 51
        run.arrive(f"f{index}.pod5")
        if index >= 10:  # basecalled 10 behind: ten files in flight
            run.end(run.lease("gpu1", 1), JobState.DONE)
    run.now = 34.0
    rates = run.progress.rates(run.now)
    assert rates.last_5_minutes.arrived.files_per_minute == pytest.approx(90, rel=0.01)
    assert rates.last_60_minutes.arrived.files_per_minute == pytest.approx(90, rel=0.01)
    assert rates.last_60_minutes.basecalled.files_per_minute == pytest.approx(
        41 / 34 * 60, rel=0.01
    )
    # The first seconds: a rate is taken over 10 s at least, not blown up by a tiny span.
    young = Run(now=0.0)
    young.arrive("first.pod5")
    assert young.progress.rates(1.0).last_5_minutes.arrived.files_per_minute == 6


def test_work_in_flight_is_keeping_up_and_a_growing_queue_is_not() -> None:
    """Keeping up: the backlog goes within the horizon and does not pile up. Files in the
    engines' hands are not a pile: the demo showed "falling behind" with ten in flight."""
    run = Run(now=0.0)
    held: list[Job] = []
    for second in range(300):  # 1 a second arrives; each is leased and done 10 s later
        run.now = float(second)
        run.arrive(f"f{second}.pod5")
        held.append(run.lease("gpu1", 1))
        if len(held) > 10:
            run.end(held.pop(0), JobState.DONE)
    run.arrive("queued.pod5")  # and one waits for an engine
    drain = run.progress.drain(run.now, run.state.counts())
    assert drain.backlog_files == 11 and drain.eta_seconds == pytest.approx(11, abs=0.5)
    assert drain.growth_files_per_minute <= 0.25 and drain.keeping_up is True
    assert drain.horizon_seconds == DRAIN_HORIZON

    # The engines stop: files pile up at 60 a minute, and after a minute it says so.
    for second in range(300, 361):
        run.now = float(second)
        run.arrive(f"f{second}.pod5")
    drain = run.progress.drain(run.now, run.state.counts())
    assert drain.growth_files_per_minute > 10 and drain.keeping_up is False


def test_a_backlog_beyond_the_horizon_is_not_keeping_up() -> None:
    run = Run(now=0.0)
    for index in range(1_000):
        run.arrive(f"f{index}.pod5", written=-1.0)
    run.now = 60.0
    run.end(run.lease("gpu1", 50), JobState.DONE)  # 50 a minute: 950 left take 19 minutes
    drain = run.progress.drain(run.now, run.state.counts())
    assert drain.eta_seconds == pytest.approx(19 * 60, rel=0.01)
    assert drain.eta_seconds > DRAIN_HORIZON and drain.keeping_up is False


def test_jobs_found_ended_at_start_up_count_in_tallies_and_rates() -> None:
    """After a restart, what the folders say was done feeds the engines' tallies and the last
    hour's rate, dated when each job ended; it leaves the window as the clock moves on."""
    run = Run(now=10_000.0)
    for jobid, engine, outcome, files, ago in (
        ("1", "old", JobState.DONE, 5, 7200),
        ("2", "gpu1", JobState.DONE, 30, 600),
        ("3", "gpu1", JobState.DONE, 30, 300),
        ("4", "gpu2", JobState.QUARANTINED, 1, 200),
        ("5", "gpu3", JobState.QUARANTINED, 2, None),  # its folder could not be dated
    ):
        found = run.state.record_ended(jobid, engine, outcome, run.now)
        ended = None if ago is None else run.now - ago
        run.progress.apply(found, run.now, Facts(at=ended, files=files))
    engines = {engine.engine: engine for engine in run.progress.engines(run.now)}
    assert set(engines) == {"gpu1", "gpu2"}  # idle for two hours: retired; gpu3 not dated
    assert engines["gpu1"].jobs_done == 2 and engines["gpu1"].files_done == 60
    assert engines["gpu1"].seconds_since_contact == 300
    assert engines["gpu2"].files_failed == 1
    assert run.progress.retired_snapshot(run.now).files_done == 5
    # Both quarantined folders wait for an operator, dated or not.
    problems = run.progress.recent_problems(run.now)
    assert [(p.jobid, p.files, p.seconds_ago) for p in problems] == [("5", 2, None), ("4", 1, None)]
    hour = run.progress.rates(run.now).last_60_minutes
    # The run went on two hours ago already: the whole hour is observed, not just 10 minutes.
    assert hour.basecalled.files_per_minute == pytest.approx(60 / 60, rel=0.01)
    assert sum(run.progress.history(run.now).last_hour.basecalled) == 60
    run.now += 3600
    assert run.progress.rates(run.now).last_60_minutes.basecalled.files_per_minute == 0
