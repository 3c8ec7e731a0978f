"""The job loop: ask for a batch, run the basecaller on it while its lease is kept, record the
attempt and, after a basecaller that succeeded, the job's read statistics, report how it ended,
ask again, until told to stop (the package's docstring says what it does when things go wrong).
"""

from __future__ import annotations

import asyncio
import logging
import random
import shlex
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import NoReturn, TypeVar

import httpx

from bcmanager import paths
from bcmanager.agent.basecaller import (
    CANNOT_EXECUTE,
    RECORD_WRITE_TIMEOUT,
    STATS_CANCEL_GRACE,
    STDERR_DRAIN_TIMEOUT,
    Attempt,
    StderrTee,
    exit_status,
    signal_group,
    start_basecaller,
    stderr_summary,
    utc_now,
    write_attempt,
)
from bcmanager.agent.client import Assignment, Lease, LeaseEnd, ManagerClient, resolve_job
from bcmanager.agent.errors import (
    AgentError,
    BasecallerCannotRun,
    ConfigurationError,
    TooManyFailures,
)
from bcmanager.agent.events import event
from bcmanager.agent.settings import AgentSettings, render_command, split_template
from bcmanager.models import JobState
from bcmanager.reads import stats as readstats

FOLDER_VISIBILITY_TIMEOUT = 5.0
"""Seconds to wait for a new job folder to show up on this node (NFS caches directory lookups)."""

_T = TypeVar("_T")


class Agent:
    """One GPU node's worker loop, with its HTTP client, clock and randomness injectable."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: AgentSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
        stderr: int = 2,
    ) -> None:
        """``stderr``: the file descriptor the basecaller's stderr is passed on to."""
        self._settings = settings
        self._words = split_template(settings.command)
        self._manager = ManagerClient(client, settings, clock=clock, draw=draw)
        self._clock = clock
        self._stop = asyncio.Event()
        self._child: asyncio.subprocess.Process | None = None
        self._jobid = "-"
        self._failures_in_a_row = 0
        self._stderr = stderr

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, reason: str) -> None:
        """Finish as soon as possible: stop the basecaller, give its batch back, return."""
        self._event("stopping", self._jobid, reason=reason)
        self._stop.set()

    def kill_child_now(self) -> None:
        """SIGKILL the basecaller's group without waiting: the way out of a second signal."""
        if self._child is not None and self._child.returncode is None:
            signal_group(self._child.pid, signal.SIGKILL)

    async def run(self) -> None:
        """Ask for work and do it until told to stop or, with ``until_empty``, none is left."""
        while not self.stopping:
            asked = await self._unless_stopping(self._manager.ask())
            if asked is None:
                break
            reply, asked_at = asked
            if not reply.has_work:
                if self._settings.until_empty:
                    self._event("no work left, exiting")
                    return
                await self._pause(self._settings.poll_interval)
                continue
            self._event("got batch", reply.jobid, files=len(reply.batch))
            lease = Lease(reply.report_back_interval, asked_at + reply.report_back_interval)
            self._jobid = reply.jobid
            try:
                job = resolve_job(reply, self._settings.input_dir, self._settings.output_dir)
                await self._wait_visible(job)
            except AgentError:
                await self._manager.give_back(reply.jobid, lease)
                raise
            try:
                await self._work_on(job, lease)
            finally:
                self._jobid = "-"
        self._event("stopped")

    async def _work_on(self, job: Assignment, lease: Lease) -> None:
        """Run the basecaller on one job, record the attempt and report how it ended, unless
        the lease was lost."""
        if self.stopping:
            await self._manager.give_back(job.jobid, lease)
            return
        argv = render_command(self._words, job.placeholders(self._settings.engine_id))
        command = shlex.join(argv)
        attempt = Attempt(job.jobid, self._settings.engine_id, argv, utc_now(), self._clock())
        try:
            process, tee = await start_basecaller(argv, self._stderr)
        except (OSError, ValueError) as error:  # ValueError: a NUL byte in a word
            await self._cannot_start(job, lease, attempt, error)
        self._child = process
        self._event("started basecaller", job.jobid, pid=process.pid, command=command)
        try:
            ending = await self._watch(job, process, lease)
            if isinstance(ending, LeaseEnd):
                # No record and no report: the output folder is the manager's now.
                self._event(f"dropping job: {ending.value}", job.jobid, level=logging.WARNING)
                await self._stop_child(job, process)
                return
            if ending is None:
                await self._stop_child(job, process)
        finally:
            if process.returncode is None:
                await self._stop_child(job, process)
            self._child = None
        await self._end_attempt(job, lease, attempt, process.returncode, tee, ending is None)

    async def _cannot_start(
        self, job: Assignment, lease: Lease, attempt: Attempt, error: Exception
    ) -> NoReturn:
        """The command did not even start: record why, give the batch back, stop the agent."""
        reason = f"cannot start `{shlex.join(attempt.command)}`: {error}"
        record = attempt.record(
            outcome=JobState.STOPPED,
            returncode=None,
            ended_at=self._clock(),
            ended=utc_now(),
            error=reason,
        )
        await self._record(job, lease, record)
        await self._manager.give_back(job.jobid, lease)
        raise BasecallerCannotRun(self._cannot_run(reason)) from error

    async def _end_attempt(
        self,
        job: Assignment,
        lease: Lease,
        attempt: Attempt,
        returncode: int | None,
        tee: StderrTee,
        stopped: bool,
    ) -> None:
        """Record the attempt of a basecaller that has ended, then report the job.

        STOPPED (the batch given back) when the agent stopped it, when it failed while the agent
        is stopping (Slurm signals the basecaller too: its death says nothing about the batch),
        or when a shell says it cannot run the command; else DONE or FAILED by its exit code.
        """
        ended_at, ended = self._clock(), utc_now()
        if not await tee.drained(self._budget(lease, STDERR_DRAIN_TIMEOUT)):
            self._event(
                "the basecaller left a process holding its stderr; recording the tail so far",
                job.jobid,
                level=logging.WARNING,
            )
        exit_code, signal_name = exit_status(returncode)
        last_line = stderr_summary(tee.tail)[1]
        cannot_run = None
        if stopped or (self.stopping and returncode != 0):
            state = JobState.STOPPED
        elif exit_code in CANNOT_EXECUTE:
            state = JobState.STOPPED
            command = shlex.join(attempt.command)
            cannot_run = f"`{command}` exited {exit_code} (a shell's {CANNOT_EXECUTE[exit_code]!r})"
            if last_line:
                cannot_run += f": {last_line}"
        else:
            state = JobState.DONE if exit_code == 0 else JobState.FAILED
        self._event(
            "basecaller exited",
            job.jobid,
            code=exit_code,
            signal=signal_name,
            seconds=f"{ended_at - attempt.started_at:.1f}",
            stderr_last_line=repr(last_line) if last_line and exit_code != 0 else None,
        )
        record = attempt.record(
            outcome=state,
            returncode=returncode,
            ended_at=ended_at,
            ended=ended,
            tail=tee.tail,
            stderr_bytes=tee.total,
            error=cannot_run,
        )
        await self._record(job, lease, record)
        if state is JobState.STOPPED:
            await self._manager.give_back(job.jobid, lease)
            if cannot_run is not None:
                raise BasecallerCannotRun(self._cannot_run(cannot_run))
            return
        if state is JobState.DONE and (lost := await self._record_stats(job, lease, attempt)):
            self._event(f"dropping job: {lost.value}", job.jobid, level=logging.WARNING)
            return
        await self._manager.complete(job.jobid, state, self._clock() + self._settings.give_up_after)
        if state is JobState.DONE:
            self._failures_in_a_row = 0
            return
        self._failures_in_a_row += 1
        limit = self._settings.max_failures_in_a_row
        if limit and self._failures_in_a_row >= limit:
            last = f"last exit code {exit_code}" if signal_name is None else f"last {signal_name}"
            if last_line:
                last += f" ({last_line!r})"
            jobs = f"{self._failures_in_a_row} job{'s' if self._failures_in_a_row > 1 else ''}"
            raise TooManyFailures(f"{jobs} in a row failed on this node: {last}, stopping")

    def _budget(self, lease: Lease, most: float) -> float:
        """Seconds a step between the basecaller's end and the job's report may take (no
        keepalive is sent meanwhile): ``most``, or a quarter of what is left of the lease."""
        return max(0.2, min(most, (lease.deadline - self._clock()) / 4))

    def _cannot_run(self, reason: str) -> str:
        return f"this node cannot run the basecaller: {reason}; its batch was given back"

    async def _record(self, job: Assignment, lease: Lease, record: Mapping[str, object]) -> None:
        """Write the record of an attempt; if the folder cannot take it, say so and go on."""
        timeout = self._budget(lease, RECORD_WRITE_TIMEOUT)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(write_attempt, job.output_dir, record), timeout
            )
        except TimeoutError:
            problem = f"no answer from the disk in {timeout:.1f} s"
        except OSError as error:
            problem = str(error)
        else:
            return
        self._event(
            f"could not write {paths.ATTEMPT_FILE} in {job.output_dir}: {problem}",
            job.jobid,
            level=logging.WARNING,
        )

    async def _record_stats(
        self, job: Assignment, lease: Lease, attempt: Attempt
    ) -> LeaseEnd | None:
        """Read the job's reads (``readstats``) in a worker thread, keeping the lease meanwhile,
        for at most ``stats_timeout`` seconds and not once a stop is requested (then the thread
        is told to stop, and given a moment to finish with what it has read), and write
        ``paths.STATS_FILE``. Never fails the job: a problem is logged. Returns why the lease
        was lost, if it was: then nothing is written (the folder is the manager's)."""
        if not self._settings.stats_timeout:
            return None
        cancel = threading.Event()
        work = asyncio.create_task(
            asyncio.to_thread(readstats.job_stats, job.output_dir, attempt.command, cancel=cancel)
        )
        keeper = asyncio.create_task(self._manager.keep_lease(job, lease, JobState.PROCESSING))
        stop = asyncio.create_task(self._stop.wait())
        started = self._clock()
        try:
            await asyncio.wait(
                (work, keeper, stop),
                timeout=self._settings.stats_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not work.done():
                cancel.set()
                await asyncio.wait((work,), timeout=STATS_CANCEL_GRACE)
        finally:
            keeper.cancel()
            stop.cancel()
            await asyncio.gather(keeper, stop, return_exceptions=True)
        if not keeper.cancelled():
            return keeper.result()
        seconds = f"{self._clock() - started:.1f}"
        if not work.done():
            problem = "reading the reads did not stop"
        elif (error := work.exception()) is not None:
            problem = str(error)
        else:
            stats = work.result()
            timeout = self._budget(lease, RECORD_WRITE_TIMEOUT)
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(readstats.write_job_stats, job.output_dir, stats), timeout
                )
            except TimeoutError:
                problem = f"no answer from the disk in {timeout:.1f} s"
            except (OSError, ValueError) as error:
                problem = str(error)
            else:
                self._event(
                    f"wrote {paths.STATS_FILE}",
                    job.jobid,
                    seconds=seconds,
                    files=len(stats["files"]),
                    errors=len(stats["errors"]) or None,
                    cut_short=True if cancel.is_set() else None,
                )
                return None
        self._event(
            f"could not write {paths.STATS_FILE}: {problem}",
            job.jobid,
            level=logging.WARNING,
            seconds=seconds,
        )
        return None

    async def _watch(
        self, job: Assignment, process: asyncio.subprocess.Process, lease: Lease
    ) -> LeaseEnd | int | None:
        """Keep the lease until the first of: the lease is lost (why), the basecaller exits (its
        exit code), a stop is requested (None). No keepalive is in flight once this returns, so
        none can race the report of the job's end."""
        keeper = asyncio.create_task(self._manager.keep_lease(job, lease))
        exited = asyncio.create_task(process.wait())
        stop = asyncio.create_task(self._stop.wait())
        tasks = (keeper, exited, stop)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not keeper.cancelled():
            return keeper.result()
        if not exited.cancelled():
            return exited.result()
        return None

    async def _stop_child(self, job: Assignment, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the basecaller's whole group, SIGKILL whatever is left after the grace.

        The group, not the pid: wrapper scripts and Dorado start children of their own, and a
        GPU held by an orphan is lost to the next job. The final SIGKILL goes to the group even
        when the leader obeyed SIGTERM, for children that ignored it.
        """
        self._event("stopping basecaller", job.jobid, pid=process.pid)
        signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._settings.stop_grace)
        except TimeoutError:
            self._event("basecaller ignored SIGTERM, killing", job.jobid, level=logging.WARNING)
        signal_group(process.pid, signal.SIGKILL)
        await process.wait()

    async def _wait_visible(self, job: Assignment) -> None:
        """Wait until this node sees the job's folders, or fail with what to check."""
        deadline = self._clock() + FOLDER_VISIBILITY_TIMEOUT
        while not (job.input_dir.is_dir() and job.output_dir.is_dir()):
            if self._clock() >= deadline:
                missing = job.input_dir if not job.input_dir.is_dir() else job.output_dir
                raise ConfigurationError(
                    f"job folder {missing} does not exist on this node: is INPUT_DIR/OUTPUT_DIR "
                    "mounted elsewhere here? Give --input-dir and --output-dir"
                )
            await asyncio.sleep(0.2)

    async def _pause(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _unless_stopping(self, work: Awaitable[_T]) -> _T | None:
        """The result of ``work``, or None when a stop request comes first (``work`` cancelled)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return None

    def _event(
        self, what: str, jobid: str = "-", *, level: int = logging.INFO, **details: object
    ) -> None:
        event(self._settings.engine_id, what, jobid, level=level, **details)
