"""How the manager is doing: readiness (/ready, never guarded: kubelets call it without
secrets) and the snapshot of the runs (/status, which the page polls), a read route."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from bcmanager.http.access import Kind
from bcmanager.http.routing import ERRORS, TOKEN_OPTIONAL, TheFacility, guard
from bcmanager.models import ErrorReply, ReadyReply, RunEntry, RunStatus

router = APIRouter()

JSON = "application/json"
NO_RUNS = b'"runs":[]}'


def line_json(entry: RunEntry) -> bytes:
    """A run's line in JSON, as it is within the whole snapshot's."""
    return entry.model_dump_json().encode()


def with_runs(snapshot: RunStatus, runs: list[bytes]) -> bytes:
    """``snapshot`` (its runs left empty) in JSON with ``runs``, each a run's line in JSON: the
    bytes FastAPI sends for the whole snapshot, the lines made apart (``Facility.status_async``
    says why)."""
    head = snapshot.model_dump_json().encode()
    if not head.endswith(NO_RUNS):
        raise AssertionError("RunStatus.runs must stay its last field")
    return b"".join((head[: -len(NO_RUNS)], b'"runs":[', b",".join(runs), b"]}"))


@router.get(
    "/ready",
    response_model=ReadyReply,
    operation_id="ready",
    summary="Readiness probe: 200 once the first scan of INPUT_DIR is done",
    tags=["operations"],
    responses={503: {"model": ReadyReply, "description": "Still scanning"}},
)
async def ready(facility: TheFacility) -> ReadyReply | JSONResponse:
    if not facility.ready:
        return JSONResponse({"ready": False}, status_code=503)
    return ReadyReply(ready=True)


@router.get(
    "/status",
    response_model=RunStatus,
    operation_id="run_status",
    summary="The run's snapshot: files and bytes by state, rates, ETA, engines, leases",
    tags=["operations"],
    responses={401: ERRORS[401], 404: {"model": ErrorReply, "description": "No such run"}},
    dependencies=guard(Kind.READ),
    openapi_extra=TOKEN_OPTIONAL,
)
async def status(
    facility: TheFacility,
    run: Annotated[
        str | None,
        Query(description="A run's path, as /runs lists it: that run's snapshot alone."),
    ] = None,
) -> Response:
    snapshot, runs = await facility.status_async(run, line_json)
    return Response(with_runs(snapshot, runs), media_type=JSON)
