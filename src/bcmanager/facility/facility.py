"""The facility: every run under INPUT_DIR, served by one pool of engines.

Rules:

- A run's core (``Manager``: one raw folder's state machine, folders, recovery and progress)
  knows nothing of other runs, nor of the other raw folders of its own run. This module holds
  the runs, finds them (``discovery.py``), gives each its settings (``rules.py``), decides
  whose files the next engine gets (``scheduler.py``), and knows when a run is finished,
  complete and sealed (``runrecord.py``). The HTTP layer (``app.py``) only calls it.
- Job ids are unique across the facility (random 128-bit), so the protocol's calls reach the
  raw folder that leased the job without the engine saying which.
- One misbehaving run never stalls the others: a raw folder whose recovery fails is reported
  and left out; a run's completion command runs in the background.

Theory of operation: start-up discovers the raw folders, reads each back from disk (sealed runs
are not read: their seal is), and listens. From then on one watcher, on each folder discovery
walked, hands each raw folder the changes to its raw files, sends a new folder, or raw files in
a folder not served yet, to discovery, and notices MinKNOW's final summary; a rescan does all of
it again every ``BCM_RESCAN_INTERVAL`` seconds for what events miss (network filesystems, and
the folders of sealed runs, which are not watched); a raw folder served that turns up at
another path (an operator moved it, or its run) is followed there. An engine's
``assignwork`` goes to the scheduler: among the raw folders with pending files, of runs not
paused, it chooses the one that leases a batch, and the batch's bytes (``scheduler.py`` says
by which rules). A run is finished when its final summary is there (and, when that names a
number of raw files, that many were seen); complete when finished with nothing waiting,
pending or leased. Then its completion command
runs once and, but for a run that is INPUT_DIR itself, it is sealed. Each DONE job's statistics
(what its agent counted of its reads) go into its run's yield ledger, and a complete run gets
its report; ``notify.py`` tells a webhook of a run's end, a quarantined file, a benched engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, assert_never

from watchfiles import Change, awatch

from bcmanager.core import scan
from bcmanager.core.benching import Benching
from bcmanager.core.events import (
    Adopted,
    Benched,
    Contacted,
    Ended,
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
from bcmanager.core.logs import log_event
from bcmanager.core.manager import QUARANTINED_SHOWN, Manager, batch_reply, picture
from bcmanager.core.progress import Progress, run_phase
from bcmanager.core.state import LeaseExpired, UnknownJob
from bcmanager.facility import discovery, runrecord
from bcmanager.facility.discovery import HERE, Found, Layout
from bcmanager.facility.notify import Notifier
from bcmanager.facility.pod5facts import Pod5Facts, read_facts
from bcmanager.facility.report import write_report
from bcmanager.facility.rules import Rules, RunSettings
from bcmanager.facility.runreport import build_run_report
from bcmanager.facility.scheduler import Queue, batch_bytes, choose
from bcmanager.facility.yieldledger import RunYield, fold, read_job_output
from bcmanager.models import (
    BCBatch,
    FileBytes,
    FileCounts,
    JobState,
    QuarantinedFile,
    RunEntry,
    RunPhase,
    RunStatus,
)
from bcmanager.paths import (
    COMPLETION_LOG,
    REPORT_HTML,
    FolderKind,
    RunPaths,
    is_final_summary_name,
    is_raw_name,
    job_folder,
    parse_job_folder,
)
from bcmanager.records import fsync_folder
from bcmanager.settings import Settings
from bcmanager.template import fill
from bcmanager.watcher import DEBOUNCE_MS, STEP_MS, can_watch

log = logging.getLogger(__name__)

FACTS_ATTEMPTS = 3
"""Files of a run read for what its POD5 files say before it goes without (damaged files, or
stand-ins that only look complete)."""


KILL_GRACE = 5.0
"""Seconds a completion command stopped with SIGTERM has to end before SIGKILL."""

# Seconds after which a watcher that starts again with more folders surely watches them.
REWATCH_SECONDS = 0.2

SLICE = 10
"""Runs, or raw folders, that the picture of every run takes in before it lets the event loop
serve another request: 2 to 4 ms of work (docs/benchmarks.md, figure 10)."""

STATE_NAMES = tuple(state.value for state in FileState)

_Item = TypeVar("_Item")
_Done = TypeVar("_Done")


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
    sources: dict[str, Manager] = field(default_factory=dict)  # by raw folder path
    paused: bool = False
    final_summary: str | None = None  # MinKNOW's final summary, once it is there
    summary_seen: float = 0.0  # when this manager first saw it (its clock)
    expected_files: int | None = None  # raw files the final summary says were written
    finished: bool = False  # sequencing stopped, and every file it wrote was seen
    completed: bool = False  # complete, announced and its command started
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
        for source in self.sources.values():
            for state, count in source.state.counts().items():
                total[state] += count
        return total

    def bytes(self) -> dict[FileState, int]:
        if self.seal is not None:
            return {state: self.seal.bytes.get(state.value, 0) for state in FileState}
        total = dict.fromkeys(FileState, 0)
        for source in self.sources.values():
            for state, size in source.progress.bytes_by_state().items():
                total[state] += size
        return total

    def phase(self) -> RunPhase:
        return run_phase(self.finished, self.counts())

    def waited(self) -> float | None:
        """How long its oldest pending file has waited (None: nothing pending)."""
        waits = [wait for source in self.sources.values() if (wait := source.waited()) is not None]
        return max(waits, default=None)

    def job_ids(self, but: str | None = None) -> frozenset[str]:
        """The jobs its raw folders know, but those of raw folder ``but``."""
        return frozenset().union(
            *(source.state.job_ids() for key, source in self.sources.items() if key != but)
        )


class Facility:
    """Every run under INPUT_DIR; or, given one ``Manager``, that one raw folder as its only
    run (tests that inject faults into one run's folders, and tools)."""

    def __init__(
        self,
        settings: Settings,
        manager: Manager | None = None,
        clock: Callable[[], float] = time.monotonic,
        rules: Rules | None = None,
    ) -> None:
        """``rules``: the runs file, read already (``serve`` reports a bad one before it takes
        the locks); None: the one the settings name, read here."""
        self.settings = settings
        self.clock = manager.clock if manager is not None else clock
        self.input_root = settings.input_dir.resolve()
        self.output_root = settings.output_dir.resolve()
        self.paths = RunPaths(self.input_root, self.output_root)
        self.layout = Layout(settings.run_folder, settings.discovery_depth)
        self.rules = rules if rules is not None else Rules.from_settings(settings)
        self.runs: dict[str, Run] = {}
        self.sources: dict[str, Manager] = {}  # every raw folder's core, by its path
        self.run_of: dict[str, Run] = {}  # raw folder path -> its run
        self._given = manager
        self._jobs: dict[str, Manager] = {}  # live job -> the raw folder that leased it
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._discovering = asyncio.Lock()
        # Folders the watcher watches (paths under INPUT_DIR), and what tells it to start again
        # when there are more.
        self._watched: set[str] = {HERE}
        self._rewatch = asyncio.Event()
        # MinKNOW's final summaries seen in folders under INPUT_DIR (by discovery's walks and
        # the watcher), by folder: a run's is looked up here, its folder not listed again.
        self._summaries: dict[str, str] = {}
        # Raw folders a discovery found and is still starting, by path -> run path.
        self._pending_sources: dict[str, str] = {}
        # Each raw folder served, by path -> its folder's device and inode: a folder served
        # that an operator moves is followed to its new path.
        self._identity: dict[str, tuple[int, int]] = {}
        # Raw folders reached through a link, by where each leads (the first path found for
        # it is served), and those said in the log not to be served twice.
        self._linked: dict[str, str] = {}
        self._named: set[str] = set()
        self.notifier = Notifier(None if settings.notify_url is None else str(settings.notify_url))
        # run_complete notices kept on disk until the webhook took them (by the run's output
        # folder, where each is kept), and those on their way now.
        self._notices: dict[Path, bytes] = {}
        self._sending: set[Path] = set()
        # Benching is the engine's, not a raw folder's: one that fails everything is benched
        # for all runs at once.
        self.benching = (
            manager.benching
            if manager is not None
            else Benching(
                settings.bench_after,
                settings.bench_seconds,
                settings.bench_longest_seconds,
                window=2 * settings.report_back_period,
            )
        )
        self.last_activity = self.clock()
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Read every run back, then keep discovering, watching and rescanning. Returns (and
        the server listens) once each raw folder's jobs are adopted and its oldest files can
        be offered; each raw folder finishes its first scan in the background."""
        self.notifier.start()
        if self._given is not None:
            run = self._add_run(HERE)
            await self._add_source(run, HERE, self._given)
            self._spawn("final summary", self._summary_forever())
            self._started = True
            return
        await self._discover()
        self._started = True
        self._side(self._verify_seals())
        self._spawn("discovery", self._discover_forever())
        if not self.settings.force_polling and can_watch(self.input_root):
            self._spawn("watcher", self._watch())

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._side_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for source in self.sources.values():
            await source.stop()
        await self.notifier.stop()

    @property
    def ready(self) -> bool:
        """Once every raw folder served has finished its first scan."""
        return self._started and all(source.ready for source in self.sources.values())

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = asyncio.create_task(work, name=name)

    def _side(self, work: Coroutine[Any, Any, None]) -> None:
        """A task the facility starts and forgets (a completion command), cancelled at stop;
        without an event loop (a tool ending jobs by hand) there is nothing to run it on."""
        try:
            task = asyncio.create_task(work)
        except RuntimeError:
            work.close()
            return
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- runs and raw folders ---------------------------------------------------------------

    def _add_run(self, path: str, *, quiet: bool = False) -> Run:
        folder = self.input_root if path == HERE else self.input_root / path
        output = self.output_root if path == HERE else self.output_root / path
        settings = self.rules.settings_for(path)
        run = Run(path, folder, output, settings, settings.priority, ledger=RunYield())
        self.runs[path] = run
        if not quiet:
            self._log("found", run, priority=run.priority)
        return run

    async def _add_source(self, run: Run, path: str, given: Manager | None = None) -> None:
        """Read one raw folder back and start serving it. Its recovery leaves alone the
        output of the jobs of its run's other raw folders, found on disk or known live."""
        folder = self.input_root if path == HERE else self.input_root / path
        source = given or Manager(
            self.settings,
            clock=self.clock,
            paths=RunPaths(folder, run.output, self.input_root, self.output_root),
            own_watcher=False,
            benching=self.benching,
        )
        on_disk = _job_ids_on_disk(self._sibling_folders(run, path))
        source.siblings = lambda: on_disk | run.job_ids(but=path)
        source.listener = partial(self._job_ended, run, path)
        # A raw folder gone from a readable root is for discovery to drop (or to follow, where
        # it moved), not an error of each rescan.
        source.on_gone = self.input_root.is_dir
        try:
            await source.start()
        except OSError as error:
            log.error("raw folder %s cannot be served (%s); the other runs go on", path, error)
            return
        # The DONE jobs recovery found; those that end from now on are counted as they end.
        logs = [
            job_folder(FolderKind.LOGOUTPUT, jobid, engine)
            for jobid, engine in source.done_at_start
        ] + [
            job_folder(FolderKind.FAILEDOUTPUT, jobid, engine)
            for jobid, engine in source.failed_at_start
        ]
        source.done_at_start = []
        source.failed_at_start = []
        if not run.yield_from_seal:
            run.counting += 1
            self._side(self._count_reads(run, logs, after_start=True))
        run.sources[path] = source
        self.sources[path] = source
        self.run_of[path] = run
        identity = _identity(folder)
        if identity is not None:
            self._identity[path] = identity
        for job in source.state.live_jobs():
            self._jobs[job.jobid] = source
        if run.finished:
            source.sequencing_finished(run.final_summary or "")

    def _sibling_folders(self, run: Run, path: str) -> list[Path]:
        """The raw folders of ``run`` not yet served, but ``path``: their job folders may have
        output in the run's output folder that ``path``'s recovery must not take for its own."""
        return [
            self.input_root / other
            for other, found_run in self._pending_sources.items()
            if found_run == run.path and other != path and other not in run.sources
        ]

    def _gone(self, run: Run) -> None:
        """Stop serving the raw folders of ``run`` that are gone (an operator deleted them, or
        moved them out of INPUT_DIR), with one line of the log; a run left with none, or a
        sealed run whose folder is gone, is dropped whole, so that it holds neither /heartbeat
        nor the facility's phase. Its leased jobs are unknown from now on: their keepalives
        answer late. Nothing is dropped while INPUT_DIR itself cannot be read: /heartbeat says
        so, and a root that comes back is served as it was."""
        if self.runs.get(run.path) is not run or not self.input_root.is_dir():
            return
        gone = [path for path in run.sources if not os.path.lexists(self._absolute(path))]
        if not gone and (run.sources or os.path.lexists(run.folder)):
            return
        if len(gone) < len(run.sources):
            self._log("raw folders gone", run, raw_folders=" ".join(gone))
        else:
            self._log("run gone", run)
            del self.runs[run.path]
            self._summaries.pop(run.path, None)
        for path in gone:
            source = run.sources.pop(path)
            del self.sources[path]
            del self.run_of[path]
            # Forgotten by identity too: a new folder may get the inode of a deleted one, and
            # must not pass for this one moved.
            self._identity.pop(path, None)
            self._linked = {real: each for real, each in self._linked.items() if each != path}
            self._jobs = {jobid: each for jobid, each in self._jobs.items() if each is not source}
            self._side(source.stop())

    async def _drop_gone(self) -> None:
        """``_gone`` for every run that lost a raw folder, or its folder when sealed; the raw
        folders are looked for in a worker thread (on a network filesystem a stat can take
        milliseconds, and a root holds thousands of raw folders)."""
        runs = [(run, [self._absolute(path) for path in run.sources]) for run in self.runs.values()]

        def losing() -> list[Run]:
            return [
                run
                for run, folders in runs
                if not all(map(os.path.lexists, folders or [run.folder]))
            ]

        for run in await asyncio.to_thread(losing):
            self._gone(run)

    async def _discover(self, below: str = HERE) -> None:
        """Find raw folders not served yet (below ``below`` only, after an event) and serve
        them. Sealed runs are checked by their seal, not read; one that changed is unsealed
        and read whole."""
        async with self._discovering:
            found = await self._walk(below)
            for path in sorted({each.run for each in found}):
                run = self.runs.get(path)
                if run is not None and run.seal is not None:
                    self._reopen(run, "its folders changed")
                    if below != HERE:
                        found += await self._walk(path)
            unserved = {each.source: each for each in found if each.source not in self.sources}
            moved = await self._moved(unserved)
            if moved:
                await self._follow(moved)
            new = {
                path: each
                for path, each in unserved.items()
                if path not in self.sources and not self._served_elsewhere(each)
            }
            self._pending_sources = {path: each.run for path, each in new.items()}
            read: list[Run] = []
            try:
                for _, each in sorted(new.items()):
                    run = self.runs.get(each.run)
                    if run is None:
                        run = self._add_run(each.run)
                        await self._follow_mark(run)
                    read.append(run)
                    await self._add_source(run, each.source)
                    if run.completed and run.phase() is not RunPhase.COMPLETE:
                        self._reopen(run, "a new raw folder")
                    await self._look_for_summary(run)
            finally:
                self._pending_sources = {}
                for run in read:
                    run.yield_from_seal = False  # its raw folders are read back

    async def _moved(self, found: dict[str, Found]) -> dict[str, Found]:
        """The raw folders served that are now among ``found`` (the same folder, by its
        device and inode, gone from where it was served): old path -> where it is. One stat
        of each raw folder found, and of the old path of each that matches, in a worker
        thread."""
        served = {identity: path for path, identity in self._identity.items()}
        if not found or not served:
            return {}

        def look() -> dict[str, Found]:
            moved = {}
            for path, each in found.items():
                identity = _identity(self._absolute(path))
                old = served.get(identity) if identity is not None else None
                if old is not None and _identity(self._absolute(old)) != identity:
                    moved[old] = each
            return moved

        return await asyncio.to_thread(look)

    async def _follow(self, moved: dict[str, Found]) -> None:
        """Serve raw folders that an operator moved from where they are now, with what the
        manager holds of them: their files and job folders moved with them, so nothing is
        read again, nothing done is offered again, and the old paths are dropped. A run whose
        every raw folder moved into one new run folder moves whole, and its output folder
        with it. The jobs leased from a raw folder that moved are given back, since the
        folders their engines were told are no longer where they were."""
        by_run: dict[str, list[str]] = {}
        for old in sorted(moved):
            by_run.setdefault(self.run_of[old].path, []).append(old)
        for path, olds in by_run.items():
            run = self.runs[path]
            targets = {moved[old].run for old in olds}
            if set(olds) == set(run.sources) and len(targets) == 1:
                (target,) = targets
                if target != run.path and target not in self.runs:
                    await self._move_run(run, target)
            for old in olds:
                await self._move_source(old, moved[old])

    async def _move_run(self, run: Run, target: str) -> None:
        """Run ``run`` is at ``target`` now: so is its output folder, unless that cannot be."""
        self._log("moved", run, to=target)
        output = self.output_root / target
        try:
            if await asyncio.to_thread(_move_folder, run.output, output):
                run.output = output
            else:
                log.warning(
                    "run %s: %s is taken, so its output stays in %s", target, output, run.output
                )
        except OSError as error:
            log.error("run %s: its output stays in %s (%s)", target, run.output, error)
        del self.runs[run.path]
        run.path, run.folder = target, self._absolute(target)
        self.runs[target] = run
        await asyncio.to_thread(runrecord.remove_seal, run.output)  # it names the old paths
        try:
            await asyncio.to_thread(runrecord.write_run_path, run.folder, target)
        except OSError as error:
            log.error("run %s: its mark could not follow it (%s)", target, error)
        self._watch_also([target])

    async def _follow_mark(self, run: Run) -> None:
        """A run found at a path this manager did not serve it at: when the mark in its folder
        names another path, where no run folder is now, the run moved while no manager
        followed it (stopped, or killed before it saw the move), so its output folder comes
        along from there, as a move seen while serving brings it (before the raw folders'
        recovery looks for their jobs' output in it). Then the mark names where it is."""
        if run.path == HERE:
            return

        def follow() -> str | None:
            old = runrecord.read_run_path(run.folder)
            if old == run.path:
                return None
            moved = None
            if old is not None and not os.path.lexists(self._absolute(old)):
                output = self.output_root / old
                if not os.path.lexists(output):
                    log.info("run %s: moved from %s, which had no output yet", run.path, old)
                elif _move_folder(output, run.output):
                    runrecord.remove_seal(run.output)  # it names the old paths
                    moved = old
                else:
                    log.warning(
                        "run %s: %s is taken, so its output stays in %s",
                        run.path,
                        run.output,
                        output,
                    )
            runrecord.write_run_path(run.folder, run.path)
            return moved

        try:
            old = await asyncio.to_thread(follow)
        except OSError as error:
            log.error("run %s: its mark or its output could not follow it (%s)", run.path, error)
            return
        if old is not None:
            self._log("followed", run, moved_from=old)

    async def _move_source(self, old: str, found: Found) -> None:
        """Raw folder ``old`` is ``found.source`` now, in run ``found.run``."""
        source = self.sources.pop(old)
        run = self.run_of.pop(old)
        del run.sources[old]
        new = self.runs.get(found.run) or self._add_run(found.run)
        path = found.source
        source.move_to(
            RunPaths(self._absolute(path), new.output, self.input_root, self.output_root)
        )
        self._identity[path] = self._identity.pop(old)
        for real, served in self._linked.items():
            if served == old:
                self._linked[real] = path
        new.sources[path] = source
        self.sources[path] = source
        self.run_of[path] = new
        source.listener = partial(self._job_ended, new, path)
        if not run.sources and run is not new:
            del self.runs[run.path]
            self._log("moved", run, to=new.path)
        await asyncio.to_thread(source.folders.prepare)  # a run's output folder, if new
        await source.give_back()

    def _served_elsewhere(self, found: Found) -> bool:
        """Whether ``found`` is reached through a link that leads where another raw folder
        served already leads: it is not served twice, or its files would be basecalled twice.
        Said once in the log."""
        if not found.linked:
            return False
        real = os.path.realpath(self._absolute(found.source))
        first = self._linked.setdefault(real, found.source)
        if first == found.source:
            return False
        if found.source not in self._named:
            self._named.add(found.source)
            log.warning(
                "raw folder %s leads to %s, which is served as %s: not served twice",
                found.source,
                real,
                first,
            )
        return True

    async def _walk(self, below: str) -> list[Found]:
        """Discovery below a folder (in a worker thread). A sealed run whose folders are
        unchanged is not entered: its seal stands for it, and the rescan, not the watcher,
        looks at its folders (a watch per folder of every finished run would cost each start
        of the watcher). The folders walked are watched from now on."""
        visited: list[str] = []
        seals: dict[str, runrecord.Seal] = {}
        summaries: dict[str, str] = {}
        notices: dict[Path, bytes] = {}

        def sealed(path: str) -> tuple[str, ...] | None:
            """The runs nested in the sealed run at ``path`` whose seal holds; None to walk
            the folder as any other."""
            run = self.runs.get(path)  # only read here: the loop owns the runs
            if run is not None:
                seal = run.seal
                held = seal is not None and runrecord.still_holds(self.input_root, seal)
                return seal.nested if seal is not None and held else None
            if path == HERE:
                return None
            output = self.output_root / path
            seal = runrecord.read_seal(output, path)
            if seal is None or not runrecord.still_holds(self.input_root, seal):
                return None
            seals[path] = seal
            if self.notifier.url is not None and (notice := runrecord.read_notice(output)):
                notices[output] = notice
            return seal.nested

        found = await asyncio.to_thread(
            discovery.discover, self.input_root, self.layout, sealed, below, visited, summaries
        )
        self._summaries.update(summaries)
        sealed_now = [path for path in sorted(seals) if path not in self.runs]
        for path in sealed_now:
            seal = seals[path]
            # A sealed run is one line of the log for all of them, its yield read when shown.
            run = self._add_run(path, quiet=True)
            run.seal, run.final_summary, run.ledger = seal, seal.final_summary, None
            run.finished = run.completed = True
        if sealed_now:
            log_event(log, "sealed runs", {}, logging.INFO, runs=len(sealed_now))
        self._notices.update(notices)
        self._send_notices()
        self._watch_also(visited)
        return found

    async def _verify_seals(self) -> None:
        """Once every raw folder is ready, list each sealed run's folders and compare them
        whole with its seal, one run at a time in a worker thread: a change that kept the
        folders' modification times is found by this start too, and the run read back."""
        while not self.ready:
            await asyncio.sleep(0.05)
        for run in list(self.runs.values()):
            seal = run.seal
            if seal is None:
                continue
            why = await asyncio.to_thread(self._seal_broken, run.output, seal)
            if why is not None and run.seal is seal:
                self._reopen(run, why)
                await self._discover(run.path)

    def _seal_broken(self, output: Path, seal: runrecord.Seal) -> str | None:
        """Why a sealed run is read back (None: its seal stands): a raw file or folder below it
        that the seal does not hold, or a job's output folder in its output, which an engine
        wrote after its job ended (a sealed run has none live), and which only the run's
        recovery sets aside."""
        if not runrecord.verify(self.input_root, seal):
            return "a raw file or folder below it is not in its seal"
        try:
            listing = scan.list_output(output)
        except OSError:
            return None
        if any(folder.kind is FolderKind.TMPOUTPUT for folder in listing.job_folders):
            return "a job's output written after the job ended"
        return None

    def _reopen(self, run: Run, why: str) -> None:
        """A complete run has work again: it is no longer complete, nor sealed."""
        run.completed = run.sealed_here = False
        if run.path == HERE:
            return
        if run.seal is not None:
            run.yield_from_seal = _ledger(run) is not None
        run.seal = None
        runrecord.remove_seal(run.output)
        self._log("unsealed", run, reason=why)

    # -- the protocol -----------------------------------------------------------------------

    def assign(self, engine: str, batch_size: int) -> BCBatch:
        """Lease the next batch the scheduler chooses; a batch of nothing when no run has
        pending files for ``engine``."""
        self.last_activity = self.clock()
        queues = self._queues()
        engines = max(1, self._engines_asking())
        while queues:
            chosen = choose(queues, engines)
            if chosen is None:
                break
            queues.remove(chosen)
            source = self.sources[chosen.key]
            run = self.run_of[chosen.key]
            source.batch_extras = _batch_extras(run)
            try:
                batch = source.assign(engine, batch_size, batch_bytes(chosen, engines))
            except FileNotFoundError:
                if source.paths.input_dir.is_dir():
                    raise
                continue  # gone with its run, moved or deleted: followed or dropped soon
            if batch.batch:
                self._jobs[batch.jobid] = source
                return _with_facts(batch, self._facts(run, source.paths.input_dir / batch.batch[0]))
        return self._nothing(engine)

    def _facts(self, run: Run, raw_file: Path) -> Pod5Facts | None:
        """What the run's POD5 files say: read from ``raw_file`` (a few milliseconds: its
        run-info table, not its signal) unless known, or FACTS_ATTEMPTS files did not read."""
        if run.facts is None and run.facts_attempts < FACTS_ATTEMPTS:
            run.facts_attempts += 1
            run.facts = read_facts(raw_file)
        return run.facts

    def _nothing(self, engine: str) -> BCBatch:
        """No work. A run served alone says so itself, as it always did (it counts the
        engine's call); under a root, an engine's calls count where it holds or ends a job."""
        if len(self.sources) == 1:
            ((path, source),) = self.sources.items()
            if not self.run_of[path].paused:
                return source.assign(engine, 0)
        return batch_reply(self.settings, self.paths, engine)

    def _queues(self) -> list[Queue]:
        """The raw folders with pending files, of runs not paused, as the scheduler sees them."""
        queues = []
        for run in self.runs.values():
            if run.paused or not run.sources:
                continue
            pending = [
                (key, source) for key, source in run.sources.items() if source.state.pending_count()
            ]
            if not pending:
                continue
            run_pending = sum(
                source.progress.bytes_by_state()[FileState.PENDING] for _, source in pending
            )
            for key, source in pending:
                queues.append(
                    Queue(
                        key=key,
                        priority=run.priority,
                        waited=source.waited() or 0.0,
                        run_pending_bytes=run_pending,
                        run_finished=run.finished,
                        batch_bytes=run.settings.batch_bytes,
                    )
                )
        return queues

    def _engines_asking(self) -> int:
        """Engines seen lately, across raw folders: a finished run's last files are spread
        over them."""
        engines: set[str] = set()
        now = self.clock()
        window = 2 * self.settings.report_back_period
        for source in self.sources.values():
            engines.update(
                stats.engine
                for stats in source.progress.engine_stats(now)
                if now - stats.last_contact <= window
            )
        return len(engines)

    def _source_of(self, jobid: str) -> Manager:
        source = self._jobs.get(jobid)
        if source is not None:
            return source
        for source in self.sources.values():
            if source.state.has_job(jobid):
                return source
        raise UnknownJob(f"job {jobid} is not known to this manager")

    def keepalive(self, jobid: str, reported: JobState) -> bool:
        self.last_activity = self.clock()
        try:
            source = self._source_of(jobid)
        except UnknownJob:
            return True  # not ours (any more): the engine stops it
        return source.keepalive(jobid, reported)

    def complete(self, jobid: str, outcome: JobState) -> None:
        self.last_activity = self.clock()
        self._source_of(jobid).complete(jobid, outcome)

    async def complete_async(self, jobid: str, outcome: JobState) -> None:
        self.last_activity = self.clock()
        source = self._source_of(jobid)
        try:
            await source.complete_async(jobid, outcome)
        except FileNotFoundError:
            if await asyncio.to_thread(source.paths.input_dir.is_dir):
                raise
            # Its run moved or went, unseen yet: nothing changed, and once the watcher or the
            # rescan sees it the job is given back, as a late one is.
            raise LeaseExpired(
                f"job {jobid}: its run moved or went; its files go to others"
            ) from None

    def _job_ended(self, run: Run, path: str, event: Event, facts: Facts) -> None:
        """An event of raw folder ``path``: a job's end is the run's to count and check, an
        engine benched is told to the webhook; the rest is the raw folder's own."""
        match event:
            # What the facility does not take in first: a start-up sees a million files.
            case (
                FileSeen()
                | FileMissing()
                | Leased()
                | Adopted()
                | KeptAlive()
                | Late()
                | Split()
                | Retried()
                | FoundEnded()
                | Restored()
                | Contacted()
                | Sized()
                | SequencingFinished()
            ):
                return
            case Ended():
                job, outcome = event.job, event.outcome
                reason = facts.record.describe() if facts.record is not None else None
            case Benched():
                seconds = event.until - self.clock()
                self.notifier.engine_benched(event.engine, seconds, event.reason)
                return
            case _:
                assert_never(event)
        self._jobs.pop(job.jobid, None)
        run.touched = True
        if outcome is JobState.DONE or (
            reason is not None and outcome in (JobState.FAILED, JobState.QUARANTINED)
        ):
            run.counting += 1
            kind = FolderKind.LOGOUTPUT if outcome is JobState.DONE else FolderKind.FAILEDOUTPUT
            self._side(self._count_reads(run, [job_folder(kind, job.jobid, job.engine)]))
        elif outcome is JobState.QUARANTINED:
            for name in job.files:
                self.notifier.file_quarantined(
                    run.path, discovery.join(path, name), reason or "no record of why"
                )
        self._check_complete(run)

    # -- what the reads came to -------------------------------------------------------------

    async def _count_reads(self, run: Run, logs: list[str], *, after_start: bool = False) -> None:
        """DONE jobs' statistics, as their agents wrote them (kept with their log folders,
        named in ``logs``), read in a worker thread and counted in the run's ledger. What
        start-up found waits until every raw folder is ready, so that it slows no first
        offer."""
        try:
            while after_start and not self.ready:
                await asyncio.sleep(0.05)
            read = await asyncio.to_thread(
                lambda: [read_job_output(run.output / name) for name in logs]
            )
            ledger = _ledger(run)
            if ledger is None:
                ledger = run.ledger = RunYield()
            for found in read:
                fold(ledger, found)
        finally:
            run.counting -= 1
        self._check_complete(run)

    async def retry(
        self,
        names: list[str] | None,
        record: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> list[str]:
        """Send quarantined files back: ``names`` are raw file names, or paths relative to
        INPUT_DIR for a file in a raw folder below it; None sends all. A sealed run with
        quarantined files is read back from its folders first. ``record`` (the operator's
        log) is told which files will be sent back before any is: if it raises, none is."""
        for run in list(self.runs.values()):
            if run.seal is not None and run.seal.files.get(FileState.FAILED.value):
                self._reopen(run, "an operator sends files back")
                await self._discover(run.path)
        targets: list[tuple[str, Manager, list[str] | None]] = []
        # A raw folder gone with its run (deleted or moved away, not dropped yet by the watcher
        # or the rescan) has nothing to send back; listing it would fail the whole retry.
        sources = list(self.sources.items())
        here = await asyncio.to_thread(
            lambda: [source.paths.input_dir.is_dir() for _, source in sources]
        )
        for (path, source), there in zip(sources, here, strict=True):
            if not there:
                continue
            if names is None:
                mine = None
            else:
                mine = [name for name in names if discovery.parent_of(name) == path]
                mine += [name for name in names if "/" not in name and path != HERE]
                mine = [name.rpartition("/")[2] for name in mine]
                if not mine:
                    continue
            targets.append((path, source, mine))
        if record is not None:
            await record(
                [
                    discovery.join(path, name)
                    for path, source, mine in targets
                    for name in _quarantined_among(source, mine)
                ]
            )
        sent: list[str] = []
        for path, source, mine in targets:
            retried = await source.retry(mine)
            sent += [discovery.join(path, name) for name in retried]
            if retried:
                run = self.run_of[path]
                if run.completed:
                    self._reopen(run, "an operator sent files back")
        return sent

    # -- runs: what an operator changes -----------------------------------------------------

    def run(self, path: str) -> Run:
        try:
            return self.runs[path]
        except KeyError:
            raise UnknownRun(f"no run {path!r} under INPUT_DIR") from None

    def set_priority(self, path: str, priority: int) -> Run:
        run = self.run(path)
        run.priority = priority
        self._log("priority", run, priority=priority)
        return run

    def set_paused(self, path: str, paused: bool) -> Run:
        run = self.run(path)
        run.paused = paused
        self._log("paused" if paused else "resumed", run)
        return run

    # -- finished, complete, sealed ---------------------------------------------------------

    def _summary_folders(self, run: Run) -> list[Path]:
        """Where MinKNOW writes the run's final summary: the run folder; for a run that is a
        raw folder itself (a pod5/ served alone), also the folder above it."""
        if run.path == HERE and self.settings.final_summary_dir is not None:
            return [self.settings.final_summary_dir.resolve()]
        if run.path in run.sources or (run.path == HERE and HERE in self.sources):
            return [run.folder, run.folder.parent]
        return [run.folder]

    async def _find_summary(self, run: Run) -> Path | None:
        """The run's final summary: from what discovery and the watcher saw for its folders
        under INPUT_DIR; a folder outside INPUT_DIR (above a run that is INPUT_DIR, or
        BCM_FINAL_SUMMARY_DIR), and INPUT_DIR served alone, are listed."""
        outside = []
        for folder in self._summary_folders(run):
            path = None if self._given is not None else discovery.relative(self.input_root, folder)
            if path is None:
                outside.append(folder)
            elif path in self._summaries:
                return Path(self._summaries[path])
        return await asyncio.to_thread(scan.final_summary, outside) if outside else None

    async def _look_for_summary(self, run: Run) -> None:
        """A run is finished once its final summary is there and every file it counts was
        seen (those gone since count: they are accounted for as missing). Files it counts that
        were never seen are waited for ``BCM_FINAL_SUMMARY_GRACE`` seconds, as they may still
        be landing; then the run finishes without them, and the log says so."""
        if run.finished:
            return
        if run.final_summary is None:
            found = await self._find_summary(run)
            if found is None:
                return
            run.final_summary = str(found)
            run.summary_seen = self.clock()
            run.expected_files = await asyncio.to_thread(scan.files_in_final_dest, found)
        seen = sum(run.counts().values())
        if run.expected_files is not None and seen < run.expected_files:
            if self.clock() - run.summary_seen < self.settings.final_summary_grace:
                return  # MinKNOW wrote more files than were seen yet: wait for them
            log.warning(
                "run %s: %d of the %d raw files its final summary counts were never seen; "
                "finished without them",
                run.path,
                run.expected_files - seen,
                run.expected_files,
            )
        run.finished = True
        self._log("finished", run, summary=run.final_summary)
        self.notifier.sequencing_finished(run.path)
        for source in run.sources.values():
            source.sequencing_finished(run.final_summary)
        self._check_complete(run)

    def _check_complete(self, run: Run) -> None:
        if run.completed or run.seal is not None or run.phase() is not RunPhase.COMPLETE:
            return
        if run.counting:
            return  # checked again once the statistics are counted
        run.completed = True
        self._log("complete", run)
        self._side(self._after_complete(run))

    async def _after_complete(self, run: Run) -> None:
        """The report and its notice, the completion command (once per run), then the seal
        (not for INPUT_DIR itself). A report that cannot be written is tried again at each
        rescan, and the run is not sealed before it is: a restart then reads the run back
        and writes it. A run found complete and reported is not reported again; its notice,
        if the webhook never took it, is sent."""
        reported = (run.output / REPORT_HTML).is_file()  # written last
        if run.touched or not reported:
            if not await self._write_report(run):
                return  # the run has work again: its next completion reports it
        else:
            notice = await asyncio.to_thread(runrecord.read_notice, run.output)
            if notice is not None:
                self._notices[run.output] = notice
                self._send_notices()
        if self.settings.on_run_complete:
            await self._run_completion_command(run)
        if run.path != HERE and run.phase() is RunPhase.COMPLETE:
            await asyncio.to_thread(self._seal, run)

    async def _write_report(self, run: Run) -> bool:
        """Write the run's report, trying again at each rescan until it is written (True), or
        until the run has work again (False)."""
        while run.completed:
            ledger = run.ledger or RunYield()
            raw_folders = [source.paths for source in run.sources.values()]
            try:
                notice = await asyncio.to_thread(
                    self._report_files, run.path, run.output, raw_folders, ledger
                )
            except OSError as error:
                log.error(
                    "run %s: could not write its report (%s); trying again in %g s",
                    run.path,
                    error,
                    self.settings.rescan_interval,
                )
                await asyncio.sleep(self.settings.rescan_interval)
                continue
            self._log("report", run, report=str(run.output / REPORT_HTML))
            if notice is not None:
                self._notices[run.output] = notice
                self._send_notices()
            return True
        return False

    def _report_files(
        self, path: str, output: Path, raw_folders: list[RunPaths], ledger: RunYield
    ) -> bytes | None:
        """Build the report, keep the notice that tells of it (with a webhook), then write the
        report: a crash after the report cannot lose its notice. Returns the notice. In a
        worker thread: it reads every done file's POD5 header."""
        report = build_run_report(path, output, raw_folders, ledger)
        notice = self.notifier.run_complete_message(path, report, str(output / REPORT_HTML))
        if notice is not None:
            runrecord.write_notice(output, notice)
        write_report(output, report)
        return notice

    def _send_notices(self) -> None:
        """Send each run_complete notice kept on disk that is not on its way already: when it
        is kept, at start-up, and at each rescan those the sender gave up on."""
        for output, body in self._notices.items():
            if output not in self._sending:
                self._sending.add(output)
                self.notifier.send(body, partial(self._notice_done, output, body))

    def _notice_done(self, output: Path, body: bytes, sent: bool) -> None:
        self._sending.discard(output)
        if sent and self._notices.get(output) is body:
            del self._notices[output]
            self._side(asyncio.to_thread(runrecord.remove_notice, output, body))

    async def _run_completion_command(self, run: Run) -> None:
        record = await asyncio.to_thread(runrecord.read_completion, run.output)
        if record is not None:
            if "exit_status" not in record:
                log.warning(
                    "run %s: its completion command was started by an earlier manager that "
                    "stopped before it ended; it is not run again",
                    run.path,
                )
            return
        words = fill(
            shlex.split(self.settings.on_run_complete or ""),
            {"run_path": run.path, "run_dir": str(run.folder), "output_dir": str(run.output)},
        )
        started = runrecord.now_text()
        await asyncio.to_thread(
            runrecord.write_completion, run.output, {"command": words, "started": started}
        )
        status: int | str
        timeout = self.settings.on_run_complete_timeout
        try:
            with open(run.output / COMPLETION_LOG, "ab") as output:
                # A session of its own, so that it is stopped with whatever it starts; the
                # manager's settings, its tokens among them, stay with the manager.
                process = await asyncio.create_subprocess_exec(
                    *words,
                    stdout=output,
                    stderr=output,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                    env={
                        key: value
                        for key, value in os.environ.items()
                        if not key.startswith("BCM_")
                    },
                )
                try:
                    status = await asyncio.wait_for(process.wait(), timeout)
                except TimeoutError:
                    await _kill_group(process)
                    status = f"timed out after {timeout:g} s: killed with its process group"
                except asyncio.CancelledError:  # the manager stops: the record keeps no status
                    await _kill_group(process)
                    self._log("command killed", run, reason="the manager stops")
                    raise
        except OSError as error:
            status = f"could not start: {error.strerror or error}"
        await asyncio.to_thread(
            runrecord.write_completion,
            run.output,
            {
                "command": words,
                "started": started,
                "ended": runrecord.now_text(),
                "exit_status": status,
            },
        )
        self._log("command ended", run, exit_status=str(status))

    def _seal(self, run: Run) -> None:
        """Fold a complete run into its seal, when every raw file below it is one its raw
        folders hold done or quarantined; else it stays unsealed, and the watcher or the
        rescan serves what is there. In a worker thread: it lists the run's folders, and the
        state machines' dicts are only read."""
        try:
            own, nested = discovery.survey(self.input_root, self.layout, run.path)
        except OSError as error:
            log.warning("run %s: not sealed, a folder could not be read (%s)", run.path, error)
            return
        for folder in own:
            unaccounted = self._unaccounted(run, folder)
            if unaccounted:
                self._log("not sealed", run, folder=folder.path, unaccounted=unaccounted)
                return
        seal = runrecord.Seal(
            run=run.path,
            folders={folder.path: folder.mtime_ns for folder in own},
            digests={folder.path: folder.digest() for folder in own},
            raw_folders=tuple(folder.path for folder in own if folder.raw),
            nested=tuple(nested),
            files={state.value: count for state, count in run.counts().items()},
            bytes={state.value: size for state, size in run.bytes().items()},
            final_summary=run.final_summary,
            sealed_at=runrecord.now_text(),
            ledger=None if run.ledger is None else run.ledger.to_record(),
        )
        try:
            runrecord.write_seal(run.output, seal)
        except OSError as error:
            log.error("run %s: could not write its seal (%s)", run.path, error)
            return
        self._log("sealed", run)
        run.sealed_here = True

    def _unaccounted(self, run: Run, folder: discovery.Folder) -> int:
        """How many raw files in ``folder`` its raw folder does not hold done or quarantined
        (all, when it is no raw folder of the run). A name that is no regular file (a symlink
        named like a raw file) is never offered and counts for nothing."""
        settled = (FileState.DONE, FileState.FAILED)
        source = run.sources.get(folder.path)
        names = [
            name
            for name in folder.raw
            if source is None or source.state.file_state(name) not in settled
        ]
        return len(scan.probe_many(self._absolute(folder.path), names))

    # -- background -------------------------------------------------------------------------

    async def _discover_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescan_interval)
            try:
                await self._discover()
                await self._drop_gone()
                for run in list(self.runs.values()):
                    await self._look_for_summary(run)
                    self._check_complete(run)  # a rescan may have found its last file gone
                self._send_notices()
            except OSError as error:
                log.error("discovery under %s failed: %s", self.input_root, error)

    async def _summary_forever(self) -> None:
        """One run served alone: its final summary is looked for at each rescan."""
        while True:
            for run in self.runs.values():
                await self._look_for_summary(run)
                self._check_complete(run)
            await asyncio.sleep(self.settings.rescan_interval)

    async def _watch(self) -> None:
        """One watcher for the folders of the root that matter: each folder discovery walked
        (raw folders and the folders above them) and the folders of sealed runs, each watched
        alone, not recursively, so that a root full of finished runs costs a watch per folder,
        not a walk of every file. Raw files go to their raw folder; raw files or a new folder
        in a folder not served yet go to discovery; final summaries to their run. When
        discovery adds folders, the watcher starts again with them. Where the kernel lets it
        watch fewer folders than there are (its inotify watch limit), it says so once and
        watches half as many, raw folders first, until the kernel agrees; the rescan finds
        what is new in the others, as it does on a network filesystem."""
        # What is written between start-up's discovery and the watcher's start is found by
        # one more look, once it watches.
        self._side(self._settle({HERE}))
        most: int | None = None  # the folders it may watch, once the kernel refused more
        while True:
            self._rewatch = asyncio.Event()
            ordered = sorted(self._watched, key=lambda path: (path not in self.sources, path))
            folders = [str(self._absolute(path)) for path in ordered[:most]]
            if not folders:
                del self._tasks["watcher"]  # not one folder can be watched: the rescan's alone
                return
            try:
                async for changes in awatch(
                    *folders,
                    watch_filter=_interesting,
                    recursive=False,
                    debounce=DEBOUNCE_MS,
                    step=STEP_MS,
                    stop_event=self._rewatch,
                    force_polling=False,
                ):
                    await self._changed(changes)
            except FileNotFoundError:
                # A watched folder went away: watch those that are left.
                self._watched = {path for path in self._watched if self._absolute(path).is_dir()}
            except OSError as error:
                if most is None:
                    log.warning(
                        "the watcher cannot watch all %d folders of the root (%s): it watches "
                        "as many as the kernel lets it, raw folders first, and what is new in "
                        "the others is found by the rescan, every BCM_RESCAN_INTERVAL (%g s); "
                        "the kernel's limit is fs.inotify.max_user_watches",
                        len(folders),
                        error,
                        self.settings.rescan_interval,
                    )
                most = len(folders) // 2

    def _absolute(self, path: str) -> Path:
        return self.input_root if path == HERE else self.input_root / path

    def _watch_also(self, folders: Iterable[str]) -> None:
        """Watch these folders too. What is written in them before the watcher has started
        again is found by a second look once it has (``_settle``)."""
        new = set(folders) - self._watched
        self._watched |= new
        if new and "watcher" in self._tasks:
            self._rewatch.set()
            self._side(self._settle(new))

    async def _settle(self, folders: set[str]) -> None:
        await asyncio.sleep(REWATCH_SECONDS)
        for folder in sorted(folders):
            source = self.sources.get(folder)
            if source is not None:
                await source.rescan()
            elif folder not in self._pending_sources:
                await self._discover(folder)

    async def _changed(self, changes: Iterable[tuple[Change, str]]) -> None:
        by_folder: dict[str, tuple[list[str], list[str]]] = {}
        summaries: set[str] = set()
        unknown: set[str] = set()
        for change, full in changes:
            folder = discovery.relative(self.input_root, os.path.dirname(full))
            if folder is None:
                continue
            name = os.path.basename(full)
            if not is_raw_name(name) and not is_final_summary_name(name):
                if change is Change.added and os.path.isdir(full):
                    unknown.add(discovery.join(folder, name))  # a new folder: what is in it?
                continue
            if is_final_summary_name(name):
                summaries.add(folder)
                self._summaries[folder] = full
                continue
            if folder not in self.sources:
                if change is not Change.deleted:
                    unknown.add(folder)
                continue
            written, deleted = by_folder.setdefault(folder, ([], []))
            (deleted if change is Change.deleted else written).append(name)
        for folder, (written, deleted) in by_folder.items():
            run = self.run_of.get(folder)
            if run is None:
                continue  # dropped as gone a moment ago
            if deleted and not os.path.lexists(self._absolute(folder)):
                self._gone(run)  # the raw folder went with its files: one line, not one a file
                continue
            await self.sources[folder].on_changes(sorted(set(written)), sorted(set(deleted)))
            run.touched = run.touched or bool(written)
            if written and run.completed and run.phase() is not RunPhase.COMPLETE:
                self._reopen(run, "new raw files")
            self._check_complete(run)  # its last pending file may have gone
        for folder in sorted(unknown):
            if folder in self.sources:
                continue
            self._watch_also([folder])
            await self._discover(folder)
        for folder in summaries:
            for run in self.runs.values():
                if folder in (run.path, discovery.parent_of(run.path)):
                    await self._look_for_summary(run)

    # -- what people and watchdogs ask ------------------------------------------------------

    def status(self, path: str | None = None) -> RunStatus:
        """The picture of every run together, or of run ``path`` alone, with the runs table.
        O(raw folders + live jobs + listed engines), never O(files)."""
        now = self.clock()
        runs = list(self.runs.values()) if path is None else [self.run(path)]
        sources = [(key, source) for run in runs for key, source in run.sources.items()]
        totals = _Totals()
        entries = [totals.add(self.entry(run, now)) for run in sorted(runs, key=_path)]
        for key, source in sources:
            totals.take(key, source)
        progress = _progress([source for _, source in sources], now)
        return self._picture(path, runs, progress, totals, now, entries)

    async def status_async(
        self, path: str | None, line: Callable[[RunEntry], _Done]
    ) -> tuple[RunStatus, list[_Done]]:
        """``status`` for the HTTP layer: its runs apart, each handed to ``line`` (which
        serialises it) as soon as it is made. The picture of every run is O(raw folders): a
        root of 1,000 runs held the loop 200 ms, so it is built in slices of ``SLICE`` runs
        and raw folders with the loop free between them. And its lines' objects die young:
        kept to the end, they outlived the collector's young generations and set off full
        collections that held the loop 35 to 55 ms. Each run's line is that run's at one
        instant; the totals are the sum of the lines."""
        if path is not None:
            picture = self.status(path)
            return picture.model_copy(update={"runs": []}), [line(each) for each in picture.runs]
        now = self.clock()
        runs = list(self.runs.values())
        totals = _Totals()
        lines = await _in_slices(
            sorted(runs, key=_path), lambda run: line(totals.add(self.entry(run)))
        )
        progress = Progress(now)

        def take(key: str, source: Manager) -> None:
            totals.take(key, source)
            progress.absorb(source.progress, now)

        await _in_slices(list(self.sources.items()), lambda each: take(*each))
        return self._picture(None, runs, progress, totals, now, []), lines

    def _picture(
        self,
        path: str | None,
        runs: list[Run],
        progress: Progress,
        totals: _Totals,
        now: float,
        entries: list[RunEntry],
    ) -> RunStatus:
        """The picture of ``runs`` (every run when ``path`` is None) from their ``totals``,
        with the lines ``entries``."""
        # The summary of the one run shown; every run's own is in its entry.
        summary = runs[0].final_summary if len(runs) == 1 else None
        return picture(
            progress,
            now,
            input_dir=str(runs[0].folder if path is not None else self.input_root),
            output_dir=str(runs[0].output if path is not None else self.output_root),
            ready=self.ready,
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
        progress = _progress(list(run.sources.values()), now)
        drain = progress.drain(now, counts)
        return RunEntry(
            path=run.path,
            phase=run.phase(),
            priority=run.priority,
            paused=run.paused,
            sealed=run.seal is not None or run.sealed_here,
            raw_folders=len(run.sources) if run.seal is None else len(run.seal.raw_folders),
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
            reads=None if (ledger := _ledger(run)) is None else ledger.status(),
        )

    def entries(self, *, live_only: bool = False) -> list[RunEntry]:
        now = self.clock()
        return [
            self.entry(run, now)
            for _, run in sorted(self.runs.items())
            if not (live_only and run.seal is not None)
        ]

    async def entries_async(self) -> list[RunEntry]:
        """Every run's line, in slices with the event loop free between them (``status_async``
        says why); each line at its own instant."""
        return await _in_slices(sorted(self.runs.values(), key=_path), self.entry)

    def totals(self) -> tuple[dict[FileState, int], dict[FileState, int]]:
        """Files and bytes by state over every run."""
        return _summed(list(self.runs.values()))

    def progress(self, now: float) -> Progress:
        """Every raw folder's progress together."""
        return _progress(list(self.sources.values()), now)

    def _log(self, event: str, run: Run, **facts: str | int | None) -> None:
        """One line for a run's event, with the run's file counts (as a raw folder's are)."""
        counts = {state.value: count for state, count in run.counts().items()}
        log_event(log, event, counts, logging.INFO, run=run.path, **facts)

    def inactivity(self) -> float:
        return self.clock() - self.last_activity

    def problems(self) -> list[str]:
        found = []
        if not os.access(self.input_root, os.R_OK | os.X_OK) or not self.input_root.is_dir():
            found.append(f"INPUT_DIR {self.input_root} is not a readable folder")
        for name, task in self._tasks.items():
            if task.done():
                found.append(f"the {name} has stopped")
        for path, source in self.sources.items():
            lines = source.problems()
            if lines and self.input_root.is_dir() and not os.path.lexists(self._absolute(path)):
                continue  # gone: dropped by the next discovery (``_drop_gone``), not a fault
            found += _named(path, lines)
        return list(dict.fromkeys(found))  # INPUT_DIR served alone says its own once

    def job_problems(self) -> list[str]:
        return [
            line
            for path, source in self.sources.items()
            for line in _named(path, source.job_problems())
        ]

    def phase(self) -> RunPhase:
        """The facility's phase, from every run's."""
        return _overall_phase(run.phase() for run in self.runs.values())


@dataclass(slots=True)
class _Totals:
    """What a picture of several runs sums, gathered one run's line and one raw folder at a
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

    def take(self, key: str, source: Manager) -> None:
        """Raw folder ``key``'s live jobs, quarantined files and job problems."""
        self.jobs += source.state.live_jobs()
        self.quarantined += (
            QuarantinedFile(
                file=discovery.join(key, name), failed_on=source.state.failed_alone(name)
            )
            for name in source.state.quarantined()
        )
        self.job_problems += _named(key, source.job_problems())


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


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Stop a command and every process it started in its process group: SIGTERM, and SIGKILL
    for what is left once the command ended or KILL_GRACE seconds passed."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal_number)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), KILL_GRACE)


def _ledger(run: Run) -> RunYield | None:
    """The run's ledger; a sealed run's is read from its seal the first time it is asked for."""
    seal = run.seal
    if run.ledger is None and seal is not None and seal.ledger is not None:
        try:
            run.ledger = RunYield.from_record(seal.ledger)
        except ValueError as error:
            log.warning("run %s: its seal's yield cannot be read (%s)", seal.run, error)
    return run.ledger


def _quarantined_among(source: Manager, names: list[str] | None) -> list[str]:
    """The files a retry of ``names`` (None: every quarantined file) sends back in ``source``,
    in the order it sends them."""
    if names is None:
        return source.state.quarantined()
    return list(
        dict.fromkeys(name for name in names if source.state.file_state(name) is FileState.FAILED)
    )


def _summed(runs: list[Run]) -> tuple[dict[FileState, int], dict[FileState, int]]:
    counts = dict.fromkeys(FileState, 0)
    sizes = dict.fromkeys(FileState, 0)
    for run in runs:
        for state, count in run.counts().items():
            counts[state] += count
        for state, size in run.bytes().items():
            sizes[state] += size
    return counts, sizes


def _progress(sources: list[Manager], now: float) -> Progress:
    """One raw folder's own progress, or several summed."""
    if len(sources) == 1:
        return sources[0].progress
    return Progress.merged((source.progress for source in sources), now)


def _named(path: str, problems: list[str]) -> list[str]:
    """A raw folder's problems, named by its path under a root."""
    return problems if path == HERE else [f"{path}: {problem}" for problem in problems]


def _interesting(change: Change, path: str) -> bool:
    """Raw files, final summaries, and new entries that may be folders to look into."""
    name = os.path.basename(path)
    if is_raw_name(name) or is_final_summary_name(name):
        return change is not Change.deleted or is_raw_name(name)
    return change is Change.added and discovery.looked_into(name)


def _job_ids_on_disk(folders: list[Path]) -> frozenset[str]:
    ids: set[str] = set()
    for folder in folders:
        with contextlib.suppress(OSError):
            for name in scan.names_in(folder):
                parsed = parse_job_folder(name)
                if parsed is not None:
                    ids.add(parsed.jobid)
    return frozenset(ids)


def _identity(folder: Path) -> tuple[int, int] | None:
    """A folder's device and inode, which stay when it is renamed; None when it is gone."""
    try:
        found = os.stat(folder)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _move_folder(old: Path, new: Path) -> bool:
    """Move a run's output folder from ``old`` to ``new`` (durably); False when ``new`` is
    taken. One that moved along with an enclosing run's output is where it should be."""
    if not os.path.lexists(old):
        return True
    if os.path.lexists(new):
        return False
    new.parent.mkdir(parents=True, exist_ok=True)
    os.rename(old, new)
    fsync_folder(old.parent)
    fsync_folder(new.parent)
    return True


def _batch_extras(run: Run) -> dict[str, object]:
    return {
        "run_path": run.path,
        "priority": run.priority,
        "model": run.settings.model,
        "modified_bases": run.settings.modified_bases,
        "kit": run.settings.kit,
    }


def _with_facts(batch: BCBatch, facts: Pod5Facts | None) -> BCBatch:
    """``batch`` with what its run's POD5 files say, when that is known."""
    if facts is None:
        return batch
    return batch.model_copy(
        update={
            "sample_rate": facts.sample_rate,
            "flow_cell_product": facts.flow_cell_product,
            "sequencing_kit": facts.sequencing_kit,
        }
    )
