"""The reference GPU-node agent: asks the manager for batches and runs the site's basecaller.

The successor of the original BCProcessor. It speaks the four routes of docs/protocol.md, so it also
works against the original manager, which does not tell where its folders are: give
``--input-dir`` and ``--output-dir`` then.

One job at a time: ask /assignwork, run the command template on the batch, keep the lease alive
with /keepalive every half ``report_back_interval`` while the basecaller runs, write the record of
the attempt (``paths.ATTEMPT_FILE``: exit code, signal, run time, the tail of stderr) at the top of
the job's output folder, and after a basecaller that succeeded the job's read statistics
(``paths.STATS_FILE``, ``readstats``, keeping the lease meanwhile), report /completed DONE or
FAILED by its exit code, ask again. What it does when things go wrong:

- a failed call (connection error, timeout, 5xx) is retried with capped, jittered exponential
  backoff, so a manager restart or a network blip shorter than the lease costs nothing; the
  basecaller carries on meanwhile;
- ``{"late": true}``, or the lease running out with no keepalive getting through, means the work
  is someone else's now: the basecaller's whole process group is stopped and the job is dropped
  without /completed;
- a 409 on /completed means the same, found out later: logged, and the agent moves on;
- SIGTERM or SIGINT (Slurm preemption) stops the basecaller, gives the batch back with
  /completed STOPPED and exits 0; a second signal exits at once;
- a command this node cannot run (it cannot start, or exits 126 or 127, the shell's "cannot
  execute" and "not found") says nothing about the batch: it is given back with STOPPED and the
  agent exits 3, so that a misconfigured node fails no file;
- ``max_failures_in_a_row`` FAILED jobs in a row (a DONE resets the count) make the agent stop
  asking for work and exit 4: a node that fails everything should not fail the whole run.

The basecaller is a command template split like a POSIX shell would (shlex) and run without a
shell; see ``TEMPLATE_HELP``.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import os
import random
import shlex
import signal
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    PositiveFloat,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bcmanager import paths
from bcmanager.models import JobState
from bcmanager.reads import stats as readstats
from bcmanager.records import write_record
from bcmanager.template import fill
from bcmanager.urls import base_url

log = logging.getLogger(__name__)

ENV_PREFIX = "BCM_AGENT_"
ENV_ONLY = frozenset({"api_token"})  # secrets: a command-line flag would show in ps
RUN_PLACEHOLDERS = (
    "run_path",
    "model",
    "modified_bases",
    "kit",
    "sample_rate",
    "flow_cell_product",
    "sequencing_kit",
)
"""The keys of a batch's run that a template may name: empty when the manager did not send them."""
PLACEHOLDERS = ("input_dir", "output_dir", "jobid", "engine_id", *RUN_PLACEHOLDERS)
FOLDER_VISIBILITY_TIMEOUT = 5.0
"""Seconds to wait for a new job folder to show up on this node (NFS caches directory lookups)."""
STDERR_TAIL_BYTES = 4096
"""The end of the basecaller's stderr kept for the record of an attempt; the rest only passes."""
STDERR_LAST_LINE_CHARS = 300
STDERR_DRAIN_TIMEOUT = 2.0
"""Seconds to wait, once the basecaller has exited, for the rest of its stderr: a process it left
running may hold the pipe open for ever (that one's stderr is still passed on afterwards)."""
RECORD_WRITE_TIMEOUT = 5.0
"""Seconds writing the record of an attempt may take (a hung network mount must not keep the
batch from being reported)."""
STATS_CANCEL_GRACE = 2.0
"""Seconds the statistics get, once told to stop, to write what they have read."""
CANNOT_EXECUTE = {126: "found but cannot be executed", 127: "command not found"}
"""Exit codes by which a POSIX shell says it could not run a command at all."""

EXIT_CONFIGURATION = 2
EXIT_CANNOT_RUN = 3
EXIT_FAILURES_IN_A_ROW = 4
EXIT_HELP = """\
Exit codes:
  0      stopped by SIGTERM or SIGINT (the batch given back), or no work left (--until-empty)
  1      the manager unreachable for --give-up-after seconds, or answering outside the protocol
  2      a bad setting, or the job folders are not where this node looks (--input-dir)
  3      this node cannot run the basecaller: the command cannot start (not found, not
         executable) or exits 126 or 127; the batch is given back, nothing is marked failed
  4      --max-failures-in-a-row jobs failed in a row on this node
  128+N  a second signal N: exited at once
"""

TEMPLATE_HELP = """\
The command template is split into words like a POSIX shell would (shlex), then these
placeholders are replaced inside each word; any other text, braces included, stays as it is:
  {input_dir}   absolute path of the job's folder of POD5 symlinks (INPUT_DIR/ASSIGNED_...,
                or INPUT_DIR/<run>/pod5/ASSIGNED_... under a root of runs)
  {output_dir}  absolute path of the job's output folder (OUTPUT_DIR/[<run>/]TMPOUTPUT_...); the
                basecaller writes its FASTQ under pass/ and fail/ in it
  {jobid}       the job id
  {engine_id}   this agent's engine id
The batch's run, as the manager says (empty when it does not, e.g. an older manager):
  {run_path}           the run's folder relative to INPUT_DIR ("." when INPUT_DIR is the run)
  {model}              the basecalling model its runs file gives the run
  {modified_bases}     the modified bases its runs file gives the run
  {kit}                the kit its runs file gives the run
  {sample_rate}        samples per second, as the run's POD5 files say
  {flow_cell_product}  the flow cell product code the POD5 files name (FLO-PRO114M)
  {sequencing_kit}     the sequencing kit the POD5 files name (SQK-LSK114)
So one pool of agents basecalls each run with its own model:
  --command 'dorado_run.sh {input_dir} {output_dir} {model} {modified_bases}'
The command runs without a shell, in a process group of its own (the agent stops the whole
group). Exit code 0 reports the job DONE, anything else FAILED, except 126 and 127 (a shell's
"cannot execute" and "not found"): those, and a command that cannot start, mean this node cannot
run the basecaller, so the batch is given back and the agent exits 3. The command's stderr
passes through to the agent's; its last 4 KiB, the exit code, signal and run time are written
to bcm-attempt.json at the top of the job's output folder before the job is reported.

The original BCProcessor's convention `script INPUT OUTPUT MODEL`:
  --command 'run_dorado.sh {input_dir} {output_dir} sup'
Pipelines and redirections need a shell. Give it the paths as positional parameters rather
than inside the script, so that a path with spaces stays one word:
  --command 'sh -c "mkdir -p \\"$2/pass\\" && dorado basecaller sup \\"$1\\" --emit-fastq
             > \\"$2/pass/reads.fastq\\"" sh {input_dir} {output_dir}'
(one line; broken here to fit)
"""

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


class AgentSettings(BaseSettings):
    """How one agent finds its manager and runs its basecaller; CLI flags override the env."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    manager: HttpUrl = Field(
        description="The manager's address: HOST:PORT or a URL, e.g. http://host:40765."
    )
    engine_id: str = Field(description="This engine's id; ends up in folder names.")
    command: str = Field(description="Basecaller command template (see below).")
    batch_size: int = Field(0, description="Files to ask for per batch; 0: the manager's default.")
    poll_interval: PositiveFloat = Field(10.0, description="Seconds to wait when there is no work.")
    until_empty: bool = Field(False, description="Exit 0 as soon as the manager has no work.")
    input_dir: Path | None = Field(None, description="INPUT_DIR as mounted on this node.")
    output_dir: Path | None = Field(None, description="OUTPUT_DIR as mounted on this node.")
    stop_grace: PositiveFloat = Field(
        10.0, description="Seconds between SIGTERM and SIGKILL when stopping the basecaller."
    )
    request_timeout: PositiveFloat = Field(10.0, description="Seconds one HTTP request may take.")
    retry_max_delay: PositiveFloat = Field(10.0, description="Longest wait between two retries.")
    give_up_after: PositiveFloat = Field(
        600.0, description="Seconds to keep retrying /assignwork or /completed before giving up."
    )
    max_failures_in_a_row: int = Field(
        3,
        ge=0,
        description="Stop asking for work (exit 4) after this many FAILED jobs in a row; "
        "a DONE resets the count; 0: never stop.",
    )
    stats_timeout: float = Field(
        300.0,
        ge=0,
        description=f"Seconds reading a done job's reads for {paths.STATS_FILE} may take "
        "(the lease is kept meanwhile); 0: no statistics.",
    )
    api_token: SecretStr | None = Field(
        None, description="The manager's BCM_API_TOKEN, sent as a bearer token."
    )
    ca_file: Path | None = Field(
        None,
        description="PEM file of the CA (or self-signed certificate) that an https manager's "
        "certificate must verify against; unset: the system's CAs. Never unchecked.",
    )

    @field_validator("manager", mode="before")
    @classmethod
    def _manager_as_typed(cls, value: object) -> object:
        return base_url(value) if isinstance(value, str) else value

    @field_validator("engine_id")
    @classmethod
    def _engine_id_is_a_folder_name_part(cls, value: str) -> str:
        if not paths.is_engine_id(value):
            raise ValueError("only letters, digits, '.', '-' and '_' (at most 100), never a path")
        return value

    @field_validator("command")
    @classmethod
    def _command_splits(cls, value: str) -> str:
        split_template(value)
        return value

    @field_validator("api_token", "ca_file", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("input_dir", "output_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.absolute()


def split_template(template: str) -> list[str]:
    """The template's words, split before substitution so that a path with spaces stays whole."""
    words = shlex.split(template)
    if not words:
        raise ValueError("the command is empty")
    return words


def render_command(words: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argv of one job: the placeholders replaced in each word, all else verbatim."""
    return fill(words, {name: values[name] for name in PLACEHOLDERS if name in values})


class BatchReply(BaseModel):
    """A /assignwork reply (BCBatch), reduced to the keys the agent reads."""

    model_config = ConfigDict(extra="ignore")

    jobid: str
    report_back_interval: PositiveFloat
    job_input_dir: str
    job_output_dir: str
    batch_size: int
    batch: list[str]
    input_dir: Path | None = None
    output_dir: Path | None = None
    run_path: str = ""
    model: str = ""
    modified_bases: str = ""
    kit: str = ""
    sample_rate: int | None = None
    flow_cell_product: str = ""
    sequencing_kit: str = ""

    @property
    def has_work(self) -> bool:
        return self.batch_size > 0 and bool(self.batch)

    def run_values(self) -> dict[str, str]:
        """The values of RUN_PLACEHOLDERS, "" for those the manager left out."""
        values = {name: getattr(self, name) for name in RUN_PLACEHOLDERS}
        return {name: "" if value is None else str(value) for name, value in values.items()}


class KeepaliveReply(BaseModel):
    late: bool


class AgentError(Exception):
    """The agent cannot go on; the message says why, for the operator."""

    exit_code = 1


class ConfigurationError(AgentError):
    """This node is set up wrongly (paths, command): asking again would fail the same way."""

    exit_code = EXIT_CONFIGURATION


class BasecallerCannotRun(ConfigurationError):
    """The command cannot start here, or a shell says it cannot run it (exit 126 or 127)."""

    exit_code = EXIT_CANNOT_RUN


class TooManyFailures(AgentError):
    """Job after job failed on this node: the node, not the batches, is the likely cause."""

    exit_code = EXIT_FAILURES_IN_A_ROW


class ManagerUnreachable(AgentError):
    """Retrying a call ran out of time."""


class ProtocolViolation(AgentError):
    """The manager answered outside the contract of docs/protocol.md."""


@dataclass(frozen=True, slots=True)
class Job:
    """One batch as this node sees it: where its folders are and how long its lease lasts."""

    jobid: str
    input_dir: Path
    output_dir: Path
    lease: float
    run: Mapping[str, str]  # the values of RUN_PLACEHOLDERS

    def placeholders(self, engine_id: str) -> dict[str, str]:
        return {
            "input_dir": str(self.input_dir),
            "output_dir": str(self.output_dir),
            "jobid": self.jobid,
            "engine_id": engine_id,
            **self.run,
        }


def resolve_job(reply: BatchReply, input_dir: Path | None, output_dir: Path | None) -> Job:
    """Place a batch on this node's filesystem: the flags win over the manager's own paths."""
    input_root = input_dir or reply.input_dir
    output_root = output_dir or reply.output_dir
    if input_root is None or output_root is None:
        raise ConfigurationError(
            "the manager did not say where INPUT_DIR and OUTPUT_DIR are (an original "
            "manager?): give them with --input-dir and --output-dir"
        )
    for name in (reply.job_input_dir, reply.job_output_dir):
        # Under a root of runs the job folder sits in its run's folders: subfolders, but never
        # a way out of the root.
        parts = name.split("/")
        if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ProtocolViolation(f"job folder {name!r} is not a folder below the root")
    return Job(
        jobid=reply.jobid,
        input_dir=input_root / reply.job_input_dir,
        output_dir=output_root / reply.job_output_dir,
        lease=reply.report_back_interval,
        run=reply.run_values(),
    )


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between retries: doubling from ``first`` up to ``cap``, with jitter."""

    first: float = 0.5
    cap: float = 10.0

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds before retry ``attempt`` (0-based), given a uniform ``draw`` in [0, 1).

        The jitter keeps between half and all of the step, so that agents cut off by the same
        manager restart do not all come back at the same instant.
        """
        step = min(self.cap, self.first * 2.0 ** min(attempt, 32))
        return step * (0.5 + draw / 2)


@dataclass(slots=True)
class Lease:
    """This node's conservative view of a lease: it ends ``length`` s after the last keepalive
    that got through, counted from when that keepalive was sent."""

    length: float
    deadline: float

    def renew(self, sent_at: float) -> None:
        self.deadline = max(self.deadline, sent_at + self.length)


@dataclass(frozen=True, slots=True)
class Answer:
    response: httpx.Response
    sent_at: float


class LeaseEnd(enum.Enum):
    """Why the agent dropped a job without reporting it."""

    LATE = "the manager says the job is late"
    REJECTED = "the manager rejected the keepalive"
    UNREACHABLE = "the lease ran out with no keepalive getting through"


class StderrTee(asyncio.Protocol):
    """The reading end of the basecaller's stderr: each chunk goes on to the agent's own stderr
    as it comes, and only the last ``limit`` bytes are kept, however much the basecaller prints.

    A pipe of our own rather than asyncio's ``stderr=PIPE``: with that, ``Process.wait()`` would
    wait until every process holding the pipe is gone, and a helper the basecaller left running
    would keep the job (and its lease) open for ever.
    """

    def __init__(self, sink: int, limit: int = STDERR_TAIL_BYTES) -> None:
        self._sink: int | None = sink
        self._limit = limit
        self._tail = bytearray()
        self.total = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, sink: int) -> tuple[StderrTee, asyncio.BaseTransport, int]:
        """A tee reading a new pipe, its transport, and the pipe's writing end for the child
        (the caller closes that once the child has it)."""
        read_end, write_end = os.pipe()
        try:
            pipe = os.fdopen(read_end, "rb", buffering=0)
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        try:
            transport, tee = await asyncio.get_running_loop().connect_read_pipe(
                lambda: cls(sink), pipe
            )
        except BaseException:
            pipe.close()
            os.close(write_end)
            raise
        return tee, transport, write_end

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        self._echo(data)
        self._tail += data[-self._limit :]
        del self._tail[: -self._limit]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the end of the stream; True if it came."""
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        return self.closed.done()

    @property
    def tail(self) -> bytes:
        return bytes(self._tail)

    def _echo(self, data: bytes) -> None:
        """Write all of ``data`` to the sink, as the basecaller would have; a sink that fails
        is dropped (the tail is still kept, and the pipe still drained)."""
        view = memoryview(data)
        while view and self._sink is not None:
            try:
                written = os.write(self._sink, view)
            except InterruptedError:
                continue
            except OSError:
                self._sink = None
                return
            view = view[written:]


def stderr_summary(tail: bytes) -> tuple[str, str]:
    """The tail of stderr as text, and its last non-empty line (bounded)."""
    text = tail.decode("utf-8", errors="replace")
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    if len(last) > STDERR_LAST_LINE_CHARS:
        last = last[: STDERR_LAST_LINE_CHARS - 1] + "\u2026"
    return text, last


def exit_status(returncode: int | None) -> tuple[int | None, str | None]:
    """(exit code, signal name) of a return code as asyncio gives it: -N for signal N."""
    if returncode is None:
        return None, None
    if returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name
    except ValueError:
        return None, f"SIG{-returncode}"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of the basecaller on a job, from just before it was started."""

    jobid: str
    engine: str
    command: list[str]
    started: str
    started_at: float

    def record(
        self,
        *,
        outcome: JobState,
        returncode: int | None,
        ended_at: float,
        ended: str,
        tail: bytes = b"",
        stderr_bytes: int = 0,
        error: str | None = None,
    ) -> dict[str, object]:
        """The JSON object of ``paths.ATTEMPT_FILE`` (documented in docs/reliability.md)."""
        exit_code, signal_name = exit_status(returncode)
        stderr_tail, last_line = stderr_summary(tail)
        return {
            "jobid": self.jobid,
            "engine": self.engine,
            "command": self.command,
            "outcome": outcome.value,
            "exit_code": exit_code,
            "signal": signal_name,
            "seconds": max(0.0, ended_at - self.started_at),
            "started": self.started,
            "ended": ended,
            "stderr_tail": stderr_tail,
            "stderr_last_line": last_line,
            "stderr_bytes": stderr_bytes,
            "error": error,
        }


def write_attempt(folder: Path, record: Mapping[str, object]) -> None:
    """Write the record at the top of ``folder`` (``records.write_record``)."""
    write_record(
        folder, paths.ATTEMPT_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    )


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
        self._client = client
        self._settings = settings
        self._words = split_template(settings.command)
        self._backoff = Backoff(cap=settings.retry_max_delay)
        self._clock = clock
        self._draw = draw
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
            _signal_group(self._child.pid, signal.SIGKILL)

    async def run(self) -> None:
        """Ask for work and do it until told to stop or, with ``until_empty``, none is left."""
        while not self.stopping:
            asked = await self._unless_stopping(self._ask())
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
                await self._give_back(reply.jobid, lease)
                raise
            try:
                await self._work_on(job, lease)
            finally:
                self._jobid = "-"
        self._event("stopped")

    async def _work_on(self, job: Job, lease: Lease) -> None:
        """Run the basecaller on one job, record the attempt and report how it ended, unless
        the lease was lost."""
        if self.stopping:
            await self._give_back(job.jobid, lease)
            return
        argv = render_command(self._words, job.placeholders(self._settings.engine_id))
        command = shlex.join(argv)
        attempt = Attempt(job.jobid, self._settings.engine_id, argv, _utc_now(), self._clock())
        tee, pipe, write_end = await StderrTee.open(self._stderr)
        try:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stderr=write_end,
                    start_new_session=True,
                )
            finally:
                os.close(write_end)  # the child has its copy: the pipe ends when the child's does
        except (OSError, ValueError) as error:  # ValueError: a NUL byte in a word
            pipe.close()
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
        self, job: Job, lease: Lease, attempt: Attempt, error: Exception
    ) -> NoReturn:
        """The command did not even start: record why, give the batch back, stop the agent."""
        reason = f"cannot start `{shlex.join(attempt.command)}`: {error}"
        record = attempt.record(
            outcome=JobState.STOPPED,
            returncode=None,
            ended_at=self._clock(),
            ended=_utc_now(),
            error=reason,
        )
        await self._record(job, lease, record)
        await self._give_back(job.jobid, lease)
        raise BasecallerCannotRun(self._cannot_run(reason)) from error

    async def _end_attempt(
        self,
        job: Job,
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
        ended_at, ended = self._clock(), _utc_now()
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
            await self._give_back(job.jobid, lease)
            if cannot_run is not None:
                raise BasecallerCannotRun(self._cannot_run(cannot_run))
            return
        if state is JobState.DONE and (lost := await self._record_stats(job, lease, attempt)):
            self._event(f"dropping job: {lost.value}", job.jobid, level=logging.WARNING)
            return
        await self._complete(job.jobid, state, self._clock() + self._settings.give_up_after)
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

    async def _record(self, job: Job, lease: Lease, record: Mapping[str, object]) -> None:
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

    async def _record_stats(self, job: Job, lease: Lease, attempt: Attempt) -> LeaseEnd | None:
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
        keeper = asyncio.create_task(self._keep_lease(job, lease, JobState.PROCESSING))
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
        self, job: Job, process: asyncio.subprocess.Process, lease: Lease
    ) -> LeaseEnd | int | None:
        """Keep the lease until the first of: the lease is lost (why), the basecaller exits (its
        exit code), a stop is requested (None). No keepalive is in flight once this returns, so
        none can race the report of the job's end."""
        keeper = asyncio.create_task(self._keep_lease(job, lease))
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

    async def _keep_lease(
        self, job: Job, lease: Lease, state: JobState = JobState.STARTED
    ) -> LeaseEnd:
        """Send keepalives until the job must be dropped; say why it must."""
        while True:
            params = {"job_id": job.jobid, "job_state": state.value}
            try:
                answer = await self._call("/keepalive", params, job.jobid, lease.deadline)
            except ManagerUnreachable:
                return LeaseEnd.UNREACHABLE
            if answer.response.status_code != httpx.codes.OK:
                self._event(
                    "keepalive rejected",
                    job.jobid,
                    level=logging.ERROR,
                    status=answer.response.status_code,
                    body=answer.response.text[:200],
                )
                return LeaseEnd.REJECTED
            reply = _parse(KeepaliveReply, answer.response)
            if reply.late:
                self._event("keepalive late", job.jobid, level=logging.WARNING)
                return LeaseEnd.LATE
            lease.renew(answer.sent_at)
            state = JobState.PROCESSING
            await asyncio.sleep(job.lease / 2)

    async def _ask(self) -> tuple[BatchReply, float]:
        batch_size = self._settings.batch_size
        self._event("asking for work", batchsize=batch_size)
        answer = await self._call(
            "/assignwork",
            {"engineid": self._settings.engine_id, "batchsize": str(batch_size)},
            "-",
            self._clock() + self._settings.give_up_after,
        )
        return _parse(BatchReply, _expect_ok(answer.response, "/assignwork")), answer.sent_at

    async def _complete(self, jobid: str, state: JobState, until: float) -> None:
        """Report a job's end once. Whatever the answer, the agent moves on to the next batch:
        a 409 means the work went to someone else meanwhile, and for any other refusal the
        manager's lease expiry puts the files right."""
        try:
            answer = await self._call(
                "/completed", {"job_id": jobid, "job_state": state.value}, jobid, until
            )
        except ManagerUnreachable as error:
            self._event(f"could not report {state.value}: {error}", jobid, level=logging.ERROR)
            return
        status = answer.response.status_code
        if status == httpx.codes.OK:
            self._event(f"completed {state.value}", jobid)
        elif status == httpx.codes.CONFLICT:
            self._event(
                f"completed {state.value} refused (409): the lease had expired and the work went "
                "to someone else",
                jobid,
                level=logging.WARNING,
            )
        else:
            self._event(
                f"completed {state.value} refused",
                jobid,
                level=logging.ERROR,
                status=status,
                body=answer.response.text[:200],
            )

    async def _give_back(self, jobid: str, lease: Lease) -> None:
        """Return an unfinished batch (STOPPED); if that fails, the lease expiry returns it.

        Retried for no longer than the stop grace: a preempted node has little time left.
        """
        until = min(lease.deadline, self._clock() + self._settings.stop_grace)
        await self._complete(jobid, JobState.STOPPED, until)

    async def _call(
        self, route: str, params: Mapping[str, str], jobid: str, until: float
    ) -> Answer:
        """GET a route, retrying connection errors, timeouts and 5xx until ``until``.

        Always tries at least once, so that an overdue keepalive still asks the manager, which
        is the authority on the lease. A 4xx is an answer, not a failure: it is returned.
        """
        attempt = 0
        while True:
            sent_at = self._clock()
            try:
                response = await self._client.get(route, params=dict(params))
            except httpx.TransportError as error:
                if (refused := _certificate_refused(error)) is not None:
                    raise ConfigurationError(
                        f"the manager's certificate does not verify ({refused.verify_message}): "
                        f"give the CA that signed it as {ENV_PREFIX}CA_FILE"
                    ) from error
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            else:
                if response.status_code < httpx.codes.INTERNAL_SERVER_ERROR:
                    if attempt:
                        self._event(f"reached {route} again", jobid, failed_attempts=attempt)
                    return Answer(response, sent_at)
                reason = f"HTTP {response.status_code}"
            remaining = until - self._clock()
            if remaining <= 0:
                raise ManagerUnreachable(f"{route} failed for too long, last: {reason}")
            delay = min(remaining, self._backoff.delay(attempt, self._draw()))
            wait = f"{delay:.1f}s"
            self._event(f"retrying {route}", jobid, level=logging.WARNING, reason=reason, wait=wait)
            await asyncio.sleep(delay)
            attempt += 1

    async def _stop_child(self, job: Job, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the basecaller's whole group, SIGKILL whatever is left after the grace.

        The group, not the pid: wrapper scripts and Dorado start children of their own, and a
        GPU held by an orphan is lost to the next job. The final SIGKILL goes to the group even
        when the leader obeyed SIGTERM, for children that ignored it.
        """
        self._event("stopping basecaller", job.jobid, pid=process.pid)
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._settings.stop_grace)
        except TimeoutError:
            self._event("basecaller ignored SIGTERM, killing", job.jobid, level=logging.WARNING)
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()

    async def _wait_visible(self, job: Job) -> None:
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
        self, event: str, jobid: str = "-", *, level: int = logging.INFO, **details: object
    ) -> None:
        """One log line per event, always naming the engine and the job; None details left out."""
        extra = "".join(f" {key}={value}" for key, value in details.items() if value is not None)
        log.log(level, "engine=%s job=%s %s%s", self._settings.engine_id, jobid, event, extra)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _parse(model: type[_M], response: httpx.Response) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as error:
        raise ProtocolViolation(
            f"{response.request.url.path} answered {response.text[:200]!r}: {error}"
        ) from error


def _certificate_refused(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check behind a failed connection, if that is what failed: retrying
    cannot mend it, and it must not pass for a manager that is merely down."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _expect_ok(response: httpx.Response, route: str) -> httpx.Response:
    if response.status_code != httpx.codes.OK:
        raise ProtocolViolation(f"{route} answered {response.status_code}: {response.text[:500]}")
    return response


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """The flags given on the command line, over the environment and .env."""
    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in AgentSettings.model_fields
        if getattr(args, name, None) is not None
    }
    return AgentSettings(**given)


def describe_error(error: ValidationError) -> list[str]:
    """One line per bad setting, named both ways it can be given."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        flag = "--" + field.replace("_", "-")
        lines.append(f"invalid setting {flag} / {ENV_PREFIX}{field.upper()}: {problem['msg']}")
    return lines


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run a GPU-node agent: basecall the batches the manager hands out",
        description="Ask the manager for batches and run the basecaller command on each. "
        f"Every flag can also be set in the environment as {ENV_PREFIX}<FLAG>; flags win. "
        f"A manager that requires a token gets it from {ENV_PREFIX}API_TOKEN (the environment "
        "only: a flag would show in ps).",
        epilog=TEMPLATE_HELP + "\n" + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in AgentSettings.model_fields.items():
        if name in ENV_ONLY:
            continue
        # --url is what `status` and `retry` call the manager's address: accepted here too.
        flags = ["--manager", "--url"] if name == "manager" else ["--" + name.replace("_", "-")]
        if field.is_required():
            default = "required"
        else:
            default = "default: unset" if field.default is None else f"default {field.default}"
        help_text = f"{field.description} (env {ENV_PREFIX}{name.upper()}; {default})"
        if field.annotation is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            value_type, metavar = _flag_type(field.annotation, name)
            parser.add_argument(*flags, type=value_type, metavar=metavar, help=help_text)
    parser.set_defaults(func=run_command)


def _flag_type(annotation: object, name: str) -> tuple[Callable[[str], object], str]:
    """How argparse reads a setting's flag; pydantic validates the value afterwards."""
    if annotation is int:
        return int, "N"
    if annotation is float:
        return float, "SECONDS"
    if annotation == Path | None:
        return Path, "PATH"
    return str, {"manager": "URL", "engine_id": "ID", "command": "TEMPLATE"}.get(name, "VALUE")


def run_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        for line in describe_error(error):
            print(f"bcmanager agent: {line}", file=sys.stderr)
        return EXIT_CONFIGURATION
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(_serve(settings))


async def _serve(settings: AgentSettings) -> int:
    timeout = httpx.Timeout(settings.request_timeout)
    token = settings.api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        verify = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as error:
        log.error("engine=%s cannot read %sCA_FILE: %s", settings.engine_id, ENV_PREFIX, error)
        return EXIT_CONFIGURATION
    async with httpx.AsyncClient(
        base_url=str(settings.manager), timeout=timeout, headers=headers, verify=verify
    ) as client:
        agent = Agent(client, settings)
        _install_signal_handlers(agent)
        try:
            await agent.run()
        except AgentError as error:
            log.error("engine=%s job=- giving up: %s", settings.engine_id, error)
            return error.exit_code
    return 0


def _install_signal_handlers(agent: Agent) -> None:
    """First SIGTERM/SIGINT: stop cleanly and give the batch back. Second: exit at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if agent.stopping:
            agent.kill_child_now()
            log.warning("second %s: exiting at once", signum.name)
            logging.shutdown()
            os._exit(128 + signum)
        agent.request_stop(signum.name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
