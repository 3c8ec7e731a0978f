"""The facility: every run under INPUT_DIR, served by one pool of engines.

Rules:

- A run's core (``Manager``: one raw folder's state machine, folders, recovery and progress)
  knows nothing of other runs, nor of the other raw folders of its own run, and the facility
  only asks it (its front door), never reaches into it. The facility holds the runs
  (``runs.py``), finds them and serves their raw folders (``serving.py``, with
  ``discovery.py``), follows those that move (``moves.py``), watches the root
  (``watching.py``), gives each run its settings (``rules.py``), takes the protocol's calls
  to the right raw folder (``routing.py``, with ``scheduler.py``), knows when a run is
  finished, complete and sealed (``completion.py``, ``command.py``, ``runrecord.py``), takes
  an operator's changes (``operator.py``) and answers what people ask (``views.py``). The
  HTTP layer (``http/``) only calls this front.
- Every change of a run (found, finished, complete, sealed, unsealed, paused, moved, gone, ...)
  is an event (``events.py``) made where the change is made, and reaches the log and the
  webhook (``notify.py``) through one method, ``tell``: nothing tells of a run by hand.
- One misbehaving run never stalls the others: a raw folder whose recovery fails is reported
  and left out; a run's completion command runs in the background.

Theory of operation: start-up discovers the raw folders, reads each back from disk (sealed runs
are not read: their seal is), and listens. From then on one watcher and the rescans find what
changes (``watching.py``); an engine's ``assignwork`` goes to the scheduler; a run is finished
when its final summary is there, complete when finished with nothing waiting, pending or
leased, and then reported, its command run, and sealed. Each DONE job's statistics (what its
agent counted of its reads) go into its run's yield ledger, and a complete run gets its
report; ``notify.py`` tells a webhook of a run's end, a quarantined file, a benched engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, assert_never

from bcmanager.core.benching import Benching
from bcmanager.core.events import (
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
from bcmanager.core.jobs import FileState
from bcmanager.core.logs import log_event
from bcmanager.core.manager import Manager
from bcmanager.core.progress import Progress
from bcmanager.facility import discovery
from bcmanager.facility.completion import Completion, KeptNotices
from bcmanager.facility.discovery import HERE
from bcmanager.facility.events import RunEvent, RunFinished, RunReported, SealedRunsFound, line
from bcmanager.facility.moves import Mover
from bcmanager.facility.notify import Notifier
from bcmanager.facility.operator import Operator
from bcmanager.facility.routing import Router
from bcmanager.facility.rules import Rules
from bcmanager.facility.runs import Registry, Run
from bcmanager.facility.serving import Server
from bcmanager.facility.views import Views
from bcmanager.facility.watching import Watcher
from bcmanager.models import BCBatch, JobState, RunEntry, RunPhase, RunStatus
from bcmanager.paths import FolderKind, RunPaths, job_folder
from bcmanager.settings import Settings
from bcmanager.watcher import can_watch

log = logging.getLogger(__name__)

WATCH_AFTER_STEP = 0.05  # seconds between looks at whether the first scans are done

_Done = TypeVar("_Done")


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
        rules = rules if rules is not None else Rules.from_settings(settings)
        self.registry = Registry(self.input_root, self.output_root, rules, self.tell)
        self._given = manager
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.notifier = Notifier(None if settings.notify_url is None else str(settings.notify_url))
        self.notices = KeptNotices(self.notifier, self._in_background)
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
        self._started = False
        self._wire_parts(settings)

    def _wire_parts(self, settings: Settings) -> None:
        """The parts, each one concern, given what each needs of the others."""
        registry, ready = self.registry, lambda: self.ready
        self.completion = Completion(
            settings,
            registry,
            self.clock,
            self.notices,
            self._in_background,
            ready,
            alone=self._given is not None,
        )
        self.mover = Mover(registry, self._wire, self._watch_also)
        self.server = Server(
            settings,
            registry,
            self.completion,
            self.mover,
            self.benching,
            clock=self.clock,
            wire=self._wire,
            in_background=self._in_background,
            watch_also=self._watch_also,
            ready=ready,
        )
        self.watcher = Watcher(
            settings,
            registry,
            self.completion,
            self._tasks,
            self._in_background,
            discover=self.server.discover,
            drop_gone=self.server.drop_gone,
            gone=self.server.gone,
        )
        self.router = Router(settings, registry, self.paths, self.clock)
        self.operator = Operator(registry, self.completion.reopen, self.server.discover)
        self.views = Views(registry, self.clock, self.benching, ready, self._tasks)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Read every run back, then keep discovering, watching and rescanning. Returns (and
        the server listens) once each raw folder's jobs are adopted and its oldest files can
        be offered; each raw folder finishes its first scan in the background."""
        self.notifier.start()
        if self._given is not None:
            run = self.registry.add_run(HERE)
            await self.server.add_manager(run, HERE, self._given)
            self._spawn("final summary", self.watcher.summary_forever())
            self._started = True
            return
        await self.server.discover()
        self._started = True
        self._in_background(self.server.verify_seals())
        self._spawn("discovery", self.watcher.discover_forever())
        if not self.settings.force_polling and can_watch(self.input_root):
            self._spawn("watcher", self._watch_once_ready())

    async def _watch_once_ready(self) -> None:
        """Watch the root once every raw folder has finished its first scan: starting a watch
        makes the kernel mark each entry of a watched folder (0.1 s for a million), and the
        watcher's first look lists the root again; before, both would share the first offers'
        time. That first look finds what came meanwhile."""
        while not self.ready:
            await asyncio.sleep(WATCH_AFTER_STEP)
        await self.watcher.watch()

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._side_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for manager in self.registry.managers.values():
            await manager.stop()
        await self.notifier.stop()

    @property
    def ready(self) -> bool:
        """Once every raw folder served has finished its first scan."""
        return self._started and all(manager.ready for manager in self.registry.managers.values())

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = asyncio.create_task(work, name=name)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """A task the facility starts and forgets (a completion command), cancelled at stop;
        without an event loop (a tool ending jobs by hand) there is nothing to run it on."""
        try:
            task = asyncio.create_task(work)
        except RuntimeError:
            work.close()
            return
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _watch_also(self, folders: Iterable[str]) -> None:
        """``Watcher.watch_also``, for the parts made before the watcher (it needs them)."""
        self.watcher.watch_also(folders)

    # -- what follows runs ------------------------------------------------------------------

    def tell(self, event: RunEvent) -> None:
        """The one path of a run's change to all that follows runs: the log (one line, with
        the run's file counts, as a raw folder's are) and the webhook (a run's sequencing
        finished; its run_complete notice, kept on disk until the webhook took it)."""
        name, facts = line(event)
        run = None if isinstance(event, SealedRunsFound) else self.registry.runs.get(event.run)
        counts = {} if run is None else {state.value: n for state, n in run.counts().items()}
        log_event(log, name, counts, logging.INFO, **facts)
        if isinstance(event, RunFinished):
            self.notifier.sequencing_finished(event.run)
        elif isinstance(event, RunReported) and event.notice is not None:
            self.notices.keep(Path(event.report).parent, event.notice)  # the run's output

    def _wire(self, run: Run, path: str, manager: Manager) -> None:
        """Raw folder ``path`` of ``run`` hands the facility its events."""
        manager.listener = partial(self._raw_folder_event, run, path)

    def _raw_folder_event(self, run: Run, path: str, event: Event, facts: Facts) -> None:
        """An event of raw folder ``path``: a new raw file reopens a complete run, a job's end
        is the run's to count and check, an engine benched is told to the webhook; the rest is
        the raw folder's own."""
        match event:
            # What the facility does not take in first: a start-up sees a million files.
            case FileSeen(before=None):
                if run.completed:  # a new raw file, found by the watcher or by a rescan
                    self.completion.reopen(run, "new raw files")
                return
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
                | EndedFound()
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
        self.registry.jobs.pop(job.jobid, None)
        run.touched = True
        if outcome is JobState.DONE or (
            reason is not None and outcome in (JobState.FAILED, JobState.QUARANTINED)
        ):
            run.counting += 1
            kind = FolderKind.LOGOUTPUT if outcome is JobState.DONE else FolderKind.FAILEDOUTPUT
            self._in_background(
                self.completion.count_reads(run, [job_folder(kind, job.jobid, job.engine)])
            )
        elif outcome is JobState.QUARANTINED:
            for name in job.files:
                self.notifier.file_quarantined(
                    run.path, discovery.join(path, name), reason or "no record of why"
                )
        self.completion.check_complete(run)

    # -- the protocol -----------------------------------------------------------------------

    def assign(self, engine: str, batch_size: int) -> BCBatch:
        return self.router.assign(engine, batch_size)

    def keepalive(self, jobid: str, reported: JobState) -> bool:
        return self.router.keepalive(jobid, reported)

    def complete(self, jobid: str, outcome: JobState) -> None:
        self.router.complete(jobid, outcome)

    async def complete_async(self, jobid: str, outcome: JobState) -> None:
        await self.router.complete_async(jobid, outcome)

    def inactivity(self) -> float:
        """Seconds since the last protocol call, of any engine."""
        return self.clock() - self.router.last_activity

    # -- what an operator changes -----------------------------------------------------------

    async def retry(
        self,
        names: list[str] | None,
        record: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> list[str]:
        return await self.operator.retry(names, record)

    def run(self, path: str) -> Run:
        return self.registry.run(path)

    def set_priority(self, path: str, priority: int) -> Run:
        return self.operator.set_priority(path, priority)

    def set_paused(self, path: str, paused: bool) -> Run:
        return self.operator.set_paused(path, paused)

    # -- what people and watchdogs ask ------------------------------------------------------

    def status(self, path: str | None = None) -> RunStatus:
        return self.views.status(path)

    async def status_async(
        self, path: str | None, line: Callable[[RunEntry], _Done]
    ) -> tuple[RunStatus, list[_Done]]:
        return await self.views.status_async(path, line)

    def entry(self, run: Run, now: float | None = None) -> RunEntry:
        return self.views.entry(run, now)

    def entries(self, *, live_only: bool = False) -> list[RunEntry]:
        return self.views.entries(live_only=live_only)

    async def entries_async(self) -> list[RunEntry]:
        return await self.views.entries_async()

    def totals(self) -> tuple[dict[FileState, int], dict[FileState, int]]:
        return self.views.totals()

    def progress(self, now: float) -> Progress:
        return self.views.progress(now)

    def problems(self) -> list[str]:
        return self.views.problems()

    def job_problems(self) -> list[str]:
        return self.views.job_problems()

    def phase(self) -> RunPhase:
        return self.views.phase()
