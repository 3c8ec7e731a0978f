"""Figure 7: one pool of engines serving a whole sequencer, scheduled on a virtual clock.

A deterministic simulation, no sleeps, threads or HTTP: runs start over several hours, each
writes raw files (40 MB to 20 GB, each run its own typical size) into one or two raw folders
for hours, then finishes; one run is set at a higher priority. Engines of mixed speed (1x to
3x, in bytes per second) ask for work whenever they are idle (the one idle longest first), and
a batch takes its bytes over the engine's speed. The same input goes through two policies,
each driving the real ``RunState``:

- **bcmanager**: one ``RunState`` per raw folder, ``scheduler.choose`` and
  ``scheduler.batch_bytes`` on every request, ``RunState.lease`` by bytes.
- **the original**: one queue across everything, oldest first, 10 files per batch whatever
  their size, no priority (it also mixes runs in a batch, which Dorado may not survive).

Measured for both:

- the engines' **busy fraction while work is pending** (complete files not leased). Engines
  ask the moment they idle, so only a policy that holds work back (no batch for an engine
  while a file waits) loses anything here; the agent's poll interval when it got nothing
  would cost both policies alike and is left out. Target >= 0.99.
- **lag**, a run's age of its oldest pending file, sampled every ``SAMPLE`` seconds from the
  run's first file to its last file's end: the worst run's p99 against the mean of all
  samples, and the high-priority run's p99.
- the **drain**: from the last file's arrival to the last batch's end, against the least any
  policy could take, known from the input alone. Every file needs its own bytes over the
  fastest speed after it arrives, and from any instant t on, the bytes arriving from t take
  the whole pool (the sum of speeds) at least: the end is at least max over t of
  (t + bytes arriving from t on / total speed). At the first arrival that is total work over
  total speed, at the last one the last file's own time; the bound is the largest of all of
  them. With the pool behind when sequencing ends, as here, the backlog sets it; with the
  pool keeping up, one file's time on the fastest engine does, and then the engine that
  happens to ask decides the drain (the policy does not weigh engine speeds). Target:
  within 1.10x.

Not modelled: the basecaller's start-up per batch (what makes very small batches costly in
practice), failures and lease expiries (tests/test_state.py covers those).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import shlex
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from _common import Row, machine, percentile, print_table, progress

from bcmanager.core.state import RunState
from bcmanager.facility.scheduler import Queue, batch_bytes, choose

MB = 1_000_000
GB = 1_000_000_000
SMALLEST, LARGEST = 40 * MB, 20 * GB
SAMPLE = 60.0  # seconds between two lag samples
LEASE = 1e12  # no lease runs out here: no keepalives are simulated
ORIGINAL_BATCH = 10  # files per batch, the original's fixed size
ENGINE_CAP = 100  # files per batch an engine asks for; bytes set the batch under bcmanager
BUSY_TARGET = 0.99
DRAIN_TARGET = 1.10
SEED = 1


@dataclass(frozen=True, slots=True)
class Scenario:
    """The shape of a simulated facility; ``plan`` draws one instance of it from the seed."""

    runs: int = 24
    engines: int = 16
    seed: int = SEED
    start_spread: float = 6 * 3600.0  # runs start at random within this many seconds
    shortest: float = 8 * 3600.0  # each run writes for a random time between these
    longest: float = 12 * 3600.0
    run_rate: tuple[float, float] = (15 * MB, 30 * MB)  # bytes per second a run writes
    slowest: float = 10 * MB  # bytes per second of a 1x engine
    batch_bytes: int = 10 * GB  # each run's byte budget per batch
    high_priority_run: int = 5  # the run set at priority 1 (the others are at 0)

    @classmethod
    def quick(cls, seed: int = SEED) -> Scenario:
        """A small instance, seconds to run: what the test holds to the targets."""
        return cls(
            runs=6,
            engines=3,
            seed=seed,
            start_spread=3600.0,
            shortest=2 * 3600.0,
            longest=3 * 3600.0,
            high_priority_run=2,
        )


@dataclass(frozen=True, slots=True)
class RawFile:
    arrival: float
    name: str
    folder: str  # the raw folder, relative to the root
    run: int
    size: int


@dataclass(frozen=True, slots=True)
class Plan:
    """One drawn instance: every file in order of arrival, the runs and the engines."""

    files: tuple[RawFile, ...]
    runs: tuple[str, ...]  # each run's path
    priorities: tuple[int, ...]
    speeds: tuple[float, ...]  # bytes per second of each engine
    batch_bytes: int


def plan(scenario: Scenario) -> Plan:
    rng = random.Random(scenario.seed)
    files: list[RawFile] = []
    runs = []
    for run in range(scenario.runs):
        path = f"exp{run // 8}/sample{run}/20260101_0000_{run:02d}_PAX{run:05d}_cafe"
        folders = [f"{path}/pod5"] if run % 3 else [f"{path}/pod5_pass", f"{path}/pod5_fail"]
        start = rng.uniform(0, scenario.start_spread)
        end = start + rng.uniform(scenario.shortest, scenario.longest)
        rate = rng.uniform(*scenario.run_rate)
        typical = math.exp(rng.uniform(math.log(SMALLEST), math.log(LARGEST)))
        now, index = start, 0
        while True:
            size = int(min(LARGEST, max(SMALLEST, typical * rng.uniform(0.8, 1.2))))
            now += size / rate
            if now > end and index:
                break
            folder = folders[0] if len(folders) == 1 or rng.random() < 0.85 else folders[1]
            files.append(RawFile(now, f"PAX{run:05d}_{index}.pod5", folder, run, size))
            index += 1
        runs.append(path)
    files.sort(key=lambda raw: (raw.arrival, raw.name))
    last = max(scenario.engines - 1, 1)
    speeds = tuple(scenario.slowest * (1 + 2 * e / last) for e in range(scenario.engines))
    priorities = tuple(int(run == scenario.high_priority_run) for run in range(scenario.runs))
    return Plan(tuple(files), tuple(runs), priorities, speeds, scenario.batch_bytes)


def earliest_end(plan: Plan) -> float:
    """The least time at which any policy could have every file basecalled (module docstring)."""
    total_speed, fastest = sum(plan.speeds), max(plan.speeds)
    bound, later = 0.0, 0
    for raw in reversed(plan.files):
        later += raw.size
        bound = max(bound, raw.arrival + later / total_speed, raw.arrival + raw.size / fastest)
    return bound


class Policy(Protocol):
    """What the simulation asks of a scheduling policy."""

    def arrive(self, raw: RawFile) -> None: ...

    def finish_run(self, run: int) -> None: ...

    def lease(self, jobid: str, now: float) -> tuple[RawFile, ...]: ...

    def done(self, batch: tuple[RawFile, ...]) -> None: ...


@dataclass(slots=True)
class Folder:
    """One raw folder under bcmanager: its own state machine and what the facility knows."""

    key: str
    run: int
    state: RunState = field(default_factory=lambda: RunState(LEASE))
    sizes: dict[str, int] = field(default_factory=dict)
    files: dict[str, RawFile] = field(default_factory=dict)


class Facility:
    """bcmanager's policy: a queue per raw folder, chosen and sized by ``scheduler``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.folders: dict[str, Folder] = {}
        self.run_pending = [0] * len(plan.runs)
        self.finished = [False] * len(plan.runs)

    def arrive(self, raw: RawFile) -> None:
        folder = self.folders.setdefault(raw.folder, Folder(raw.folder, raw.run))
        folder.state.observe(raw.name, complete=True)
        folder.sizes[raw.name] = raw.size
        folder.files[raw.name] = raw
        self.run_pending[raw.run] += raw.size

    def finish_run(self, run: int) -> None:
        self.finished[run] = True

    def lease(self, jobid: str, now: float) -> tuple[RawFile, ...]:
        queues = []
        for folder in self.folders.values():
            oldest = folder.state.first_pending()
            if oldest is None:
                continue
            run = folder.run
            queues.append(
                Queue(
                    key=folder.key,
                    priority=self.plan.priorities[run],
                    waited=now - folder.files[oldest].arrival,
                    run_pending_bytes=self.run_pending[run],
                    run_finished=self.finished[run],
                    batch_bytes=self.plan.batch_bytes,
                )
            )
        chosen = choose(queues, len(self.plan.speeds))
        if chosen is None:
            return ()
        folder = self.folders[chosen.key]
        budget = batch_bytes(chosen, len(self.plan.speeds))
        leased = folder.state.lease(
            jobid, "gpu", ENGINE_CAP, now, sizes=folder.sizes, max_bytes=budget
        )
        assert leased is not None, "a folder with a pending file leased nothing"
        batch = tuple(folder.files[name] for name in leased.job.files)
        self.run_pending[folder.run] -= sum(raw.size for raw in batch)
        return batch

    def done(self, batch: tuple[RawFile, ...]) -> None:
        for raw in batch:
            folder = self.folders[raw.folder]
            del folder.sizes[raw.name], folder.files[raw.name]


class Original:
    """The original's policy: one queue of every file, oldest first, 10 files a batch."""

    def __init__(self) -> None:
        self.state = RunState(LEASE)
        self.files: dict[str, RawFile] = {}

    def arrive(self, raw: RawFile) -> None:
        self.state.observe(raw.name, complete=True)
        self.files[raw.name] = raw

    def finish_run(self, run: int) -> None:
        """The original knows nothing of runs."""

    def lease(self, jobid: str, now: float) -> tuple[RawFile, ...]:
        leased = self.state.lease(jobid, "gpu", ORIGINAL_BATCH, now)
        return () if leased is None else tuple(self.files[name] for name in leased.job.files)

    def done(self, batch: tuple[RawFile, ...]) -> None:
        for raw in batch:
            del self.files[raw.name]


@dataclass(frozen=True, slots=True)
class Outcome:
    busy: float  # engines' busy fraction while files were pending
    lag_p99: tuple[float, ...]  # each run's p99 lag
    lag_mean: float  # mean lag over every sample of every run
    end: float  # the last batch's end
    last_arrival: float
    batches: int
    basecalled: int  # files in all batches: each file once


# Event kinds, in the order they are handled at one instant: batches end before files arrive,
# so that an engine freed then asks at once, and lag is sampled last.
FREE, ARRIVE, SAMPLE_LAG = range(3)


class Simulation:
    """One policy driven through one plan on a virtual clock: a heap of timed events."""

    def __init__(self, plan: Plan, policy: Policy) -> None:
        self.plan, self.policy = plan, policy
        self.events: list[tuple[float, int, int, int]] = []  # (time, kind, sequence, what)
        self.sequence = 0
        runs = len(plan.runs)
        self.first = [math.inf] * runs  # each run's first arrival
        self.total = [0] * runs  # each run's files
        for raw in plan.files:
            self.first[raw.run] = min(self.first[raw.run], raw.arrival)
            self.total[raw.run] += 1
        self.arrived = [0] * runs
        self.unfinished = [0] * runs  # arrived and not basecalled yet
        self.pending: list[deque[RawFile]] = [deque() for _ in range(runs)]  # by arrival
        self.leased: set[str] = set()  # leased and still at a place of ``pending``
        self.jobs: dict[int, tuple[RawFile, ...]] = {}  # engine: its batch
        self.idle = deque(range(len(plan.speeds)))  # the engine idle longest asks first
        self.pending_files = self.batches = self.basecalled = 0
        self.busy_time = self.pending_time = 0.0
        self.samples: list[list[float]] = [[] for _ in range(runs)]
        self.clock = self.end = 0.0

    def at(self, time: float, kind: int, what: int) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (time, kind, self.sequence, what))

    def run(self) -> Outcome:
        for index, raw in enumerate(self.plan.files):
            self.at(raw.arrival, ARRIVE, index)
        self.at(0.0, SAMPLE_LAG, 0)
        left = len(self.plan.files)
        while left:
            time, kind, _, what = heapq.heappop(self.events)
            if self.pending_files:
                self.pending_time += (time - self.clock) * len(self.plan.speeds)
                self.busy_time += (time - self.clock) * (len(self.plan.speeds) - len(self.idle))
            self.clock = time
            if kind == FREE:
                left -= self.free(what)
            elif kind == ARRIVE:
                self.arrive(self.plan.files[what])
            else:
                self.sample()
            while self.idle and self.pending_files and self.ask(self.idle[0]):
                self.idle.popleft()
        every = [lag for run in self.samples for lag in run]
        return Outcome(
            busy=self.busy_time / self.pending_time if self.pending_time else 1.0,
            lag_p99=tuple(percentile(run, 99) if run else 0.0 for run in self.samples),
            lag_mean=sum(every) / len(every),
            end=self.end,
            last_arrival=self.plan.files[-1].arrival,
            batches=self.batches,
            basecalled=self.basecalled,
        )

    def arrive(self, raw: RawFile) -> None:
        self.policy.arrive(raw)
        self.pending[raw.run].append(raw)
        self.pending_files += 1
        self.unfinished[raw.run] += 1
        self.arrived[raw.run] += 1
        if self.arrived[raw.run] == self.total[raw.run]:
            self.policy.finish_run(raw.run)

    def free(self, engine: int) -> int:
        """The engine's batch ended: it is idle, and asks. Returns the files it held."""
        batch = self.jobs.pop(engine)
        self.policy.done(batch)
        for raw in batch:
            self.unfinished[raw.run] -= 1
        self.end = self.clock
        self.idle.append(engine)
        return len(batch)

    def ask(self, engine: int) -> bool:
        """The engine asks for work; whether it got some."""
        batch = self.policy.lease(str(self.batches), self.clock)
        if not batch:
            return False
        self.batches += 1
        self.basecalled += len(batch)
        self.pending_files -= len(batch)
        self.leased.update(raw.name for raw in batch)
        self.jobs[engine] = batch
        took = sum(raw.size for raw in batch) / self.plan.speeds[engine]
        self.at(self.clock + took, FREE, engine)
        return True

    def sample(self) -> None:
        """Each live run's lag now: the age of its oldest pending file (0 with none)."""
        for run, queue in enumerate(self.pending):
            if self.first[run] > self.clock:
                continue
            if self.arrived[run] == self.total[run] and not self.unfinished[run]:
                continue
            while queue and queue[0].name in self.leased:
                self.leased.discard(queue.popleft().name)
            self.samples[run].append(self.clock - queue[0].arrival if queue else 0.0)
        self.at(self.clock + SAMPLE, SAMPLE_LAG, 0)


def simulate(plan: Plan, policy: Policy) -> Outcome:
    """Drive ``policy`` through ``plan`` on a virtual clock."""
    return Simulation(plan, policy).run()


@dataclass(frozen=True, slots=True)
class Comparison:
    plan: Plan
    ours: Outcome
    original: Outcome
    earliest_end: float

    def drain(self, outcome: Outcome) -> float:
        """The outcome's drain over the least possible one."""
        return (outcome.end - outcome.last_arrival) / (self.earliest_end - outcome.last_arrival)

    def high_priority_lag(self, outcome: Outcome) -> float:
        return outcome.lag_p99[self.plan.priorities.index(max(self.plan.priorities))]


def compare(scenario: Scenario) -> Comparison:
    drawn = plan(scenario)
    return Comparison(
        drawn,
        simulate(drawn, Facility(drawn)),
        simulate(drawn, Original()),
        earliest_end(drawn),
    )


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def rows(result: Comparison, label: str) -> list[Row]:
    ours, original = result.ours, result.original
    worst = (max(ours.lag_p99), max(original.lag_p99))
    high = (result.high_priority_lag(ours), result.high_priority_lag(original))
    ideal = result.earliest_end - ours.last_arrival

    def ratio(mine: float, theirs: float) -> float | None:
        return mine / theirs if theirs else None

    return [
        Row(f"busy fraction while files are pending, {label}", f"{ours.busy:.4f}",
            f"{original.busy:.4f}", ratio(original.busy, ours.busy), f">= {BUSY_TARGET}",
            ours.busy >= BUSY_TARGET),
        Row("worst run's lag p99 / mean of all runs", f"{hours(worst[0])} / {hours(ours.lag_mean)}",
            f"{hours(worst[1])} / {hours(original.lag_mean)}", ratio(worst[0], worst[1]), "",
            None),
        Row("high-priority run's lag p99", hours(high[0]), hours(high[1]), ratio(*high), "",
            None),
        Row(f"last arrival to last end (ideal {hours(ideal)})",
            f"{hours(ours.end - ours.last_arrival)} = {result.drain(ours):.2f}x",
            f"{hours(original.end - original.last_arrival)} = {result.drain(original):.2f}x",
            ratio(result.drain(ours), result.drain(original)), f"<= {DRAIN_TARGET}x",
            result.drain(ours) <= DRAIN_TARGET),
    ]  # fmt: skip


def describe(scenario: Scenario, drawn: Plan) -> str:
    work = sum(raw.size for raw in drawn.files)
    return (
        f"{scenario.runs} runs, {len(drawn.files):,} raw files, {work / 1e12:.1f} TB, "
        f"{scenario.engines} engines ({sum(drawn.speeds) / MB:.0f} MB/s in all), "
        f"last arrival at {hours(drawn.files[-1].arrival)}, seed {scenario.seed}"
    )


def measure(full: bool, workdir: Path) -> Sequence[Row]:
    """For bench/run_all.py: the full scenario either way (it takes seconds, not minutes)."""
    scenario = Scenario()
    result = compare(scenario)
    progress(describe(scenario, result.plan))
    return rows(result, f"{scenario.runs} runs, {scenario.engines} engines, seed {SEED}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED, help=f"default {SEED}")
    parser.add_argument("--quick", action="store_true", help="the small instance the test runs")
    args = parser.parse_args()
    scenario = Scenario.quick(args.seed) if args.quick else Scenario(seed=args.seed)
    print(shlex.join([Path(sys.executable).name, *sys.argv]))
    print(machine())
    result = compare(scenario)
    print(describe(scenario, result.plan))
    print(f"batches: bcmanager {result.ours.batches:,}, the original {result.original.batches:,}")
    print_table(rows(result, f"seed {scenario.seed}"))


if __name__ == "__main__":
    main()
