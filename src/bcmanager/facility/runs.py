"""The runs and their raw folders: what the facility serves, by path, and where each job is.

A run (``Run``) holds its raw folders' cores (``Manager``s) and where it stands: paused,
finished, complete, sealed. ``Registry`` is the one owner of the maps that say which raw
folder is served, for which run, at which device and inode, and which job each leased; every
other part of the facility reads them here, and changes them only through ``Registry``'s
methods, on the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from bcmanager.core.jobs import FileState
from bcmanager.core.manager import Manager
from bcmanager.core.progress import run_phase
from bcmanager.facility import runrecord
from bcmanager.facility.discovery import HERE
from bcmanager.facility.events import RunFound, Tell
from bcmanager.facility.pod5facts import Pod5Facts
from bcmanager.facility.rules import Rules, RunSettings
from bcmanager.facility.yieldledger import RunYield
from bcmanager.models import RunPhase

log = logging.getLogger(__name__)


class UnknownRun(LookupError):
    """No run has that path."""


@dataclass(slots=True)
class Run:
    """One run: its raw folders' cores, its settings, and where it stands."""

    path: str  # relative to INPUT_DIR; "." for INPUT_DIR itself
    folder: Path
    output: Path
    settings: RunSettings
    priority: int
    managers: dict[str, Manager] = field(default_factory=dict)  # by raw folder path
    paused: bool = False
    final_summary: str | None = None  # MinKNOW's final summary, once it is there
    summary_seen: float = 0.0  # when this manager first saw it (its clock)
    expected_files: int | None = None  # raw files the final summary says were written
    finished: bool = False  # sequencing stopped, and every file it wrote was seen
    completed: bool = False  # complete, announced and its command started
    reopened: int = 0  # times it had work again after it completed: a seal begun before is stale
    seal: runrecord.Seal | None = None  # set while the run is sealed and not read back
    sealed_here: bool = False  # sealed by this manager, its raw folders still served
    facts: Pod5Facts | None = None  # what its POD5 files say of themselves, once one was read
    facts_attempts: int = 0  # files read for them so far (at most FACTS_ATTEMPTS)
    # What its reads came to: the DONE jobs' statistics, those that ended before this manager
    # started read in the background (None for a sealed run until its seal's is read).
    ledger: RunYield | None = None
    counting: int = 0  # DONE jobs whose statistics are still being read
    # Unsealed and being read back: its yield, read from its seal, holds the DONE jobs its raw
    # folders' recovery finds, so they are not counted again.
    yield_from_seal: bool = False
    touched: bool = False  # a job of it ended, or a raw file came, since this manager started

    def counts(self) -> dict[FileState, int]:
        if self.seal is not None:
            return {state: self.seal.files.get(state.value, 0) for state in FileState}
        total = dict.fromkeys(FileState, 0)
        for manager in self.managers.values():
            for state, count in manager.counts().items():
                total[state] += count
        return total

    def bytes(self) -> dict[FileState, int]:
        if self.seal is not None:
            return {state: self.seal.bytes.get(state.value, 0) for state in FileState}
        total = dict.fromkeys(FileState, 0)
        for manager in self.managers.values():
            for state, size in manager.bytes_by_state().items():
                total[state] += size
        return total

    def phase(self) -> RunPhase:
        return run_phase(self.finished, self.counts())

    def waited(self) -> float | None:
        """How long its oldest pending file has waited (None: nothing pending)."""
        waits = [
            wait for manager in self.managers.values() if (wait := manager.waited()) is not None
        ]
        return max(waits, default=None)

    def job_ids(self, but: str | None = None) -> frozenset[str]:
        """The jobs its raw folders know, but those of raw folder ``but``."""
        return frozenset().union(
            *(manager.job_ids() for key, manager in self.managers.items() if key != but)
        )

    def read_ledger(self) -> RunYield | None:
        """Its ledger; a sealed run's is read from its seal the first time it is asked for."""
        seal = self.seal
        if self.ledger is None and seal is not None and seal.ledger is not None:
            try:
                self.ledger = RunYield.from_record(seal.ledger)
            except ValueError as error:
                log.warning("run %s: its seal's yield cannot be read (%s)", seal.run, error)
        return self.ledger


class Registry:
    """Every run, every raw folder served and every live job, by path or id."""

    def __init__(self, input_root: Path, output_root: Path, rules: Rules, tell: Tell) -> None:
        self.input_root = input_root
        self.output_root = output_root
        self.rules = rules
        self.tell = tell
        self.runs: dict[str, Run] = {}
        self.managers: dict[str, Manager] = {}  # every raw folder's core, by its path
        self.run_of: dict[str, Run] = {}  # raw folder path -> its run
        self.jobs: dict[str, Manager] = {}  # live job -> the raw folder that leased it
        # MinKNOW's final summaries seen in folders under INPUT_DIR (by discovery's walks and
        # the watcher), by folder: a run's is looked up here, its folder not listed again.
        self.summaries: dict[str, str] = {}
        # Raw folders a discovery found and is still starting, by path -> run path.
        self.pending_raw_folders: dict[str, str] = {}
        # Each raw folder served, by path -> its folder's device and inode: a folder served
        # that an operator moves is followed to its new path.
        self.identity: dict[str, tuple[int, int]] = {}
        # Raw folders reached through a link, by where each leads (the first path found for
        # it is served), and those said in the log not to be served twice.
        self.linked: dict[str, str] = {}
        self.named: set[str] = set()

    def absolute(self, path: str) -> Path:
        return self.input_root if path == HERE else self.input_root / path

    def run(self, path: str) -> Run:
        try:
            return self.runs[path]
        except KeyError:
            raise UnknownRun(f"no run {path!r} under INPUT_DIR") from None

    def add_run(self, path: str, *, quiet: bool = False) -> Run:
        """A run not served before, with the settings the runs file gives it; told as found,
        but for a sealed run (``quiet``: its seal is told of, with the others')."""
        output = self.output_root if path == HERE else self.output_root / path
        settings = self.rules.settings_for(path)
        run = Run(path, self.absolute(path), output, settings, settings.priority, ledger=RunYield())
        self.runs[path] = run
        if not quiet:
            self.tell(RunFound(run.path, run.priority))
        return run

    def serve(self, run: Run, path: str, manager: Manager) -> None:
        """Raw folder ``path`` of ``run`` is served by ``manager`` from now on."""
        run.managers[path] = manager
        self.managers[path] = manager
        self.run_of[path] = run

    def forget(self, run: Run, path: str) -> Manager:
        """Raw folder ``path`` of ``run`` is gone: no longer served, nor known by its identity
        (a new folder may get the inode of a deleted one, and must not pass for this one
        moved), nor its jobs."""
        manager = run.managers.pop(path)
        del self.managers[path]
        del self.run_of[path]
        self.identity.pop(path, None)
        for real in [real for real, each in self.linked.items() if each == path]:
            del self.linked[real]
        for jobid in [jobid for jobid, each in self.jobs.items() if each is manager]:
            del self.jobs[jobid]
        return manager

    def sibling_folders(self, run: Run, path: str) -> list[Path]:
        """The raw folders of ``run`` not yet served, but ``path``: their job folders may have
        output in the run's output folder that ``path``'s recovery must not take for its own."""
        return [
            self.input_root / other
            for other, found_run in self.pending_raw_folders.items()
            if found_run == run.path and other != path and other not in run.managers
        ]
