"""The runs under INPUT_DIR, and what an operator changes in them: the list (/runs, a read
route), quarantined files sent back (/retry), a run's priority, pause and resume (/runs/...).

Every change is first appended to OPERATOR.log in INPUT_DIR (``audit``): a change that cannot
be recorded is refused (503) and nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from bcmanager import audit
from bcmanager.facility.facility import Facility
from bcmanager.http.access import Caller, Kind
from bcmanager.http.routing import ERRORS, TOKEN_OPTIONAL, Operator, TheFacility, guard
from bcmanager.models import (
    ErrorReply,
    PriorityRequest,
    RetryReply,
    RetryRequest,
    RunEntry,
    RunRequest,
    RunsReply,
)

router = APIRouter()


@router.post(
    "/retry",
    response_model=RetryReply,
    operation_id="retry_files",
    summary="Send quarantined files (all, or the named ones) back to pending",
    description="Each named file's failed attempts stop counting against it (their "
    "FAILED_ and QUARANTINED_ folders become EXCUSED_), and the quarantined ones are "
    "pending again, each in a batch of its own. Requires the operator token when one is "
    "set (else the engine token, when that is set); the action is appended to "
    "OPERATOR.log in INPUT_DIR before it is made, and one that cannot be recorded is "
    "refused (503) and changes nothing.",
    tags=["operations"],
    responses={
        400: {"model": ErrorReply, "description": "The body is not JSON"},
        401: ERRORS[401],
        503: ERRORS[503],
    },
    dependencies=guard(Kind.OPERATOR),
    openapi_extra=TOKEN_OPTIONAL,
)
async def retry(
    facility: TheFacility, caller: Operator, request: RetryRequest | None = None
) -> RetryReply:
    files = request.files if request is not None else None

    async def record(sending: list[str]) -> None:
        await asyncio.to_thread(
            audit.record,
            facility.input_root,
            action="retry",
            token=caller.token,
            client=caller.client,
            asked=files,
            files=sending,
        )

    return RetryReply(retried=await facility.retry(files, record))


@router.get(
    "/runs",
    response_model=RunsReply,
    operation_id="list_runs",
    summary="The runs under INPUT_DIR: phase, priority, files, lag",
    tags=["operations"],
    responses={401: ERRORS[401]},
    dependencies=guard(Kind.READ),
    openapi_extra=TOKEN_OPTIONAL,
)
async def runs(facility: TheFacility) -> RunsReply:
    return RunsReply(runs=await facility.entries_async())


async def run_changed(
    facility: Facility,
    caller: Caller,
    action: str,
    run: str,
    change: dict[str, Any],
    make: Callable[[], object],
) -> RunEntry:
    """Make an operator's change of a run once it is recorded in OPERATOR.log: a record
    that cannot be written refuses it (503), and nothing changes."""
    facility.run(run)  # no such run: 404, and nothing is recorded
    await asyncio.to_thread(
        audit.record,
        facility.input_root,
        action=action,
        token=caller.token,
        client=caller.client,
        asked=[run],
        files=[],
        **change,
    )
    make()
    return facility.entry(facility.run(run))


RUN_ROUTES: dict[str, Any] = {
    "response_model": RunEntry,
    "tags": ["operations"],
    "responses": {
        400: {"model": ErrorReply, "description": "The body is not JSON"},
        401: ERRORS[401],
        404: {"model": ErrorReply, "description": "No such run"},
        503: ERRORS[503],
    },
    "dependencies": guard(Kind.OPERATOR),
    "openapi_extra": TOKEN_OPTIONAL,
}


@router.post(
    "/runs/priority",
    operation_id="set_run_priority",
    summary="Set a run's priority (higher first)",
    **RUN_ROUTES,
)
async def run_priority(
    facility: TheFacility, caller: Operator, request: PriorityRequest
) -> RunEntry:
    return await run_changed(
        facility,
        caller,
        "priority",
        request.run,
        {"priority": request.priority},
        lambda: facility.set_priority(request.run, request.priority),
    )


@router.post(
    "/runs/pause",
    operation_id="pause_run",
    summary="Offer a run's files to no engine until it is resumed",
    **RUN_ROUTES,
)
async def pause(facility: TheFacility, caller: Operator, request: RunRequest) -> RunEntry:
    return await run_changed(
        facility,
        caller,
        "pause",
        request.run,
        {},
        lambda: facility.set_paused(request.run, True),
    )


@router.post("/runs/resume", operation_id="resume_run", summary="Resume a paused run", **RUN_ROUTES)
async def resume(facility: TheFacility, caller: Operator, request: RunRequest) -> RunEntry:
    return await run_changed(
        facility,
        caller,
        "resume",
        request.run,
        {},
        lambda: facility.set_paused(request.run, False),
    )
