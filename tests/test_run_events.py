"""A run's changes are events (facility/events.py), each told through one path to every
consumer: the log and the webhook. Runs of a real root are driven through random sequences of
changes (found, paused, resumed, given a priority, basecalled, finished, complete, sealed,
unsealed, moved, gone), and after each, what the consumers were told, folded in the order
they were told it, is what the facility holds."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bcmanager.core.logs import EVENT_KEY
from bcmanager.facility import facility as facility_module
from bcmanager.facility.events import (
    RunComplete,
    RunEvent,
    RunFinished,
    RunFound,
    RunGone,
    RunMoved,
    RunReported,
    RunSealed,
    RunUnsealed,
    line,
)
from bcmanager.facility.facility import Facility
from bcmanager.facility.notify import Done, EventKind, Notifier
from bcmanager.models import JobState
from conftest import Root

SEEDS = range(12)
STEPS = 40


@dataclass
class Told:
    """What the consumers said of one run, folded: as the facility should hold it."""

    priority: int
    paused: bool = False
    finished: bool = False
    completed: bool = False
    sealed: bool = False
    reports: int = 0
    finished_notices: int = 0
    complete_notices: int = 0


class Consumers(logging.Handler):
    """Both consumers' output, in the order it came: the log's run lines and the webhook's
    messages."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.said: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, EVENT_KEY, None)
        if event is not None:
            self.said.append(("log", event))

    def fold(self) -> dict[str, Told]:
        runs: dict[str, Told] = {}
        for kind, said in self.said:
            if kind == "webhook":
                if said["event"] == EventKind.FILE_QUARANTINED.value:
                    continue  # a job's end, not a run's: told by the raw folder's core
                told = runs[said["run"]]
                if said["event"] == EventKind.SEQUENCING_FINISHED.value:
                    told.finished_notices += 1
                    assert told.finished, said
                elif said["event"] == EventKind.RUN_COMPLETE.value:
                    told.complete_notices += 1
                    assert told.complete_notices == told.reports, said
                continue
            event, run = said["event"], str(said.get("run"))
            if event == "found":
                assert run not in runs, f"{run} found twice"
                runs[run] = Told(said["priority"])
            elif event == "moved":
                assert said["to"] not in runs
                runs[said["to"]] = runs.pop(run)
            elif event == "run gone":
                del runs[run]
            elif event in FOLDS:
                FOLDS[event](runs[run], said)
        return runs


def _finished(told: Told, said: dict[str, Any]) -> None:
    assert not told.finished, said
    told.finished = True


def _complete(told: Told, said: dict[str, Any]) -> None:
    assert told.finished and not told.completed, said
    told.completed = True


def _unsealed(told: Told, said: dict[str, Any]) -> None:
    told.completed = told.sealed = False


def _set(**values: Any) -> Any:
    def fold(told: Told, said: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(told, key, said[value] if isinstance(value, str) else value)

    return fold


def _reported(told: Told, said: dict[str, Any]) -> None:
    assert told.completed, said
    told.reports += 1


FOLDS = {
    "priority": _set(priority="priority"),
    "paused": _set(paused=True),
    "resumed": _set(paused=False),
    "finished": _finished,
    "complete": _complete,
    "report": _reported,
    "sealed": _set(sealed=True),
    "unsealed": _unsealed,
}


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Consumers]:
    """The log's lines and the webhook's messages, caught; the webhook takes each message."""
    caught = Consumers()

    class Webhook(Notifier):
        def send(self, data: bytes | None, done: Done | None = None) -> None:
            if data is not None:
                caught.said.append(("webhook", json.loads(data)))
                if done is not None:
                    asyncio.get_running_loop().call_soon(done, True)

    monkeypatch.setattr(facility_module, "Notifier", Webhook)
    logger = logging.getLogger(facility_module.__name__)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(caught)
    yield caught
    logger.removeHandler(caught)
    logger.setLevel(level)


class Driver:
    """A root whose runs an operator, engines and MinKNOW change at random."""

    def __init__(self, root: Root, facility: Facility, chance: random.Random) -> None:
        self.root = root
        self.facility = facility
        self.chance = chance
        self.made = 0

    def live(self) -> list[str]:
        return sorted(self.facility.registry.runs)

    def pick(self) -> str | None:
        runs = self.live()
        return self.chance.choice(runs) if runs else None

    async def new_run(self) -> None:
        self.made += 1
        folder = self.root.run(f"exp{self.made}", "sample", f"FAX{self.made:05d}")
        self.root.add(folder / "pod5", self.chance.randint(1, 3))

    async def more_files(self) -> None:
        if (path := self.pick()) is not None:
            self.root.add(self.root.input_dir / path / "pod5", 1)

    async def pause(self) -> None:
        if (path := self.pick()) is not None:
            self.facility.set_paused(path, self.chance.random() < 0.6)

    async def priority(self) -> None:
        if (path := self.pick()) is not None:
            self.facility.set_priority(path, self.chance.randint(-5, 5))

    async def basecall(self) -> None:
        for _ in range(self.chance.randint(1, 4)):
            batch = self.facility.assign("gpu1", self.chance.randint(1, 3)).model_dump()
            if not batch["batch"]:
                return
            self.root.basecall(batch)
            await self.facility.complete_async(batch["jobid"], JobState.DONE)

    async def fail(self) -> None:
        """A file fails alone: quarantined at once (one engine, BCM_QUARANTINE_ATTEMPTS=1)."""
        batch = self.facility.assign("gpu1", 1)
        if batch.batch:
            await self.facility.complete_async(batch.jobid, JobState.FAILED)

    async def retry(self) -> None:
        await self.facility.retry(None)

    async def summary(self) -> None:
        if (path := self.pick()) is not None:
            summary = self.root.input_dir / path / "final_summary_FAX0_0123abcd_89abcdef.txt"
            summary.write_text("instrument=X1\n")

    async def move(self) -> None:
        if (path := self.pick()) is not None:
            self.made += 1
            target = self.root.input_dir / f"moved{self.made}" / "sample" / Path(path).name
            target.parent.mkdir(parents=True)
            folder = self.root.input_dir / path
            folder.rename(target)
            reads = self.root.reads
            for raw in [raw for raw in reads if raw.is_relative_to(folder)]:
                reads[target / raw.relative_to(folder)] = reads.pop(raw)

    async def delete(self) -> None:
        if (path := self.pick()) is not None:
            shutil.rmtree(self.root.input_dir / path)

    async def step(self) -> str:
        actions = [
            self.new_run,
            self.more_files,
            self.pause,
            self.pause,
            self.priority,
            self.basecall,
            self.basecall,
            self.basecall,
            self.fail,
            self.retry,
            self.summary,
            self.summary,
            self.move,
            self.delete,
        ]
        action = self.chance.choice(actions)
        await action()
        await self.rescan()
        await self.settled()
        return action.__name__

    async def rescan(self) -> None:
        """What the rescans do, now: each raw folder's, then the root's."""
        for source in list(self.facility.registry.managers.values()):
            await source.rescan()
        await self.facility.watcher.rescan()

    async def settled(self) -> None:
        """Until each run's statistics are counted and each complete run is sealed."""
        deadline = time.monotonic() + 10

        def busy() -> list[str]:
            return [
                run.path
                for run in self.facility.registry.runs.values()
                if run.counting or (run.completed and not run.sealed_here)
            ]

        while busy():
            assert time.monotonic() < deadline, f"never settled: {busy()}"
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_consumer_is_told_what_the_facility_holds(
    root: Root, consumers: Consumers, seed: int
) -> None:
    chance = random.Random(seed)
    settings = root.settings(
        rescan_interval=3600,
        force_polling=True,
        notify_url="http://webhook.invalid/hook",
        quarantine_attempts=1,
    )
    facility = Facility(settings)
    await facility.start()
    driver = Driver(root, facility, chance)
    try:
        await driver.new_run()
        await driver.rescan()
        for _ in range(STEPS):
            done = await driver.step()
            told = consumers.fold()
            held = facility.registry.runs
            assert sorted(told) == sorted(held), done
            for path, run in held.items():
                said = told[path]
                assert (said.priority, said.paused) == (run.priority, run.paused), (done, path)
                assert (said.finished, said.completed) == (run.finished, run.completed), path
                assert said.sealed == run.sealed_here, (done, path)
                assert said.finished_notices == int(run.finished), path
                assert said.complete_notices == said.reports >= int(run.sealed_here), path
    finally:
        await facility.stop()


def test_each_event_is_one_line_named_for_its_run() -> None:
    """Every kind of change has its line; the run's path is its first fact."""
    events: list[RunEvent] = [
        RunFound("a", 3),
        RunFinished("a", "/x/final_summary.txt"),
        RunComplete("a"),
        RunReported("a", "/out/a/report.html", b"{}"),
        RunSealed("a"),
        RunUnsealed("a", "new raw files"),
        RunMoved("a", "b"),
        RunGone("b"),
    ]
    names = [line(event)[0] for event in events]
    assert names == [
        "found",
        "finished",
        "complete",
        "report",
        "sealed",
        "unsealed",
        "moved",
        "run gone",
    ]
    assert all(next(iter(line(event)[1])) == "run" for event in events)
