"""Which raw folders are served: found by discovery, read back, and dropped when gone.

Discovery (``discovery.py``) walks the root in a worker thread; each raw folder it finds that
is not served yet is read back by a core of its own (``Manager``) and served from then on. A
sealed run whose folders are unchanged is not entered, nor read back: its seal stands for it,
and once every raw folder is ready each seal is compared whole with the run's folders. A raw
folder gone (deleted, or moved out of the root) is dropped, and a run left with none with it;
one that moved within the root is followed (``moves.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from bcmanager.core import scan
from bcmanager.core.benching import Benching
from bcmanager.core.manager import Manager
from bcmanager.facility import discovery, runrecord
from bcmanager.facility.completion import Background, Completion, KeptNotices
from bcmanager.facility.discovery import HERE, Found, Layout
from bcmanager.facility.events import RawFoldersGone, RunGone, SealedRunsFound
from bcmanager.facility.moves import Mover, Wire, identity_of
from bcmanager.facility.runs import Registry, Run
from bcmanager.models import RunPhase
from bcmanager.paths import FolderKind, RunPaths, parse_job_folder
from bcmanager.settings import Settings

log = logging.getLogger(__name__)


class Server:
    """Finds the raw folders of the root, serves each, and drops those gone."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        completion: Completion,
        mover: Mover,
        benching: Benching,
        *,
        clock: Callable[[], float],
        wire: Wire,
        in_background: Background,
        watch_also: Callable[[Iterable[str]], None],
        ready: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.completion = completion
        self.mover = mover
        self.benching = benching
        self.clock = clock
        self.wire = wire
        self.in_background = in_background
        self.watch_also = watch_also
        self.ready = ready
        self.notices: KeptNotices = completion.notices
        self.layout = Layout(settings.run_folder, settings.discovery_depth)
        self._discovering = asyncio.Lock()
        # The first discovery's listings of the raw folders go to their recovery, which
        # follows at once; later ones are dropped as listed (most raw folders are served).
        self._first_discovery = True

    async def add_manager(
        self,
        run: Run,
        path: str,
        given: Manager | None = None,
        listing: scan.InputListing | None = None,
    ) -> None:
        """Read one raw folder back and start serving it. Its recovery leaves alone the
        output of the jobs of its run's other raw folders, found on disk or known live, and
        starts from discovery's ``listing`` of it when there is one."""
        registry = self.registry
        folder = registry.absolute(path)
        on_disk = _job_ids_on_disk(registry.sibling_folders(run, path))
        manager = given or Manager(
            self.settings,
            clock=self.clock,
            paths=RunPaths(folder, run.output, registry.input_root, registry.output_root),
            own_watcher=False,
            benching=self.benching,
            siblings=lambda: on_disk | run.job_ids(but=path),
            # A raw folder gone from a readable root is for discovery to drop (or to follow,
            # where it moved), not an error of each rescan.
            on_gone=registry.input_root.is_dir,
        )
        self.wire(run, path, manager)
        try:
            await manager.start(listing)
        except OSError as error:
            log.error("raw folder %s cannot be served (%s); the other runs go on", path, error)
            return
        # The DONE jobs recovery found; those that end from now on are counted as they end.
        logs = manager.outputs_ended_at_start()
        if not run.yield_from_seal:
            run.counting += 1
            self.in_background(self.completion.count_reads(run, logs, after_start=True))
        registry.serve(run, path, manager)
        identity = identity_of(folder)
        if identity is not None:
            registry.identity[path] = identity
        for job in manager.live_jobs():
            registry.jobs[job.jobid] = manager
        if run.finished:
            manager.sequencing_finished(run.final_summary or "")

    def gone(self, run: Run) -> None:
        """Stop serving the raw folders of ``run`` that are gone (an operator deleted them, or
        moved them out of INPUT_DIR), with one line of the log; a run left with none, or a
        sealed run whose folder is gone, is dropped whole, so that it holds neither /heartbeat
        nor the facility's phase. Its leased jobs are unknown from now on: their keepalives
        answer late. Nothing is dropped while INPUT_DIR itself cannot be read: /heartbeat says
        so, and a root that comes back is served as it was."""
        registry = self.registry
        if registry.runs.get(run.path) is not run or not registry.input_root.is_dir():
            return
        gone = [path for path in run.managers if not os.path.lexists(registry.absolute(path))]
        if not gone and (run.managers or os.path.lexists(run.folder)):
            return
        if len(gone) < len(run.managers):
            registry.tell(RawFoldersGone(run.path, tuple(gone)))
        else:
            registry.tell(RunGone(run.path))
            del registry.runs[run.path]
            registry.summaries.pop(run.path, None)
        for path in gone:
            self.in_background(registry.forget(run, path).stop())

    async def drop_gone(self) -> None:
        """``gone`` for every run that lost a raw folder, or its folder when sealed; the raw
        folders are looked for in a worker thread (on a network filesystem a stat can take
        milliseconds, and a root holds thousands of raw folders)."""
        absolute = self.registry.absolute
        runs = [(run, [absolute(path) for path in run.managers]) for run in self.runs()]

        def losing() -> list[Run]:
            return [
                run
                for run, folders in runs
                if not all(map(os.path.lexists, folders or [run.folder]))
            ]

        for run in await asyncio.to_thread(losing):
            self.gone(run)

    def runs(self) -> list[Run]:
        return list(self.registry.runs.values())

    async def discover(self, below: str = HERE) -> None:
        """Find raw folders not served yet (below ``below`` only, after an event) and serve
        them. Sealed runs are checked by their seal, not read; one that changed is unsealed
        and read whole."""
        registry = self.registry
        async with self._discovering:
            found = await self._walk(below)
            for path in sorted({each.run for each in found}):
                run = registry.runs.get(path)
                if run is not None and run.seal is not None:
                    self.completion.reopen(run, "its folders changed")
                    if below != HERE:
                        found += await self._walk(path)
            self._first_discovery = False
            unserved = {
                each.raw_folder: each for each in found if each.raw_folder not in registry.managers
            }
            moved = await self.mover.moved(unserved)
            if moved:
                await self.mover.follow(moved)
            new = {
                path: each
                for path, each in unserved.items()
                if path not in registry.managers and not self._served_elsewhere(each)
            }
            registry.pending_raw_folders = {path: each.run for path, each in new.items()}
            read: list[Run] = []
            try:
                for _, each in sorted(new.items()):
                    run = registry.runs.get(each.run)
                    if run is None:
                        run = registry.add_run(each.run)
                        await self.mover.follow_mark(run)
                    read.append(run)
                    await self.add_manager(run, each.raw_folder, listing=each.listing)
                    if run.completed and run.phase() is not RunPhase.COMPLETE:
                        self.completion.reopen(run, "a new raw folder")
                    await self.completion.look_for_summary(run)
            finally:
                registry.pending_raw_folders = {}
                for run in read:
                    run.yield_from_seal = False  # its raw folders are read back

    def _served_elsewhere(self, found: Found) -> bool:
        """Whether ``found`` is reached through a link that leads where another raw folder
        served already leads: it is not served twice, or its files would be basecalled twice.
        Said once in the log."""
        if not found.linked:
            return False
        registry = self.registry
        real = os.path.realpath(registry.absolute(found.raw_folder))
        first = registry.linked.setdefault(real, found.raw_folder)
        if first == found.raw_folder:
            return False
        if found.raw_folder not in registry.named:
            registry.named.add(found.raw_folder)
            log.warning(
                "raw folder %s leads to %s, which is served as %s: not served twice",
                found.raw_folder,
                real,
                first,
            )
        return True

    async def _walk(self, below: str) -> list[Found]:
        """Discovery below a folder (in a worker thread). A sealed run whose folders are
        unchanged is not entered: its seal stands for it, and the rescan, not the watcher,
        looks at its folders (a watch per folder of every finished run would cost each start
        of the watcher). The folders walked are watched from now on."""
        registry = self.registry
        visited: list[str] = []
        seals: dict[str, runrecord.Seal] = {}
        summaries: dict[str, str] = {}
        notices: dict[Path, bytes] = {}
        found = await asyncio.to_thread(
            partial(discovery.discover, listings=self._first_discovery),
            registry.input_root,
            self.layout,
            partial_sealed(registry, seals, notices, self.notices.notifier.url is not None),
            below,
            visited,
            summaries,
        )
        registry.summaries.update(summaries)
        sealed_now = [path for path in sorted(seals) if path not in registry.runs]
        for path in sealed_now:
            seal = seals[path]
            # A sealed run is one line of the log for all of them, its yield read when shown.
            run = registry.add_run(path, quiet=True)
            run.seal, run.final_summary, run.ledger = seal, seal.final_summary, None
            run.finished = run.completed = True
        if sealed_now:
            registry.tell(SealedRunsFound(tuple(sealed_now)))
        for output, notice in notices.items():
            self.notices.keep(output, notice)
        self.notices.send()
        self.watch_also(visited)
        return found

    async def verify_seals(self) -> None:
        """Once every raw folder is ready, list each sealed run's folders and compare them
        whole with its seal, one run at a time in a worker thread: a change that kept the
        folders' modification times is found by this start too, and the run read back."""
        while not self.ready():
            await asyncio.sleep(0.05)
        for run in self.runs():
            seal = run.seal
            if seal is None:
                continue
            why = await asyncio.to_thread(_seal_broken, self.registry.input_root, run.output, seal)
            if why is not None and run.seal is seal:
                self.completion.reopen(run, why)
                await self.discover(run.path)


def partial_sealed(
    registry: Registry,
    seals: dict[str, runrecord.Seal],
    notices: dict[Path, bytes],
    webhook: bool,
) -> Callable[[str], tuple[str, ...] | None]:
    """What discovery asks of each run folder it meets (in its worker thread): the runs nested
    in the sealed run at that path whose seal holds; None to walk the folder as any other.
    The seals of runs not served yet go into ``seals``, their kept notices (with a
    ``webhook``) into ``notices``."""

    def sealed(path: str) -> tuple[str, ...] | None:
        run = registry.runs.get(path)  # only read here: the loop owns the runs
        if run is not None:
            seal = run.seal
            held = seal is not None and runrecord.still_holds(registry.input_root, seal)
            return seal.nested if seal is not None and held else None
        if path == HERE:
            return None
        output = registry.output_root / path
        seal = runrecord.read_seal(output, path)
        if seal is None or not runrecord.still_holds(registry.input_root, seal):
            return None
        seals[path] = seal
        if webhook and (notice := runrecord.read_notice(output)):
            notices[output] = notice
        return seal.nested

    return sealed


def _seal_broken(input_root: Path, output: Path, seal: runrecord.Seal) -> str | None:
    """Why a sealed run is read back (None: its seal stands): a raw file or folder below it
    that the seal does not hold, or a job's output folder in its output, which an engine
    wrote after its job ended (a sealed run has none live), and which only the run's
    recovery sets aside."""
    if not runrecord.verify(input_root, seal):
        return "a raw file or folder below it is not in its seal"
    try:
        listing = scan.list_output(output)
    except OSError:
        return None
    if any(folder.kind is FolderKind.TMPOUTPUT for folder in listing.job_folders):
        return "a job's output written after the job ended"
    return None


def _job_ids_on_disk(folders: list[Path]) -> frozenset[str]:
    ids: set[str] = set()
    for folder in folders:
        with contextlib.suppress(OSError):
            for name in scan.names_in(folder):
                parsed = parse_job_folder(name)
                if parsed is not None:
                    ids.add(parsed.jobid)
    return frozenset(ids)
