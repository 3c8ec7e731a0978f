"""A run's end: finished (its final summary), complete, reported, its command run, sealed.

A run is finished when its final summary is there (and, when that names a number of raw files,
that many were seen); complete when finished with nothing waiting, pending or leased and its
DONE jobs' statistics counted. Then its report is written (its run_complete notice kept on
disk first, so a crash cannot lose it), its completion command runs once (``command.py``) and,
but for a run that is INPUT_DIR itself, it is sealed (``runrecord.py``). A complete run that
has work again is unsealed. Each of these changes is told (``events.py``) where it is made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from bcmanager.core import scan
from bcmanager.core.jobs import FileState
from bcmanager.facility import discovery, runrecord
from bcmanager.facility.command import run_completion_command
from bcmanager.facility.discovery import HERE, Layout
from bcmanager.facility.events import (
    NotSealed,
    RunComplete,
    RunFinished,
    RunReported,
    RunSealed,
    RunUnsealed,
    Tell,
)
from bcmanager.facility.notify import Notifier
from bcmanager.facility.report import write_report
from bcmanager.facility.runreport import build_run_report
from bcmanager.facility.runs import Registry, Run
from bcmanager.facility.yieldledger import RunYield, fold, read_job_output
from bcmanager.models import RunPhase
from bcmanager.paths import REPORT_HTML, RunPaths
from bcmanager.settings import Settings

log = logging.getLogger(__name__)

Background = Callable[[Coroutine[Any, Any, None]], None]
"""Starts a task the facility forgets (``Facility._in_background``)."""


class KeptNotices:
    """run_complete notices kept on disk until the webhook took them (by the run's output
    folder, where each is kept), and those on their way now."""

    def __init__(self, notifier: Notifier, in_background: Background) -> None:
        self.notifier = notifier
        self.in_background = in_background
        self._notices: dict[Path, bytes] = {}
        self._sending: set[Path] = set()

    def keep(self, output: Path, body: bytes) -> None:
        """A notice kept in ``output``: sent now, and again until the webhook takes it."""
        self._notices[output] = body
        self.send()

    def send(self) -> None:
        """Send each notice kept on disk that is not on its way already: when it is kept, at
        start-up, and at each rescan those the sender gave up on."""
        for output, body in self._notices.items():
            if output not in self._sending:
                self._sending.add(output)
                self.notifier.send(body, partial(self._done, output, body))

    def _done(self, output: Path, body: bytes, sent: bool) -> None:
        self._sending.discard(output)
        if sent and self._notices.get(output) is body:
            del self._notices[output]
            self.in_background(asyncio.to_thread(runrecord.remove_notice, output, body))


class Completion:
    """Knows when each run is finished and complete, and sees a complete one to its seal."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        clock: Callable[[], float],
        notices: KeptNotices,
        in_background: Background,
        ready: Callable[[], bool],
        *,
        alone: bool,
    ) -> None:
        """``alone``: INPUT_DIR is one raw folder served alone (its final summary is listed,
        not looked up in what the watcher saw)."""
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.notices = notices
        self.in_background = in_background
        self.ready = ready
        self.alone = alone
        self.layout = Layout(settings.run_folder, settings.discovery_depth)
        self.tell: Tell = registry.tell

    # -- finished ---------------------------------------------------------------------------

    def _summary_folders(self, run: Run) -> list[Path]:
        """Where MinKNOW writes the run's final summary: the run folder; for a run that is a
        raw folder itself (a pod5/ served alone), also the folder above it."""
        if run.path == HERE and self.settings.final_summary_dir is not None:
            return [self.settings.final_summary_dir.resolve()]
        if run.path in run.managers or (run.path == HERE and HERE in self.registry.managers):
            return [run.folder, run.folder.parent]
        return [run.folder]

    async def _find_summary(self, run: Run) -> Path | None:
        """The run's final summary: from what discovery and the watcher saw for its folders
        under INPUT_DIR; a folder outside INPUT_DIR (above a run that is INPUT_DIR, or
        BCM_FINAL_SUMMARY_DIR), and INPUT_DIR served alone, are listed."""
        outside = []
        input_root = self.registry.input_root
        for folder in self._summary_folders(run):
            path = None if self.alone else discovery.relative(input_root, folder)
            if path is None:
                outside.append(folder)
            elif path in self.registry.summaries:
                return Path(self.registry.summaries[path])
        return await asyncio.to_thread(scan.final_summary, outside) if outside else None

    async def look_for_summary(self, run: Run) -> None:
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
        self.tell(RunFinished(run.path, run.final_summary))
        for manager in run.managers.values():
            manager.sequencing_finished(run.final_summary)
        self.check_complete(run)

    # -- complete ---------------------------------------------------------------------------

    def check_complete(self, run: Run) -> None:
        if run.completed or run.seal is not None or run.phase() is not RunPhase.COMPLETE:
            return
        if run.counting:
            return  # checked again once the statistics are counted
        run.completed = True
        self.tell(RunComplete(run.path))
        self.in_background(self._after_complete(run))

    def reopen(self, run: Run, why: str) -> None:
        """A complete run has work again: it is no longer complete, nor sealed."""
        run.completed = run.sealed_here = False
        run.reopened += 1
        if run.path == HERE:
            return
        if run.seal is not None:
            run.yield_from_seal = run.read_ledger() is not None
        run.seal = None
        runrecord.remove_seal(run.output)
        self.tell(RunUnsealed(run.path, why))

    async def count_reads(self, run: Run, logs: list[str], *, after_start: bool = False) -> None:
        """DONE jobs' statistics, as their agents wrote them (kept with their log folders,
        named in ``logs``), read in a worker thread and counted in the run's ledger. What
        start-up found waits until every raw folder is ready, so that it slows no first
        offer."""
        try:
            while after_start and not self.ready():
                await asyncio.sleep(0.05)
            read = await asyncio.to_thread(
                lambda: [read_job_output(run.output / name) for name in logs]
            )
            ledger = run.read_ledger()
            if ledger is None:
                ledger = run.ledger = RunYield()
            for found in read:
                fold(ledger, found)
        finally:
            run.counting -= 1
        self.check_complete(run)

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
                self.notices.keep(run.output, notice)
        if self.settings.on_run_complete:
            await run_completion_command(self.settings, run, self.tell)
        if run.path != HERE and run.phase() is RunPhase.COMPLETE:
            reopened = run.reopened
            sealed = await asyncio.to_thread(self._seal, run)
            if run.reopened != reopened:
                if isinstance(sealed, RunSealed) and not run.sealed_here:
                    runrecord.remove_seal(run.output)  # new work came while it was written
                return
            if isinstance(sealed, RunSealed):
                run.sealed_here = True
            if sealed is not None:
                self.tell(sealed)

    # -- reported ---------------------------------------------------------------------------

    async def _write_report(self, run: Run) -> bool:
        """Write the run's report, trying again at each rescan until it is written (True), or
        until the run has work again (False)."""
        while run.completed:
            ledger = run.ledger or RunYield()
            raw_folders = [manager.paths for manager in run.managers.values()]
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
            self.tell(RunReported(run.path, str(run.output / REPORT_HTML), notice))
            return True
        return False

    def _report_files(
        self, path: str, output: Path, raw_folders: list[RunPaths], ledger: RunYield
    ) -> bytes | None:
        """Build the report, keep the notice that tells of it (with a webhook), then write the
        report: a crash after the report cannot lose its notice. Returns the notice. In a
        worker thread: it reads every done file's POD5 header."""
        report = build_run_report(path, output, raw_folders, ledger)
        notifier = self.notices.notifier
        notice = notifier.run_complete_message(path, report, str(output / REPORT_HTML))
        if notice is not None:
            runrecord.write_notice(output, notice)
        write_report(output, report)
        return notice

    # -- sealed -----------------------------------------------------------------------------

    def _seal(self, run: Run) -> RunSealed | NotSealed | None:
        """Fold a complete run into its seal, when every raw file below it is one its raw
        folders hold done or quarantined; else it stays unsealed, and the watcher or the
        rescan serves what is there. Returns what became of it (None: not sealed, logged). In
        a worker thread: it lists the run's folders, and the state machines' dicts are only
        read; the caller marks the run sealed, unless it had work again meanwhile."""
        try:
            own, nested = discovery.survey(self.registry.input_root, self.layout, run.path)
        except OSError as error:
            log.warning("run %s: not sealed, a folder could not be read (%s)", run.path, error)
            return None
        for folder in own:
            unaccounted = self._unaccounted(run, folder)
            if unaccounted:
                return NotSealed(run.path, folder.path, unaccounted)
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
            return None
        return RunSealed(run.path)

    def _unaccounted(self, run: Run, folder: discovery.Folder) -> int:
        """How many raw files in ``folder`` its raw folder does not hold done or quarantined
        (all, when it is no raw folder of the run). A name that is no regular file (a symlink
        named like a raw file) is never offered and counts for nothing."""
        settled = (FileState.DONE, FileState.FAILED)
        manager = run.managers.get(folder.path)
        names = [
            name
            for name in folder.raw
            if manager is None or manager.file_state(name) not in settled
        ]
        return len(scan.probe_many(self.registry.absolute(folder.path), names))
