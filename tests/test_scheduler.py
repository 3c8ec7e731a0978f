"""The scheduling policy alone (made-up facts, no clock), and the simulation that holds it
to its targets (bench/schedule.py, a small instance)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from bcmanager.facility.scheduler import Queue, batch_bytes, choose, in_tail

GB = 1_000_000_000
ENGINES = 16


def queue(key: str, **facts: object) -> Queue:
    base = Queue(
        key=key,
        priority=0,
        waited=0.0,
        run_pending_bytes=100 * GB,
        run_finished=False,
        batch_bytes=10 * GB,
    )
    return replace(base, **facts)  # type: ignore[arg-type]


def test_nothing_offered_nothing_chosen() -> None:
    assert choose([], ENGINES) is None


def test_the_longest_wait_goes_first_among_equals() -> None:
    queues = [queue("a", waited=60), queue("b", waited=600), queue("c", waited=6)]
    chosen = choose(queues, ENGINES)
    assert chosen is not None and chosen.key == "b"


def test_higher_priority_goes_first_however_young() -> None:
    old = queue("old", waited=86_400)
    urgent = queue("urgent", priority=1, waited=1)
    chosen = choose([old, urgent], ENGINES)
    assert chosen is not None and chosen.key == "urgent"
    # A run in its tail does not pass a run of higher priority either.
    tail = queue("tail", run_finished=True, run_pending_bytes=GB, waited=86_400)
    chosen = choose([tail, urgent], ENGINES)
    assert chosen is not None and chosen.key == "urgent"


def test_a_finished_run_with_little_left_goes_first_among_equals() -> None:
    waiting = queue("busy-run", waited=7_200)
    tail = queue("ending-run", waited=60, run_finished=True, run_pending_bytes=20 * GB)
    chosen = choose([waiting, tail], ENGINES)
    assert chosen is not None and chosen.key == "ending-run"
    # Finished, but with more than one batch per engine left: it waits its turn.
    big = replace(tail, run_pending_bytes=10 * GB * ENGINES)
    chosen = choose([waiting, big], ENGINES)
    assert chosen is not None and chosen.key == "busy-run"


def test_equal_facts_choose_by_key_whatever_the_order() -> None:
    queues = [queue("run2/pod5", waited=5), queue("run1/pod5", waited=5)]
    first = choose(queues, ENGINES)
    again = choose(reversed(queues), ENGINES)
    assert first is not None and again is not None and first.key == again.key == "run1/pod5"


def test_a_batch_holds_the_runs_budget_while_it_sequences() -> None:
    assert batch_bytes(queue("a", run_pending_bytes=GB), ENGINES) == 10 * GB
    # Finished with plenty left: still the run's budget.
    plenty = queue("a", run_finished=True, run_pending_bytes=10 * GB * ENGINES)
    assert not in_tail(plenty, ENGINES)
    assert batch_bytes(plenty, ENGINES) == 10 * GB


def test_a_finished_runs_tail_is_spread_over_the_engines_and_shrinks() -> None:
    pending = 40 * GB
    budgets = []
    while pending > 0:
        tail = queue("a", run_finished=True, run_pending_bytes=pending)
        budget = batch_bytes(tail, ENGINES)
        budgets.append(budget)
        pending -= budget
    assert budgets[0] == 40 * GB // ENGINES
    assert budgets == sorted(budgets, reverse=True) and budgets[-1] == 1
    # A nonsense count of engines counts as one: the rest goes in one batch.
    assert batch_bytes(queue("a", run_finished=True, run_pending_bytes=5 * GB), 0) == 5 * GB


@pytest.fixture
def simulation(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "bench"))
    import schedule

    return schedule


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_simulated_facility_meets_the_targets(simulation: ModuleType, seed: int) -> None:
    """A small facility (6 runs, 3 engines, hours of virtual time) through both policies: the
    engines never idle while files wait, the high-priority run's lag stays within a few
    batches while the original makes it wait like the rest, and the last batch ends within
    10% of the least possible drain."""
    result = simulation.compare(simulation.Scenario.quick(seed))
    ours, original = result.ours, result.original
    assert ours.busy >= simulation.BUSY_TARGET
    assert result.drain(ours) <= simulation.DRAIN_TARGET
    assert result.high_priority_lag(ours) < 0.1 * result.high_priority_lag(original)
    # Every file was basecalled once by each policy, and the bound holds for both.
    assert ours.basecalled == original.basecalled == len(result.plan.files)
    assert min(ours.end, original.end) >= result.earliest_end


def test_the_lower_bound_is_the_larger_of_work_and_the_last_file(
    simulation: ModuleType,
) -> None:
    raw = simulation.RawFile
    plan = simulation.Plan(
        files=(
            raw(0.0, "a", "r/pod5", 0, 90),
            raw(0.0, "b", "r/pod5", 0, 90),
            raw(10.0, "c", "r/pod5", 0, 60),
        ),
        runs=("r",),
        priorities=(0,),
        speeds=(1.0, 2.0),
        batch_bytes=1_000,
    )
    # All work over all speed: 240 / 3 = 80 s; a file alone on the fastest: 45 s, 10 + 30 s.
    assert simulation.earliest_end(plan) == 80.0
    late = replace(plan, files=(*plan.files[:2], raw(200.0, "c", "r/pod5", 0, 60)))
    assert simulation.earliest_end(late) == 230.0
    # Between the two: what arrives from an instant on needs the whole pool from then.
    burst = replace(plan, files=(*plan.files[:2], raw(50.0, "c", "r/pod5", 0, 300)))
    assert simulation.earliest_end(burst) == 50.0 + 300 / 2
