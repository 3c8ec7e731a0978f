"""Power loss: an answer an engine got survives it (every commit rename is fsynced first).

A power cut loses every change to a folder that was not fsynced after it. ``PowerCutOps`` plays
that at the ``DiskOps`` seam: each change is journaled with the folder whose entries it changes
and how to undo it; an fsync of a folder makes that folder's changes so far durable. At a random
disk call the power goes: every change not yet durable is undone, newest first (a removal is
only played, by moving the entry into a stash, so that it can come back). Then a new manager
rebuilds the run from the folders alone, and everything the engines were told must hold: a
lease they got is still theirs (or ended), a DONE they were answered is done with its reads
in pass/, a FAILED is failed, and no file is in two states or lost.

``BCM_POWER_CUTS`` (default 40) sets how many random runs; ``make soak`` runs more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bcmanager.cli.check import Severity, inspect
from bcmanager.core.folders import DiskOps, RunFolders
from bcmanager.core.jobs import FileState
from bcmanager.core.manager import Manager
from bcmanager.models import JobState
from bcmanager.paths import RunPaths
from conftest import Clock, Run

CUTS = int(os.environ.get("BCM_POWER_CUTS") or 40)


class PowerCut(BaseException):
    """The power went at a disk call: nothing after it runs, no handler catches it."""


@dataclass
class Change:
    folder: Path  # whose entries it changed: durable once that folder is fsynced
    undo: Callable[[], None]


@dataclass
class PowerCutOps(DiskOps):
    """Journals each change until its folder is fsynced; ``cut`` undoes the rest."""

    stash: Path
    countdown: int | None = None
    journal: list[Change] = field(default_factory=list)
    stashed: int = 0

    def _step(self) -> None:
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown < 0:
                self.countdown = None
                raise PowerCut

    def _away(self, path: Path) -> Callable[[], None]:
        """Move ``path`` into the stash; returns how to put it back."""
        self.stashed += 1
        kept = self.stash / str(self.stashed)
        os.rename(path, kept)
        return lambda: os.rename(kept, path)

    def mkdir(self, path: Path) -> None:
        self._step()
        super().mkdir(path)
        self.journal.append(Change(path.parent, lambda: shutil.rmtree(path)))

    def symlink(self, target: str, link: Path) -> None:
        self._step()
        super().symlink(target, link)
        self.journal.append(Change(link.parent, lambda: os.unlink(link)))

    def rename(self, source: Path, destination: Path) -> None:
        self._step()
        super().rename(source, destination)
        self.journal.append(Change(destination.parent, lambda: os.rename(destination, source)))

    def copy(self, source: Path, destination: Path) -> None:
        self._step()
        super().copy(source, destination)
        self.journal.append(Change(destination.parent, lambda: os.unlink(destination)))

    def unlink(self, path: Path) -> None:
        self._step()
        self.journal.append(Change(path.parent, self._away(path)))

    def rmtree(self, path: Path) -> None:
        self._step()
        self.journal.append(Change(path.parent, self._away(path)))

    def rmdir(self, path: Path) -> None:
        self._step()
        self.journal.append(Change(path.parent, self._away(path)))

    def fsync(self, path: Path) -> None:
        self._step()
        super().fsync(path)
        self.journal = [change for change in self.journal if change.folder != path]

    def cut(self) -> int:
        """The power goes: undo every change not yet durable, newest first."""
        lost = len(self.journal)
        for change in reversed(self.journal):
            change.undo()
        self.journal.clear()
        return lost


@dataclass
class Told:
    """What the engines were answered, which a power cut must not take back."""

    leased: dict[str, tuple[str, ...]] = field(default_factory=dict)
    done: dict[str, tuple[str, ...]] = field(default_factory=dict)
    failed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)  # stopped, expired or empty: files free again
    # Jobs whose end was under way when the power went: still leased, or ended, either is right.
    ending: set[str] = field(default_factory=set)


def boot(run: Run, ops: PowerCutOps, clock: Clock) -> Manager:
    manager = Manager(
        run.settings(report_back_period=10, force_polling=True),
        RunFolders(RunPaths(run.input_dir, run.output_dir), ops),
        clock=clock,
    )

    async def start() -> None:
        await manager.start()
        while not manager.ready:
            await asyncio.sleep(0.001)
        await manager.stop()  # the test drives it

    asyncio.run(start())
    return manager


def play(manager: Manager, run: Run, told: Told, clock: Clock, rng: random.Random) -> None:
    """Random engine calls until the power goes (PowerCut) or the run is drained."""
    for _ in range(60):
        live = [job.jobid for job in manager.state.live_jobs()]
        action = rng.choice(["assign", "assign", "end", "end", "expire"] if live else ["assign"])
        if action == "assign":
            batch = manager.assign(f"gpu{rng.randrange(3)}", rng.randint(1, 3))
            if batch.batch_size:
                told.leased[batch.jobid] = tuple(batch.batch)
        elif action == "end":
            jobid = rng.choice(live)
            outcome = rng.choice([JobState.DONE, JobState.DONE, JobState.FAILED, JobState.STOPPED])
            if outcome is JobState.DONE and rng.random() < 0.85:
                run.basecall(_output(manager, jobid), told.leased[jobid])
            told.ending = {jobid}
            manager.complete(jobid, outcome)
            told.ending = set()
            ended = manager.state.job(jobid).state
            if ended is JobState.DONE:
                told.done[jobid] = told.leased.pop(jobid)
            elif ended is JobState.FAILED:
                told.failed[jobid] = told.leased.pop(jobid)
            else:
                told.leased.pop(jobid)
                told.ended.add(jobid)
        else:
            clock.now += 11
            told.ending = set(live)
            manager.reap()
            told.ending = set()
            for jobid in list(told.leased):
                if manager.state.job(jobid).state is JobState.EXPIRED:
                    told.leased.pop(jobid)
                    told.ended.add(jobid)
        if not manager.state.pending_count() and not manager.state.live_jobs():
            return


def _output(manager: Manager, jobid: str) -> str:
    job = manager.state.job(jobid)
    return f"TMPOUTPUT_{jobid}_{job.engine}"


def verify(run: Run, manager: Manager, told: Told) -> None:
    """Everything the engines were told holds after the power cut and the rebuild."""
    for jobid, files in told.leased.items():
        if jobid in told.ending:
            continue
        job = manager.state.job(jobid)
        assert job.live and set(job.files) == set(files), f"lease {jobid} lost"
    for jobid, files in told.done.items():
        assert manager.state.job(jobid).state is JobState.DONE, f"DONE of {jobid} lost"
        merged = {path.name for path in (run.output_dir / "pass").iterdir() if jobid in path.name}
        assert merged == {f"job_id_{jobid}_{name[:-5]}.fastq" for name in files}
    for jobid in told.failed:
        assert manager.state.job(jobid).state is JobState.FAILED, f"FAILED of {jobid} lost"
    for files in told.done.values():
        assert all(manager.state.file_state(name) is FileState.DONE for name in files)
    report = inspect(manager.paths)
    assert [str(p) for p in report.problems if p.severity is Severity.BROKEN] == []
    assert sum(manager.state.counts().values()) == len(run.reads)


@pytest.mark.parametrize("seed", range(CUTS))
def test_a_power_cut_at_any_disk_call_keeps_every_answer(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    run = Run(tmp_path / "input", tmp_path / "output")
    run.input_dir.mkdir()
    run.add_many(rng.randint(3, 8))
    stash = tmp_path / "stash"
    stash.mkdir()
    ops, clock, told = PowerCutOps(stash), Clock(), Told()
    manager = boot(run, ops, clock)
    ops.journal.clear()  # what start-up made is not what this test is about
    ops.countdown = rng.randrange(60)
    with contextlib.suppress(PowerCut):
        play(manager, run, told, clock, rng)
    ops.countdown = None
    ops.cut()
    verify(run, boot(run, PowerCutOps(stash), clock), told)
