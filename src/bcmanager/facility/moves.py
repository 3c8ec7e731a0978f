"""Runs and raw folders that an operator moved: followed to where they are now.

A raw folder served that turns up at another path (the same folder, by its device and inode)
is served from there with what the manager holds of it; a run whose every raw folder moved
into one new run folder moves whole, with its output folder. A run found at a path where no
manager served it, whose mark names another, moved while no manager followed it: its output
folder comes along then.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from bcmanager.core.manager import Manager
from bcmanager.facility import runrecord
from bcmanager.facility.discovery import HERE, Found
from bcmanager.facility.events import RunFollowed, RunMoved
from bcmanager.facility.runs import Registry, Run
from bcmanager.paths import RunPaths
from bcmanager.records import fsync_folder

log = logging.getLogger(__name__)

Wire = Callable[[Run, str, Manager], None]
"""Tells a raw folder's core which run and path it serves (``Facility._wire``)."""


class Mover:
    """Follows what moved among the raw folders of ``registry``."""

    def __init__(
        self, registry: Registry, wire: Wire, watch_also: Callable[[Iterable[str]], None]
    ) -> None:
        self.registry = registry
        self.wire = wire
        self.watch_also = watch_also

    async def moved(self, found: dict[str, Found]) -> dict[str, Found]:
        """The raw folders served that are now among ``found`` (the same folder, by its
        device and inode, gone from where it was served): old path -> where it is. One stat
        of each raw folder found, and of the old path of each that matches, in a worker
        thread."""
        absolute = self.registry.absolute
        served = {identity: path for path, identity in self.registry.identity.items()}
        if not found or not served:
            return {}

        def look() -> dict[str, Found]:
            moved = {}
            for path, each in found.items():
                identity = identity_of(absolute(path))
                old = served.get(identity) if identity is not None else None
                if old is not None and identity_of(absolute(old)) != identity:
                    moved[old] = each
            return moved

        return await asyncio.to_thread(look)

    async def follow(self, moved: dict[str, Found]) -> None:
        """Serve raw folders that an operator moved from where they are now, with what the
        manager holds of them: their files and job folders moved with them, so nothing is
        read again, nothing done is offered again, and the old paths are dropped. A run whose
        every raw folder moved into one new run folder moves whole, and its output folder
        with it. The jobs leased from a raw folder that moved are given back, since the
        folders their engines were told are no longer where they were."""
        by_run: dict[str, list[str]] = {}
        for old in sorted(moved):
            by_run.setdefault(self.registry.run_of[old].path, []).append(old)
        for path, olds in by_run.items():
            run = self.registry.runs[path]
            targets = {moved[old].run for old in olds}
            if set(olds) == set(run.managers) and len(targets) == 1:
                (target,) = targets
                if target != run.path and target not in self.registry.runs:
                    await self._move_run(run, target)
            for old in olds:
                await self._move_manager(old, moved[old])

    async def _move_run(self, run: Run, target: str) -> None:
        """Run ``run`` is at ``target`` now: so is its output folder, unless that cannot be."""
        registry = self.registry
        registry.tell(RunMoved(run.path, target))
        output = registry.output_root / target
        try:
            if await asyncio.to_thread(move_folder, run.output, output):
                run.output = output
            else:
                log.warning(
                    "run %s: %s is taken, so its output stays in %s", target, output, run.output
                )
        except OSError as error:
            log.error("run %s: its output stays in %s (%s)", target, run.output, error)
        del registry.runs[run.path]
        run.path, run.folder = target, registry.absolute(target)
        registry.runs[target] = run
        await asyncio.to_thread(runrecord.remove_seal, run.output)  # it names the old paths
        try:
            await asyncio.to_thread(runrecord.write_run_path, run.folder, target)
        except OSError as error:
            log.error("run %s: its mark could not follow it (%s)", target, error)
        self.watch_also([target])

    async def follow_mark(self, run: Run) -> None:
        """A run found at a path this manager did not serve it at: when the mark in its folder
        names another path, where no run folder is now, the run moved while no manager
        followed it (stopped, or killed before it saw the move), so its output folder comes
        along from there, as a move seen while serving brings it (before the raw folders'
        recovery looks for their jobs' output in it). Then the mark names where it is."""
        if run.path == HERE:
            return
        try:
            old = await asyncio.to_thread(self._follow_mark, run)
        except OSError as error:
            log.error("run %s: its mark or its output could not follow it (%s)", run.path, error)
            return
        if old is not None:
            self.registry.tell(RunFollowed(run.path, old))

    def _follow_mark(self, run: Run) -> str | None:
        """``follow_mark``'s disk work, in a worker thread: where the run moved from, when its
        output folder came along from there."""
        old = runrecord.read_run_path(run.folder)
        if old == run.path:
            return None
        moved = None
        if old is not None and not os.path.lexists(self.registry.absolute(old)):
            output = self.registry.output_root / old
            if not os.path.lexists(output):
                log.info("run %s: moved from %s, which had no output yet", run.path, old)
            elif move_folder(output, run.output):
                runrecord.remove_seal(run.output)  # it names the old paths
                moved = old
            else:
                log.warning(
                    "run %s: %s is taken, so its output stays in %s", run.path, run.output, output
                )
        runrecord.write_run_path(run.folder, run.path)
        return moved

    async def _move_manager(self, old: str, found: Found) -> None:
        """Raw folder ``old`` is ``found.raw_folder`` now, in run ``found.run``."""
        registry = self.registry
        manager = registry.managers.pop(old)
        run = registry.run_of.pop(old)
        del run.managers[old]
        new = registry.runs.get(found.run) or registry.add_run(found.run)
        path = found.raw_folder
        manager.move_to(
            RunPaths(registry.absolute(path), new.output, registry.input_root, registry.output_root)
        )
        registry.identity[path] = registry.identity.pop(old)
        for real, served in registry.linked.items():
            if served == old:
                registry.linked[real] = path
        registry.serve(new, path, manager)
        self.wire(new, path, manager)
        if not run.managers and run is not new:
            registry.tell(RunMoved(run.path, new.path))
            del registry.runs[run.path]
        await asyncio.to_thread(manager.prepare_output)  # a run's output folder, if new
        await manager.give_back()


def identity_of(folder: Path) -> tuple[int, int] | None:
    """A folder's device and inode, which stay when it is renamed; None when it is gone."""
    try:
        found = os.stat(folder)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def move_folder(old: Path, new: Path) -> bool:
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
