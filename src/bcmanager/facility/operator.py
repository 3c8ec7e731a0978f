"""What an operator changes of the runs: sends quarantined files back, pauses or resumes a
run, gives it a priority. Each change of a run is told (``events.py``) where it is made."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bcmanager.core.jobs import FileState
from bcmanager.core.manager import Manager
from bcmanager.facility import discovery
from bcmanager.facility.discovery import HERE
from bcmanager.facility.events import PriorityChanged, RunPaused, RunResumed
from bcmanager.facility.runs import Registry, Run

Reopen = Callable[[Run, str], None]
Discover = Callable[[str], Awaitable[None]]


class Operator:
    """An operator's changes to the runs of ``registry``."""

    def __init__(self, registry: Registry, reopen: Reopen, discover: Discover) -> None:
        """``reopen``: a complete run has work again; ``discover``: read a run's folders back
        (a sealed run that is unsealed)."""
        self.registry = registry
        self.reopen = reopen
        self.discover = discover

    async def retry(
        self,
        names: list[str] | None,
        record: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> list[str]:
        """Send quarantined files back: ``names`` are raw file names, or paths relative to
        INPUT_DIR for a file in a raw folder below it; None sends all. A sealed run with
        quarantined files is read back from its folders first. ``record`` (the operator's
        log) is told which files will be sent back before any is: if it raises, none is."""
        for run in list(self.registry.runs.values()):
            if run.seal is not None and run.seal.files.get(FileState.FAILED.value):
                self.reopen(run, "an operator sends files back")
                await self.discover(run.path)
        targets = await self._targets(names)
        if record is not None:
            await record(
                [
                    discovery.join(path, name)
                    for path, manager, mine in targets
                    for name in manager.quarantined(mine)
                ]
            )
        sent: list[str] = []
        for path, manager, mine in targets:
            retried = await manager.retry(mine)
            sent += [discovery.join(path, name) for name in retried]
            if retried:
                run = self.registry.run_of[path]
                if run.completed:
                    self.reopen(run, "an operator sent files back")
        return sent

    async def _targets(
        self, names: list[str] | None
    ) -> list[tuple[str, Manager, list[str] | None]]:
        """The raw folders a retry of ``names`` concerns, each with the names of its files
        among them (None: all)."""
        targets: list[tuple[str, Manager, list[str] | None]] = []
        # A raw folder gone with its run (deleted or moved away, not dropped yet by the watcher
        # or the rescan) has nothing to send back; listing it would fail the whole retry.
        managers = list(self.registry.managers.items())
        here = await asyncio.to_thread(
            lambda: [manager.paths.input_dir.is_dir() for _, manager in managers]
        )
        for (path, manager), there in zip(managers, here, strict=True):
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
            targets.append((path, manager, mine))
        return targets

    def set_priority(self, path: str, priority: int) -> Run:
        run = self.registry.run(path)
        run.priority = priority
        self.registry.tell(PriorityChanged(run.path, priority))
        return run

    def set_paused(self, path: str, paused: bool) -> Run:
        run = self.registry.run(path)
        run.paused = paused
        self.registry.tell(RunPaused(run.path) if paused else RunResumed(run.path))
        return run
