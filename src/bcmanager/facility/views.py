"""What people and watchdogs ask of the runs: the snapshot of every run (/status), each run's
line in the runs table, the totals, the facility's phase and its problems.

Each is O(raw folders + live jobs + listed engines), never O(files). The one that must be
O(runs), the snapshot of every run, which the page polls, is made in slices of ``SLICE`` runs
and raw folders with the event loop free between them (docs/benchmarks.md, figure 10).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from bcmanager.core.benching import Benching
from bcmanager.core.jobs import FileState, Job
from bcmanager.core.manager import QUARANTINED_SHOWN, Manager, snapshot
from bcmanager.core.progress import Progress
from bcmanager.facility import discovery
from bcmanager.facility.discovery import HERE
from bcmanager.facility.runs import Registry, Run
from bcmanager.models import (
    FileBytes,
    FileCounts,
    QuarantinedFile,
    RunEntry,
    RunPhase,
    RunStatus,
)

SLICE = 10
"""Runs, or raw folders, that the snapshot of every run takes in before it lets the event loop
serve another request: 2 to 4 ms of work (docs/benchmarks.md, figure 10)."""

STATE_NAMES = tuple(state.value for state in FileState)

_Item = TypeVar("_Item")
_Done = TypeVar("_Done")


class Views:
    """Reads the runs of ``registry``; changes nothing."""

    def __init__(
        self,
        registry: Registry,
        clock: Callable[[], float],
        benching: Benching,
        ready: Callable[[], bool],
        tasks: dict[str, asyncio.Task[None]],
    ) -> None:
        """``tasks``: the facility's background tasks, each a problem once it stopped."""
        self.registry = registry
        self.clock = clock
        self.benching = benching
        self.ready = ready
        self.tasks = tasks

    def status(self, path: str | None = None) -> RunStatus:
        """The snapshot of every run together, or of run ``path`` alone, with the runs table.
        O(raw folders + live jobs + listed engines), never O(files)."""
        now = self.clock()
        runs = list(self.registry.runs.values()) if path is None else [self.registry.run(path)]
        managers = [(key, manager) for run in runs for key, manager in run.managers.items()]
        totals = _Totals()
        entries = [totals.add(self.entry(run, now)) for run in sorted(runs, key=_path)]
        for key, manager in managers:
            totals.take(key, manager)
        progress = _progress([manager for _, manager in managers], now)
        return self._snapshot(path, runs, progress, totals, now, entries)

    async def status_async(
        self, path: str | None, line: Callable[[RunEntry], _Done]
    ) -> tuple[RunStatus, list[_Done]]:
        """``status`` for the HTTP layer: its runs apart, each handed to ``line`` (which
        serialises it) as soon as it is made. The snapshot of every run is O(raw folders): a
        root of 1,000 runs held the loop 200 ms, so it is built in slices of ``SLICE`` runs
        and raw folders with the loop free between them. And its lines' objects die young:
        kept to the end, they outlived the collector's young generations and set off full
        collections that held the loop 35 to 55 ms. Each run's line is that run's at one
        instant; the totals are the sum of the lines."""
        if path is not None:
            snapshot = self.status(path)
            return snapshot.model_copy(update={"runs": []}), [line(each) for each in snapshot.runs]
        now = self.clock()
        runs = list(self.registry.runs.values())
        totals = _Totals()
        lines = await _in_slices(
            sorted(runs, key=_path), lambda run: line(totals.add(self.entry(run)))
        )
        progress = Progress(now)

        def take(key: str, manager: Manager) -> None:
            totals.take(key, manager)
            progress.absorb(manager.progress_so_far(), now)

        await _in_slices(list(self.registry.managers.items()), lambda each: take(*each))
        return self._snapshot(None, runs, progress, totals, now, []), lines

    def _snapshot(
        self,
        path: str | None,
        runs: list[Run],
        progress: Progress,
        totals: _Totals,
        now: float,
        entries: list[RunEntry],
    ) -> RunStatus:
        """The snapshot of ``runs`` (every run when ``path`` is None) from their ``totals``,
        with the lines ``entries``."""
        # The summary of the one run shown; every run's own is in its entry.
        summary = runs[0].final_summary if len(runs) == 1 else None
        return snapshot(
            progress,
            now,
            input_dir=str(runs[0].folder if path is not None else self.registry.input_root),
            output_dir=str(runs[0].output if path is not None else self.registry.output_root),
            ready=self.ready(),
            phase=_overall_phase(totals.phases),
            counts={FileState(name): count for name, count in totals.files.items()},
            sizes={FileState(name): size for name, size in totals.bytes.items()},
            jobs=totals.jobs,
            quarantined=sorted(totals.quarantined, key=lambda each: each.file)[:QUARANTINED_SHOWN],
            benched=self.benching.all_benched(now),
            job_problems=totals.job_problems,
            final_summary=summary,
            runs=entries,
        )

    def entry(self, run: Run, now: float | None = None) -> RunEntry:
        """One run's line in the runs table."""
        now = self.clock() if now is None else now
        counts = run.counts()
        progress = _progress(list(run.managers.values()), now)
        drain = progress.drain(now, counts)
        return RunEntry(
            path=run.path,
            phase=run.phase(),
            priority=run.priority,
            paused=run.paused,
            sealed=run.seal is not None or run.sealed_here,
            raw_folders=len(run.managers) if run.seal is None else len(run.seal.raw_folders),
            output_dir=str(run.output),
            files=FileCounts(**{state.value: count for state, count in counts.items()}),
            bytes=FileBytes(**{state.value: size for state, size in run.bytes().items()}),
            lag_seconds=None if (waited := run.waited()) is None else round(waited, 1),
            basecalled=progress.rates(now).last_60_minutes.basecalled,
            eta_seconds=drain.eta_seconds,
            final_summary=run.final_summary,
            model=run.settings.model,
            modified_bases=run.settings.modified_bases,
            kit=run.settings.kit,
            reads=None if (ledger := run.read_ledger()) is None else ledger.status(),
        )

    def entries(self, *, live_only: bool = False) -> list[RunEntry]:
        now = self.clock()
        return [
            self.entry(run, now)
            for _, run in sorted(self.registry.runs.items())
            if not (live_only and run.seal is not None)
        ]

    async def entries_async(self) -> list[RunEntry]:
        """Every run's line, in slices with the event loop free between them (``status_async``
        says why); each line at its own instant."""
        return await _in_slices(sorted(self.registry.runs.values(), key=_path), self.entry)

    def totals(self) -> tuple[dict[FileState, int], dict[FileState, int]]:
        """Files and bytes by state over every run."""
        return _summed(list(self.registry.runs.values()))

    def progress(self, now: float) -> Progress:
        """Every raw folder's progress together."""
        return _progress(list(self.registry.managers.values()), now)

    def problems(self) -> list[str]:
        found = []
        if (
            not os.access(self.registry.input_root, os.R_OK | os.X_OK)
            or not self.registry.input_root.is_dir()
        ):
            found.append(f"INPUT_DIR {self.registry.input_root} is not a readable folder")
        for name, task in self.tasks.items():
            if task.done():
                found.append(f"the {name} has stopped")
        for path, manager in self.registry.managers.items():
            lines = manager.problems()
            if (
                lines
                and self.registry.input_root.is_dir()
                and not os.path.lexists(self.registry.absolute(path))
            ):
                continue  # gone: dropped by the next discovery (``Server.drop_gone``), not a fault
            found += _named(path, lines)
        return list(dict.fromkeys(found))  # INPUT_DIR served alone says its own once

    def job_problems(self) -> list[str]:
        return [
            line
            for path, manager in self.registry.managers.items()
            for line in _named(path, manager.job_problems())
        ]

    def phase(self) -> RunPhase:
        """The facility's phase, from every run's."""
        return _overall_phase(run.phase() for run in self.registry.runs.values())


@dataclass(slots=True)
class _Totals:
    """What a snapshot of several runs sums, gathered one run's line and one raw folder at a
    time: files and bytes by state (by state name: the enum's attributes cost 10 ms over
    1,000 lines), the runs' phases, and the raw folders' live jobs, quarantined files and
    job problems."""

    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATE_NAMES, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATE_NAMES, 0))
    phases: set[RunPhase] = field(default_factory=set)
    jobs: list[Job] = field(default_factory=list)
    quarantined: list[QuarantinedFile] = field(default_factory=list)
    job_problems: list[str] = field(default_factory=list)

    def add(self, entry: RunEntry) -> RunEntry:
        for name in STATE_NAMES:
            self.files[name] += getattr(entry.files, name)
            self.bytes[name] += getattr(entry.bytes, name)
        self.phases.add(entry.phase)
        return entry

    def take(self, key: str, manager: Manager) -> None:
        """Raw folder ``key``'s live jobs, quarantined files and job problems."""
        self.jobs += manager.live_jobs()
        self.quarantined += manager.quarantined_files(partial(discovery.join, key))
        self.job_problems += _named(key, manager.job_problems())


def _path(run: Run) -> str:
    return run.path


def _overall_phase(of_runs: Iterable[RunPhase]) -> RunPhase:
    """The facility's phase: complete when every run is; sequencing while one is (or while
    there is no run yet)."""
    phases = set(of_runs)
    if not phases or RunPhase.SEQUENCING in phases:
        return RunPhase.SEQUENCING
    if RunPhase.BASECALLING in phases:
        return RunPhase.BASECALLING
    return RunPhase.COMPLETE


async def _in_slices(items: list[_Item], each: Callable[[_Item], _Done]) -> list[_Done]:
    """``each`` of ``items``, ``SLICE`` at a time, letting the event loop serve other requests
    between two slices."""
    done: list[_Done] = []
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        done.extend(each(item) for item in items[start : start + SLICE])
    return done


def _summed(runs: list[Run]) -> tuple[dict[FileState, int], dict[FileState, int]]:
    counts = dict.fromkeys(FileState, 0)
    sizes = dict.fromkeys(FileState, 0)
    for run in runs:
        for state, count in run.counts().items():
            counts[state] += count
        for state, size in run.bytes().items():
            sizes[state] += size
    return counts, sizes


def _progress(managers: list[Manager], now: float) -> Progress:
    """One raw folder's own progress, or several summed."""
    if len(managers) == 1:
        return managers[0].progress_so_far()
    return Progress.merged((manager.progress_so_far() for manager in managers), now)


def _named(path: str, problems: list[str]) -> list[str]:
    """A raw folder's problems, named by its path under a root."""
    return problems if path == HERE else [f"{path}: {problem}" for problem in problems]
