"""The protocol's calls, each taken to the raw folder it concerns.

An engine's ``assignwork`` goes to the scheduler: among the raw folders with pending files, of
runs not paused, it chooses the one that leases a batch, and the batch's bytes
(``scheduler.py`` says by which rules). Job ids are unique across the facility (random
128-bit), so a keepalive or a completion reaches the raw folder that leased the job without
the engine saying which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bcmanager.core.manager import Manager, batch_reply
from bcmanager.core.state import LeaseExpired, UnknownJob
from bcmanager.facility.pod5facts import Pod5Facts, read_facts
from bcmanager.facility.runs import Registry, Run
from bcmanager.facility.scheduler import Queue, batch_bytes, choose
from bcmanager.models import BCBatch, JobState
from bcmanager.paths import RunPaths
from bcmanager.settings import Settings

FACTS_ATTEMPTS = 3
"""Files of a run read for what its POD5 files say before it goes without (damaged files, or
stand-ins that only look complete)."""


class Router:
    """Leases, keepalives and completions, for every raw folder of the registry."""

    def __init__(
        self, settings: Settings, registry: Registry, paths: RunPaths, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.paths = paths
        self.clock = clock
        self.last_activity = clock()  # the last protocol call, of any engine

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
            manager = self.registry.managers[chosen.key]
            run = self.registry.run_of[chosen.key]
            try:
                batch = manager.assign(
                    engine, batch_size, batch_bytes(chosen, engines), _batch_extras(run)
                )
            except FileNotFoundError:
                if manager.paths.input_dir.is_dir():
                    raise
                continue  # gone with its run, moved or deleted: followed or dropped soon
            if batch.batch:
                self.registry.jobs[batch.jobid] = manager
                return _with_facts(batch, _facts(run, manager.paths.input_dir / batch.batch[0]))
        return self._nothing(engine)

    def _nothing(self, engine: str) -> BCBatch:
        """No work. A run served alone says so itself, as it always did (it counts the
        engine's call); under a root, an engine's calls count where it holds or ends a job."""
        if len(self.registry.managers) == 1:
            ((path, manager),) = self.registry.managers.items()
            if not self.registry.run_of[path].paused:
                return manager.assign(engine, 0)
        return batch_reply(self.settings, self.paths, engine)

    def _queues(self) -> list[Queue]:
        """The raw folders with pending files, of runs not paused, as the scheduler sees them."""
        queues = []
        for run in self.registry.runs.values():
            if run.paused or not run.managers:
                continue
            pending = [
                (key, manager) for key, manager in run.managers.items() if manager.has_pending()
            ]
            if not pending:
                continue
            run_pending = sum(manager.pending_bytes() for _, manager in pending)
            for key, manager in pending:
                queues.append(
                    Queue(
                        key=key,
                        priority=run.priority,
                        waited=manager.waited() or 0.0,
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
        for manager in self.registry.managers.values():
            engines |= manager.engines_since(now - window, now)
        return len(engines)

    def _source_of(self, jobid: str) -> Manager:
        manager = self.registry.jobs.get(jobid)
        if manager is not None:
            return manager
        for manager in self.registry.managers.values():
            if manager.has_job(jobid):
                return manager
        raise UnknownJob(f"job {jobid} is not known to this manager")

    def keepalive(self, jobid: str, reported: JobState) -> bool:
        self.last_activity = self.clock()
        try:
            manager = self._source_of(jobid)
        except UnknownJob:
            return True  # not ours (any more): the engine stops it
        return manager.keepalive(jobid, reported)

    def complete(self, jobid: str, outcome: JobState) -> None:
        self.last_activity = self.clock()
        self._source_of(jobid).complete(jobid, outcome)

    async def complete_async(self, jobid: str, outcome: JobState) -> None:
        self.last_activity = self.clock()
        manager = self._source_of(jobid)
        try:
            await manager.complete_async(jobid, outcome)
        except FileNotFoundError:
            if await asyncio.to_thread(manager.paths.input_dir.is_dir):
                raise
            # Its run moved or went, unseen yet: nothing changed, and once the watcher or the
            # rescan sees it the job is given back, as a late one is.
            raise LeaseExpired(
                f"job {jobid}: its run moved or went; its files go to others"
            ) from None


def _facts(run: Run, raw_file: Path) -> Pod5Facts | None:
    """What the run's POD5 files say: read from ``raw_file`` (a few milliseconds: its run-info
    table, not its signal) unless known, or FACTS_ATTEMPTS files did not read."""
    if run.facts is None and run.facts_attempts < FACTS_ATTEMPTS:
        run.facts_attempts += 1
        run.facts = read_facts(raw_file)
    return run.facts


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
