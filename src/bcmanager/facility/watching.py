"""The facility's eyes: one watcher for the folders of the root, and the rescans.

One watcher, on each folder discovery walked, hands each raw folder the changes to its raw
files, sends a new folder, or raw files in a folder not served yet, to discovery, and notices
MinKNOW's final summary; a rescan does all of it again every ``BCM_RESCAN_INTERVAL`` seconds
for what events miss (network filesystems, and the folders of sealed runs, which are not
watched).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from watchfiles import Change, awatch

from bcmanager.facility import discovery
from bcmanager.facility.completion import Background, Completion, KeptNotices
from bcmanager.facility.discovery import HERE
from bcmanager.facility.runs import Registry, Run
from bcmanager.paths import is_final_summary_name, is_raw_name
from bcmanager.settings import Settings
from bcmanager.watcher import DEBOUNCE_MS, STEP_MS

log = logging.getLogger(__name__)

# Seconds after which a watcher that starts again with more folders surely watches them.
REWATCH_SECONDS = 0.2

Discover = Callable[[str], Awaitable[None]]


class Watcher:
    """Watches the folders of the root that matter, and rescans them."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        completion: Completion,
        tasks: dict[str, asyncio.Task[None]],
        in_background: Background,
        *,
        discover: Discover,
        drop_gone: Callable[[], Awaitable[None]],
        gone: Callable[[Run], None],
    ) -> None:
        """``tasks``: the facility's own, where the watcher is one while it runs."""
        self.settings = settings
        self.registry = registry
        self.completion = completion
        self.notices: KeptNotices = completion.notices
        self.tasks = tasks
        self.in_background = in_background
        self.discover = discover
        self.drop_gone = drop_gone
        self.gone = gone
        # Folders the watcher watches (paths under INPUT_DIR), and what tells it to start again
        # when there are more.
        self.watched: set[str] = {HERE}
        self._rewatch = asyncio.Event()

    async def discover_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rescan_interval)
            try:
                await self.rescan()
            except OSError as error:
                log.error("discovery under %s failed: %s", self.registry.input_root, error)

    async def rescan(self) -> None:
        """Look at the whole root again: new raw folders, those gone, final summaries, runs
        complete, and the notices the webhook has not taken yet."""
        await self.discover(HERE)
        await self.drop_gone()
        await self._summaries_and_ends()
        self.notices.send()

    async def summary_forever(self) -> None:
        """One run served alone: its final summary is looked for at each rescan."""
        while True:
            await self._summaries_and_ends()
            await asyncio.sleep(self.settings.rescan_interval)

    async def _summaries_and_ends(self) -> None:
        """Each run's final summary looked for, and whether it is complete (a look may have
        found its last file gone)."""
        for run in list(self.registry.runs.values()):
            await self.completion.look_for_summary(run)
            self.completion.check_complete(run)

    async def watch(self) -> None:
        """One watcher for the folders of the root that matter: each folder discovery walked
        (raw folders and the folders above them) and the folders of sealed runs, each watched
        alone, not recursively, so that a root full of finished runs costs a watch per folder,
        not a walk of every file. Raw files go to their raw folder; raw files or a new folder
        in a folder not served yet go to discovery; final summaries to their run. When
        discovery adds folders, the watcher starts again with them. Where the kernel lets it
        watch fewer folders than there are (its inotify watch limit), it says so once and
        watches half as many, raw folders first, until the kernel agrees; the rescan finds
        what is new in the others, as it does on a network filesystem."""
        # What came between start-up's discovery and the watcher's start is found by one more
        # look, once it watches.
        self.in_background(self._first_look())
        most: int | None = None  # the folders it may watch, once the kernel refused more
        while True:
            self._rewatch = asyncio.Event()
            folders = self._folders(most)
            if not folders:
                del self.tasks["watcher"]  # not one folder can be watched: the rescan's alone
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
                absolute = self.registry.absolute
                self.watched = {path for path in self.watched if absolute(path).is_dir()}
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

    def _folders(self, most: int | None) -> list[str]:
        """The folders to watch, raw folders first, ``most`` of them (None: all)."""
        managers = self.registry.managers
        ordered = sorted(self.watched, key=lambda path: (path not in managers, path))
        return [str(self.registry.absolute(path)) for path in ordered[:most]]

    def watch_also(self, folders: Iterable[str]) -> None:
        """Watch these folders too. What is written in them before the watcher has started
        again is found by a second look once it has (``_look_again``)."""
        new = set(folders) - self.watched
        self.watched |= new
        if new and "watcher" in self.tasks:
            self._rewatch.set()
            self.in_background(self._look_again(new))

    async def _first_look(self) -> None:
        """Raw files and folders written before the watcher started, and final summaries."""
        await self._look_again({HERE})
        await self._summaries_and_ends()

    async def _look_again(self, folders: set[str]) -> None:
        await asyncio.sleep(REWATCH_SECONDS)
        for folder in sorted(folders):
            manager = self.registry.managers.get(folder)
            if manager is not None:
                await manager.rescan()
            elif folder not in self.registry.pending_raw_folders:
                await self.discover(folder)

    async def _changed(self, changes: Iterable[tuple[Change, str]]) -> None:
        by_folder, summaries, unknown = self._sorted(changes)
        for folder, (written, deleted) in by_folder.items():
            await self._raw_files_changed(folder, written, deleted)
        for folder in sorted(unknown):
            if folder in self.registry.managers:
                continue
            self.watch_also([folder])
            await self.discover(folder)
        for folder in summaries:
            for run in self.registry.runs.values():
                if folder in (run.path, discovery.parent_of(run.path)):
                    await self.completion.look_for_summary(run)

    def _sorted(
        self, changes: Iterable[tuple[Change, str]]
    ) -> tuple[dict[str, tuple[list[str], list[str]]], set[str], set[str]]:
        """The changes by what they are: raw files written and deleted, by raw folder served;
        folders where a final summary was written; and folders to discover."""
        by_folder: dict[str, tuple[list[str], list[str]]] = {}
        summaries: set[str] = set()
        unknown: set[str] = set()
        for change, full in changes:
            folder = discovery.relative(self.registry.input_root, os.path.dirname(full))
            if folder is None:
                continue
            name = os.path.basename(full)
            if not is_raw_name(name) and not is_final_summary_name(name):
                if change is Change.added and os.path.isdir(full):
                    unknown.add(discovery.join(folder, name))  # a new folder: what is in it?
                continue
            if is_final_summary_name(name):
                summaries.add(folder)
                self.registry.summaries[folder] = full
                continue
            if folder not in self.registry.managers:
                if change is not Change.deleted:
                    unknown.add(folder)
                continue
            written, deleted = by_folder.setdefault(folder, ([], []))
            (deleted if change is Change.deleted else written).append(name)
        return by_folder, summaries, unknown

    async def _raw_files_changed(self, folder: str, written: list[str], deleted: list[str]) -> None:
        """Raw files of raw folder ``folder`` written or deleted."""
        run = self.registry.run_of.get(folder)
        if run is None:
            return  # dropped as gone a moment ago
        if deleted and not os.path.lexists(self.registry.absolute(folder)):
            self.gone(run)  # the raw folder went with its files: one line, not one a file
            return
        await self.registry.managers[folder].on_changes(sorted(set(written)), sorted(set(deleted)))
        run.touched = run.touched or bool(written)
        self.completion.check_complete(run)  # its last pending file may have gone


def _interesting(change: Change, path: str) -> bool:
    """Raw files, final summaries, and new entries that may be folders to look into."""
    name = os.path.basename(path)
    if is_raw_name(name) or is_final_summary_name(name):
        return change is not Change.deleted or is_raw_name(name)
    return change is Change.added and discovery.looked_into(name)
