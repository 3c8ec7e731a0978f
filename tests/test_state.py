"""The state machine alone: no server, no disk, the clock passed in."""

from __future__ import annotations

import pytest

from bcmanager.core.events import FileMissing, FileSeen, KeptAlive, Late, Restored, Retried
from bcmanager.core.jobs import FileState, Job
from bcmanager.core.state import Completion, InvalidTransition, LeaseExpired, RunState, UnknownJob
from bcmanager.models import JobState

LEASE = 90.0


def run_with(*names: str) -> RunState:
    state = RunState(LEASE)
    for name in names:
        state.observe(name, complete=True)
    return state


def lease(state: RunState, jobid: str, engine: str, size: int, steer: bool = False) -> Job | None:
    """The job a lease made at second 0, if any."""
    leased = state.lease(jobid, engine, size, now=0, steer=steer)
    return None if leased is None else leased.job


def test_incomplete_file_waits_until_complete() -> None:
    state = RunState(LEASE)
    assert state.observe("a.pod5", complete=False) == FileSeen("a.pod5", None, FileState.WAITING)
    assert state.lease("1", "gpu", 10, now=0) is None
    assert state.waiting() == ["a.pod5"]
    waiting, pending = FileState.WAITING, FileState.PENDING
    assert state.observe("a.pod5", complete=False) == FileSeen("a.pod5", waiting, waiting)
    assert state.observe("a.pod5", complete=True) == FileSeen("a.pod5", waiting, pending)
    assert state.waiting() == []
    job = lease(state, "1", "gpu", 10)
    assert job is not None and job.files == ("a.pod5",)


def test_seen_again_changes_nothing() -> None:
    state = run_with("a.pod5")
    assert state.observe("a.pod5", complete=True) is None
    assert state.pending_count() == 1


def test_batches_are_oldest_first_and_capped_by_what_is_pending() -> None:
    state = run_with("a", "b", "c")
    first = lease(state, "1", "gpu1", 2)
    second = lease(state, "2", "gpu2", 5)
    assert first is not None and first.files == ("a", "b")
    assert second is not None and second.files == ("c",)
    assert state.lease("3", "gpu3", 5, now=0) is None
    assert state.counts()[FileState.LEASED] == 3


def test_expired_files_go_back_ahead_of_newer_ones() -> None:
    state = run_with("a", "b", "c", "d")
    assert state.lease("1", "gpu", 2, now=0) is not None
    assert state.due(now=LEASE - 1) == []
    assert [j.jobid for j in state.due(now=LEASE)] == ["1"]
    state.finish("1", JobState.EXPIRED)
    again = state.lease("2", "gpu", 3, now=LEASE)
    assert again is not None and again.job.files == ("a", "b", "c")


def test_keepalive_extends_the_lease_and_orders_the_reaper() -> None:
    state = run_with("a", "b")
    state.lease("1", "gpu", 1, now=0)
    state.lease("2", "gpu", 1, now=10)
    assert state.keepalive("1", JobState.PROCESSING, now=50) == KeptAlive("1", "gpu")
    # Job 2's lease (10 + 90) now runs out before job 1's (50 + 90).
    assert [job.jobid for job in state.due(now=100)] == ["2"]
    assert state.job("1").state is JobState.PROCESSING


def test_late_job_gets_late_keepalive_and_cannot_complete() -> None:
    state = run_with("a")
    state.lease("1", "gpu", 1, now=0)
    assert state.keepalive("1", JobState.PROCESSING, now=LEASE) == Late("1", "gpu")
    with pytest.raises(LeaseExpired):
        state.check_completion("1", JobState.DONE, now=LEASE)
    state.finish("1", JobState.EXPIRED)
    with pytest.raises(LeaseExpired):
        state.check_completion("1", JobState.DONE, now=LEASE + 1)
    assert state.keepalive("1", JobState.PROCESSING, now=LEASE + 1) == Late("1", "gpu")


def test_keepalive_of_an_unknown_job_is_late() -> None:
    assert RunState(LEASE).keepalive("42", JobState.PROCESSING, now=0) == Late("42", None)


def test_done_is_final_and_a_repeat_is_recognised() -> None:
    state = run_with("a", "b")
    state.lease("1", "gpu", 2, now=0)
    assert state.check_completion("1", JobState.DONE, now=1) is Completion.APPLY
    state.finish("1", JobState.DONE)
    assert state.counts()[FileState.DONE] == 2
    assert state.check_completion("1", JobState.DONE, now=2) is Completion.REPEAT
    with pytest.raises(InvalidTransition):
        state.check_completion("1", JobState.FAILED, now=2)
    assert state.keepalive("1", JobState.PROCESSING, now=2) == Late("1", "gpu")


def test_failed_files_are_retried_first_and_stopped_files_return_first() -> None:
    state = run_with("a", "b", "c")
    state.lease("1", "gpu", 1, now=0)
    state.lease("2", "gpu", 1, now=0)
    state.finish("1", JobState.FAILED)
    state.finish("2", JobState.STOPPED)
    assert state.file_state("a") is FileState.PENDING  # a failed attempt is not a bad file
    retry = lease(state, "3", "gpu2", 10)
    assert retry is not None and retry.files == ("a",) and retry.retry
    nxt = lease(state, "4", "gpu", 10)
    assert nxt is not None and nxt.files == ("b", "c")


def test_a_failed_batch_is_retried_in_halves_until_the_bad_file_is_alone() -> None:
    names = [f"f{index}" for index in range(10)]
    state = run_with(*names)
    bad, jobs = "f6", 0
    engines = iter(["gpu1", "gpu2"] * 20)
    while state.pending_count():
        engine = next(engines)
        job = lease(state, str(jobs + 1), engine, 10, steer=True)
        if job is None:
            continue  # what is left was failed by this engine: it waits for the other
        jobs += 1
        if bad in job.files:
            ending = state.judge_failure(job.jobid, attempts=3, others_working=True)
            state.finish(job.jobid, ending)
        else:
            state.finish(job.jobid, JobState.DONE)
    assert state.file_state(bad) is FileState.FAILED and state.quarantined() == [bad]
    assert state.counts()[FileState.DONE] == 9
    assert sorted(set(state.failed_alone(bad))) == ["gpu1", "gpu2"]
    # Two jobs per halving (10, 5, 3, 2, 1: four), and one on a second engine to confirm.
    assert jobs - 1 == 2 * 4 + 1


def test_a_file_failed_alone_goes_to_another_engine_while_one_works() -> None:
    state = run_with("a", "b")
    state.lease("1", "gpu1", 1, now=0)
    assert state.judge_failure("1", attempts=3, others_working=True) is JobState.FAILED
    state.finish("1", JobState.FAILED)
    # gpu1 failed "a" alone: with another engine at work it gets "b", and gpu2 gets "a".
    mine = lease(state, "2", "gpu1", 5, steer=True)
    theirs = lease(state, "3", "gpu2", 5, steer=True)
    assert mine is not None and mine.files == ("b",)
    assert theirs is not None and theirs.files == ("a",)
    assert state.judge_failure("3", attempts=3, others_working=True) is JobState.QUARANTINED


def test_alone_an_engine_quarantines_a_file_after_n_attempts() -> None:
    state = run_with("a")
    for attempt in range(1, 4):
        job = lease(state, str(attempt), "gpu1", 1)
        assert job is not None
        ending = state.judge_failure(job.jobid, attempts=3, others_working=False)
        assert ending is (JobState.QUARANTINED if attempt == 3 else JobState.FAILED)
        state.finish(job.jobid, ending)
    assert state.file_state("a") is FileState.FAILED
    assert state.check_completion("3", JobState.FAILED, now=1) is Completion.REPEAT
    assert state.retry(["a", "zzz"]) == Retried(("a",))
    assert state.file_state("a") is FileState.PENDING and state.failed_alone("a") == []


def test_a_benched_engines_failure_is_no_evidence() -> None:
    state = run_with("a")
    state.lease("1", "bad", 1, now=0)
    state.finish("1", JobState.FAILED, counted=False)
    assert state.failed_alone("a") == []


def test_recovery_goes_on_with_the_bisection_where_it_stopped() -> None:
    state = RunState(LEASE)
    assert state.restore("d", FileState.DONE) == Restored(FileState.DONE, 1)
    restored = state.restore_failures(
        [("gpu1", ("a", "b", "c", "d")), ("gpu2", ("a", "b")), ("gpu2", ("c",))],
        [("gpu1", "q"), ("gpu2", "q")],
    )
    assert restored == [Restored(FileState.FAILED, 1), Restored(FileState.PENDING, 3)]
    assert state.file_state("q") is FileState.FAILED and state.failed_alone("q") == ["gpu1", "gpu2"]
    assert state.file_state("d") is FileState.DONE
    leased = {tuple(job.files) for job in (lease(state, n, "gpu3", 9) for n in "123") if job}
    assert leased == {("a",), ("b",), ("c",)}  # the halves of {a, b}, and c alone
    assert state.failed_alone("c") == ["gpu2"]


def test_unknown_job_and_bad_outcome_are_named_errors() -> None:
    state = run_with("a")
    with pytest.raises(UnknownJob):
        state.check_completion("7", JobState.DONE, now=0)
    state.lease("1", "gpu", 1, now=0)
    with pytest.raises(InvalidTransition):
        state.check_completion("1", JobState.EXPIRED, now=0)


def test_impossible_file_moves_raise() -> None:
    state = run_with("a")
    state.lease("1", "gpu", 1, now=0)
    state.finish("1", JobState.DONE)
    with pytest.raises(InvalidTransition):
        state.finish("1", JobState.EXPIRED)
    with pytest.raises(InvalidTransition):
        state.restore("b", FileState.PENDING)


def test_abandoned_lease_puts_files_back_in_order() -> None:
    state = run_with("a", "b", "c")
    state.lease("1", "gpu", 2, now=0)
    state.abandon("1")
    with pytest.raises(UnknownJob):
        state.job("1")
    again = lease(state, "2", "gpu", 3)
    assert again is not None and again.files == ("a", "b", "c")


def test_recovery_adopts_leases_without_taking_done_files() -> None:
    state = RunState(LEASE)
    state.record_ended("9", "gpu1", JobState.DONE, now=0)
    state.restore("a", FileState.DONE)
    job = state.adopt("5", "gpu2", ["a", "b"], now=100).job
    assert job.files == ("b",)
    assert job.deadline == 100 + LEASE
    assert state.file_state("a") is FileState.DONE
    assert state.file_state("b") is FileState.LEASED
    # A file listed in a job folder is known: a scan does not queue it again.
    assert state.observe("b", complete=True) is None
    assert state.check_completion("9", JobState.DONE, now=100) is Completion.REPEAT


def test_counts_follow_every_move() -> None:
    state = RunState(LEASE)
    state.observe("w", complete=False)
    for name in "abcd":
        state.observe(name, complete=True)
    state.lease("1", "gpu", 2, now=0)
    state.lease("2", "gpu", 1, now=0)
    state.finish("1", JobState.DONE)
    assert state.counts() == {
        FileState.WAITING: 1,
        FileState.PENDING: 1,
        FileState.LEASED: 1,
        FileState.DONE: 2,
        FileState.FAILED: 0,
        FileState.MISSING: 0,
    }


def test_a_missing_file_is_skipped_by_the_queue_and_leased_once_when_back() -> None:
    state = RunState(LEASE)
    for name in "abc":
        state.observe(name, complete=True)
    assert state.vanish("a") == FileMissing("a", FileState.PENDING)
    assert state.vanish("a") is None
    assert state.counts()[FileState.MISSING] == 1 and state.pending_count() == 2
    assert state.missing() == ["a"]
    # Back again: it has two places in the queue now, and is leased once, at the first.
    assert state.observe("a", complete=True) == FileSeen("a", FileState.MISSING, FileState.PENDING)
    first = lease(state, "1", "gpu", 10)
    assert first is not None and first.files == ("a", "b", "c")
    assert state.lease("2", "gpu", 10, now=0) is None
    # Leased, done and failed files keep their state: their job folders record them.
    assert state.vanish("b") is None
    state.finish("1", JobState.DONE)
    assert state.vanish("c") is None and state.file_state("c") is FileState.DONE
    with pytest.raises(InvalidTransition):
        state.restore("x", FileState.MISSING)


def test_an_ended_job_keeps_no_file_list() -> None:
    state = RunState(LEASE)
    state.observe("a", complete=True)
    state.lease("1", "gpu", 1, now=0)
    ended = state.finish("1", JobState.DONE)
    assert ended.job.files == ("a",) and state.job("1").files == ()
    assert state.check_completion("1", JobState.DONE, now=1) is Completion.REPEAT


def test_a_batch_by_bytes_takes_the_oldest_files_within_the_budget() -> None:
    state = run_with("a", "b", "c", "d")
    sizes = {"a": 4, "b": 5, "c": 1, "d": 1}
    first = state.lease("1", "gpu", 10, now=0, sizes=sizes, max_bytes=9)
    # "c" would fit beside "a" and "b" no more; it is not taken out of turn either.
    assert first is not None and first.job.files == ("a", "b")
    capped = state.lease("2", "gpu", 1, now=0, sizes=sizes, max_bytes=9)
    assert capped is not None and capped.job.files == ("c",)  # the count still caps the batch
    assert state.first_pending() == "d"


def test_a_file_larger_than_the_budget_goes_alone() -> None:
    state = run_with("huge", "small")
    sizes = {"huge": 20_000, "small": 40}
    huge = state.lease("1", "gpu", 10, now=0, sizes=sizes, max_bytes=1_000)
    assert huge is not None and huge.job.files == ("huge",)
    # A file not sized yet weighs nothing.
    state.observe("unsized", complete=True)
    rest = state.lease("2", "gpu", 10, now=0, sizes=sizes, max_bytes=40)
    assert rest is not None and rest.job.files == ("small", "unsized")


def test_a_retry_group_is_leased_whole_whatever_the_budget() -> None:
    state = run_with("a", "b", "c", "d")
    state.lease("1", "gpu1", 4, now=0)
    state.finish("1", JobState.FAILED)
    sizes = dict.fromkeys("abcd", 100)
    half = state.lease("2", "gpu2", 10, now=0, sizes=sizes, max_bytes=1)
    assert half is not None and half.job.retry and half.job.files == ("a", "b")


def test_a_budget_without_sizes_or_sizes_without_a_budget_count_files() -> None:
    state = run_with("a", "b", "c")
    first = state.lease("1", "gpu", 2, now=0, max_bytes=1)
    assert first is not None and first.job.files == ("a", "b")
    rest = state.lease("2", "gpu", 5, now=0, sizes={"c": 10})
    assert rest is not None and rest.job.files == ("c",)


def test_first_pending_is_the_head_of_the_queue_retries_first() -> None:
    state = RunState(LEASE)
    assert state.first_pending() is None
    for name in "abcde":
        state.observe(name, complete=True)
    assert state.vanish("a")
    assert state.first_pending() == "b"  # a missing file's place is skipped
    job = lease(state, "1", "gpu", 2)
    assert job is not None and job.files == ("b", "c")
    state.finish("1", JobState.FAILED)
    assert state.first_pending() == "b"  # the retry halves go first: ("b",), then ("c",)
    assert state.first_pending() == state.pending()[0]
    assert state.vanish("b")
    assert state.first_pending() == "c"
    assert state.lease("2", "gpu", 5, now=0) is not None
    assert state.first_pending() == "d"
    # Back from missing, "a" is queued behind "e"; the head is where lease takes from.
    assert state.observe("a", complete=True) == FileSeen("a", FileState.MISSING, FileState.PENDING)
    assert state.first_pending() == "d"
    job = lease(state, "3", "gpu", 5)
    assert job is not None and job.files == ("d", "e", "a")
    assert state.first_pending() is None


def test_first_pending_drops_stale_entries_once() -> None:
    state = RunState(LEASE)
    names = [f"f{index}" for index in range(1000)]
    for name in names:
        state.observe(name, complete=True)
    for name in names[:-1]:
        state.vanish(name)
    assert state.first_pending() == names[-1]
    # The stale names are gone from the queue, so asking again walks nothing.
    assert state.pending() == [names[-1]]
