"""The client that talks to the manager: the four routes of docs/protocol.md as an agent calls
them, the replies it reads, and where a batch's folders are on this node.

A failed call (connection error, timeout, 5xx) is retried with capped, jittered exponential
backoff until the caller's deadline, so a manager restart or a network blip shorter than the
lease costs nothing; a 4xx is an answer, returned to the caller.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, PositiveFloat, ValidationError

from bcmanager.agent.errors import ConfigurationError, ManagerUnreachable, ProtocolViolation
from bcmanager.agent.events import event
from bcmanager.agent.settings import ENV_PREFIX, RUN_PLACEHOLDERS, AgentSettings
from bcmanager.models import JobState, KeepaliveReply

_M = TypeVar("_M", bound=BaseModel)


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


@dataclass(frozen=True, slots=True)
class Assignment:
    """One batch as this node sees it (the manager's ``Job`` of it): where its folders are and
    how long its lease lasts."""

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


def resolve_job(reply: BatchReply, input_dir: Path | None, output_dir: Path | None) -> Assignment:
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
    return Assignment(
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


class ManagerClient:
    """One agent's calls to its manager, with its HTTP client, clock and randomness injectable."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        settings: AgentSettings,
        *,
        clock: Callable[[], float],
        draw: Callable[[], float],
    ) -> None:
        self._client = client
        self._settings = settings
        self._backoff = Backoff(cap=settings.retry_max_delay)
        self._clock = clock
        self._draw = draw

    async def keep_lease(
        self, job: Assignment, lease: Lease, state: JobState = JobState.STARTED
    ) -> LeaseEnd:
        """Send keepalives until the job must be dropped; say why it must."""
        while True:
            params = {"job_id": job.jobid, "job_state": state.value}
            try:
                answer = await self.call("/keepalive", params, job.jobid, lease.deadline)
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

    async def ask(self) -> tuple[BatchReply, float]:
        batch_size = self._settings.batch_size
        self._event("asking for work", batchsize=batch_size)
        answer = await self.call(
            "/assignwork",
            {"engineid": self._settings.engine_id, "batchsize": str(batch_size)},
            "-",
            self._clock() + self._settings.give_up_after,
        )
        return _parse(BatchReply, _expect_ok(answer.response, "/assignwork")), answer.sent_at

    async def complete(self, jobid: str, state: JobState, until: float) -> None:
        """Report a job's end once. Whatever the answer, the agent moves on to the next batch:
        a 409 means the work went to someone else meanwhile, and for any other refusal the
        manager's lease expiry puts the files right."""
        try:
            answer = await self.call(
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

    async def give_back(self, jobid: str, lease: Lease) -> None:
        """Return an unfinished batch (STOPPED); if that fails, the lease expiry returns it.

        Retried for no longer than the stop grace: a preempted node has little time left.
        """
        until = min(lease.deadline, self._clock() + self._settings.stop_grace)
        await self.complete(jobid, JobState.STOPPED, until)

    async def call(self, route: str, params: Mapping[str, str], jobid: str, until: float) -> Answer:
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

    def _event(
        self, what: str, jobid: str = "-", *, level: int = logging.INFO, **details: object
    ) -> None:
        event(self._settings.engine_id, what, jobid, level=level, **details)


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
