"""The four routes of docs/protocol.md, the original BCManager's, which the agents call: lease a
batch (/assignwork), keep its lease (/keepalive), report its end (/completed), and the idle
watchdog (/heartbeat, never guarded: the Slurm watchdog and kubelets call it without secrets).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator

from bcmanager.http.access import Kind
from bcmanager.http.routing import ERRORS, TOKEN_OPTIONAL, TheFacility, TheSettings, guard
from bcmanager.models import BCBatch, CompletedReply, HeartbeatReply, JobState, KeepaliveReply
from bcmanager.paths import ENGINE_ID_MAX, ENGINE_ID_PATTERN, JOB_ID_PATTERN

router = APIRouter()


class ReportedState(str, Enum):
    """What an engine may report through /keepalive: the protocol's six job states."""

    ASSIGNED = "ASSIGNED"  # it has the batch
    STARTED = "STARTED"  # its basecaller started
    PROCESSING = "PROCESSING"  # its basecaller is working
    STOPPED = "STOPPED"  # it is stopping (the lease still needs /completed to end)
    DONE = "DONE"  # it is done (the lease still needs /completed to end)
    FAILED = "FAILED"  # it failed (the lease still needs /completed to end)


class CompletionState(str, Enum):
    """What an engine may report through /completed."""

    DONE = "DONE"  # output is final: merge it
    FAILED = "FAILED"  # set the files aside for an operator
    STOPPED = "STOPPED"  # give the batch back unfinished


def _integer_text(value: object) -> object:
    """A query's integer as the clients write one: digits, with a sign at most (the validator
    that follows would take "2.0" or "+0.0" for 2 and 0, which no client sends)."""
    if isinstance(value, str) and not re.fullmatch(r"[+-]?[0-9]+", value):
        raise ValueError("an integer is written with digits only")
    return value


EngineId = Annotated[
    str,
    Query(
        pattern=ENGINE_ID_PATTERN,
        max_length=ENGINE_ID_MAX,
        description="The engine's name: letters, digits, '.', '-', '_' (at most 100).",
        examples=["gpu004"],
    ),
]
JobId = Annotated[
    str,
    Query(pattern=JOB_ID_PATTERN, description="The decimal job id from /assignwork."),
]


# How the protocol chains: the jobid of a batch is the job_id of its keepalives and completion.
# Clients and schema-driven testers (schemathesis) follow these links from one call to the next.
JOB_LINKS: dict[str, Any] = {
    operation: {
        "operationId": operation,
        "parameters": {"job_id": "$response.body#/jobid"},
        "description": description,
    }
    for operation, description in (
        ("keep_alive", "Keep the batch's lease while working on it."),
        ("complete_job", "Report the batch DONE, FAILED or STOPPED."),
    )
}


@router.get(
    "/assignwork",
    response_model=BCBatch,
    operation_id="assign_work",
    summary="Lease a batch of raw files to an engine",
    tags=["protocol"],
    responses={200: {"links": JOB_LINKS}, 401: ERRORS[401], 503: ERRORS[503]},
    dependencies=guard(Kind.ENGINE),
    openapi_extra=TOKEN_OPTIONAL,
)
async def assignwork(
    facility: TheFacility,
    engineid: EngineId,
    batchsize: Annotated[
        int,
        BeforeValidator(_integer_text),
        Query(description="Files wanted; <= 0 means the manager's default."),
    ],
) -> BCBatch:
    return facility.assign(engineid, batchsize)


@router.get(
    "/keepalive",
    response_model=KeepaliveReply,
    operation_id="keep_alive",
    summary="Renew a job's lease; late=true means stop the job",
    tags=["protocol"],
    responses={401: ERRORS[401]},
    dependencies=guard(Kind.ENGINE),
    openapi_extra=TOKEN_OPTIONAL,
)
async def keepalive(
    facility: TheFacility, job_id: JobId, job_state: ReportedState
) -> KeepaliveReply:
    return KeepaliveReply(late=facility.keepalive(job_id, JobState(job_state.value)))


@router.get(
    "/completed",
    response_model=CompletedReply,
    operation_id="complete_job",
    summary="Report a job DONE, FAILED or STOPPED",
    tags=["protocol"],
    responses=ERRORS,
    dependencies=guard(Kind.ENGINE),
    openapi_extra=TOKEN_OPTIONAL,
)
async def completed(
    facility: TheFacility, job_id: JobId, job_state: CompletionState
) -> CompletedReply:
    await facility.complete_async(job_id, JobState(job_state.value))
    return CompletedReply(ok=True)


@router.get(
    "/heartbeat",
    response_model=HeartbeatReply,
    operation_id="heartbeat",
    summary="Idle watchdog and liveness probe",
    tags=["protocol"],
    responses={503: {"model": HeartbeatReply, "description": "The manager cannot work"}},
)
async def heartbeat(facility: TheFacility, settings: TheSettings) -> HeartbeatReply | JSONResponse:
    idle = facility.inactivity()
    fatal = facility.problems()
    reply = HeartbeatReply(
        status="true" if idle >= settings.shutdown_interval else "false",
        inactivity_interval=round(idle, 3),
        problems=fatal + facility.job_problems(),
        phase=facility.phase(),
    )
    if fatal:
        return JSONResponse(reply.model_dump(), status_code=503)
    return reply
