"""The HTTP face of the manager: the four routes of docs/protocol.md and a few read-only ones.

Routes only translate: query parameters in, a Manager call, a model out. Errors of the state
machine become 404 or 409, a disk that refuses a change becomes 503; each with a JSON ``detail``
and nothing changed. For people: the run's picture as JSON (/status), as Prometheus metrics
(/metrics) and as a page (/, with its files under /static). With ``BCM_API_TOKEN`` set, the
three engine routes that change the run require it as a bearer token (401 otherwise); probes,
status, metrics, the page and the docs stay open.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr

from bcmanager import __version__
from bcmanager.lock import RunLock
from bcmanager.manager import Manager
from bcmanager.metrics import Metrics, RequestTimer
from bcmanager.models import (
    BCBatch,
    CompletedReply,
    ErrorReply,
    HeartbeatReply,
    KeepaliveReply,
    ReadyReply,
    RetryReply,
    RetryRequest,
    RunStatus,
)
from bcmanager.paths import ENGINE_ID_MAX, ENGINE_ID_PATTERN, JOB_ID_PATTERN
from bcmanager.settings import Settings
from bcmanager.state import InvalidTransition, JobState, UnknownJob


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
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorReply, "description": "BCM_API_TOKEN is set and no valid token was sent"},
    404: {"model": ErrorReply, "description": "No such job"},
    409: {"model": ErrorReply, "description": "The job can no longer complete"},
    503: {"model": ErrorReply, "description": "The disk refused the change; nothing changed"},
}


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
BEARER = HTTPBearer(
    scheme_name="engine_token",
    description="The manager's BCM_API_TOKEN; required only when the manager sets one.",
    auto_error=False,
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
# FastAPI adds the bearer scheme to each guarded route; an empty requirement beside it tells
# clients the token is optional, as it is on a manager without BCM_API_TOKEN.
TOKEN_OPTIONAL: dict[str, Any] = {"security": [{}]}


def engine_auth(token: SecretStr | None) -> Callable[[Credentials], Awaitable[None]]:
    """A dependency that lets a request through when it carries ``token`` (or none is set)."""
    expected = token.get_secret_value().encode() if token is not None else None

    async def authorize(credentials: Credentials) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not secrets.compare_digest(given, expected):
            raise HTTPException(
                status_code=401,
                detail="this manager requires 'Authorization: Bearer <BCM_API_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return authorize


def create_app(
    settings: Settings, manager: Manager | None = None, lock: RunLock | None = None
) -> FastAPI:
    """The service for one run. Holds the run's lock while it runs: ``lock`` if the caller took
    it already (to report a second manager before the server starts), else its own."""
    manager = manager or Manager(settings)
    address = f"http://{settings.host}:{settings.port}"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with lock or RunLock.acquire(manager.paths.lock_file, address):
            await manager.start()
            try:
                yield
            finally:
                await manager.stop()

    app = FastAPI(
        title="bcmanager",
        version=__version__,
        summary="Coordinates GPU basecalling of a nanopore run while it is still sequencing.",
        lifespan=lifespan,
        # /docs is served below from the package's own copy of Swagger UI: GPU clusters are
        # often offline, and FastAPI's default loads it from a CDN. ReDoc has no copy: off.
        docs_url=None,
        redoc_url=None,
    )
    app.state.manager = manager
    metrics = Metrics(manager)
    app.add_middleware(RequestTimer, histogram=metrics.requests)
    page = (resources.files("bcmanager") / "static" / "index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(packages=[("bcmanager", "static")]), name="static")
    authorized = [Depends(engine_auth(settings.api_token))]

    @app.exception_handler(UnknownJob)
    async def unknown_job(request: Request, error: UnknownJob) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(InvalidTransition)
    async def conflict(request: Request, error: InvalidTransition) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(OSError)
    async def disk_refused(request: Request, error: OSError) -> JSONResponse:
        reason = f"the run's folders refused a change ({error}); nothing changed, retry later"
        return JSONResponse({"detail": reason}, status_code=503)

    @app.get(
        "/assignwork",
        response_model=BCBatch,
        operation_id="assign_work",
        summary="Lease a batch of raw files to an engine",
        tags=["protocol"],
        responses={200: {"links": JOB_LINKS}, 401: ERRORS[401], 503: ERRORS[503]},
        dependencies=authorized,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def assignwork(
        engineid: EngineId,
        batchsize: Annotated[
            int, Query(description="Files wanted; <= 0 means the manager's default.")
        ],
    ) -> BCBatch:
        return manager.assign(engineid, batchsize)

    @app.get(
        "/keepalive",
        response_model=KeepaliveReply,
        operation_id="keep_alive",
        summary="Renew a job's lease; late=true means stop the job",
        tags=["protocol"],
        responses={401: ERRORS[401]},
        dependencies=authorized,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def keepalive(job_id: JobId, job_state: ReportedState) -> KeepaliveReply:
        return KeepaliveReply(late=manager.keepalive(job_id, JobState(job_state.value)))

    @app.get(
        "/completed",
        response_model=CompletedReply,
        operation_id="complete_job",
        summary="Report a job DONE, FAILED or STOPPED",
        tags=["protocol"],
        responses=ERRORS,
        dependencies=authorized,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def completed(job_id: JobId, job_state: CompletionState) -> CompletedReply:
        await manager.complete_async(job_id, JobState(job_state.value))
        return CompletedReply(ok=True)

    @app.get(
        "/heartbeat",
        response_model=HeartbeatReply,
        operation_id="heartbeat",
        summary="Idle watchdog and liveness probe",
        tags=["protocol"],
        responses={503: {"model": HeartbeatReply, "description": "The manager cannot work"}},
    )
    async def heartbeat() -> HeartbeatReply | JSONResponse:
        idle = manager.inactivity()
        fatal = manager.problems()
        reply = HeartbeatReply(
            status="true" if idle >= settings.shutdown_interval else "false",
            inactivity_interval=round(idle, 3),
            problems=fatal + manager.job_problems(),
            phase=manager.phase(),
        )
        if fatal:
            return JSONResponse(reply.model_dump(), status_code=503)
        return reply

    @app.get(
        "/ready",
        response_model=ReadyReply,
        operation_id="ready",
        summary="Readiness probe: 200 once the first scan of INPUT_DIR is done",
        tags=["operations"],
        responses={503: {"model": ReadyReply, "description": "Still scanning"}},
    )
    async def ready() -> ReadyReply | JSONResponse:
        if not manager.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return ReadyReply(ready=True)

    @app.get(
        "/status",
        response_model=RunStatus,
        operation_id="run_status",
        summary="The run's picture: files and bytes by state, rates, ETA, engines, leases",
        tags=["operations"],
    )
    async def status() -> RunStatus:
        return manager.status()

    @app.post(
        "/retry",
        response_model=RetryReply,
        operation_id="retry_files",
        summary="Send quarantined files (all, or the named ones) back to pending",
        description="Each named file's failed attempts stop counting against it (their "
        "FAILED_ and QUARANTINED_ folders become EXCUSED_), and the quarantined ones are "
        "pending again, each in a batch of its own. Requires the token when one is set.",
        tags=["operations"],
        responses={
            400: {"model": ErrorReply, "description": "The body is not JSON"},
            401: ERRORS[401],
            503: ERRORS[503],
        },
        dependencies=authorized,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def retry(request: RetryRequest | None = None) -> RetryReply:
        files = request.files if request is not None else None
        return RetryReply(retried=await manager.retry(files))

    @app.get(
        "/metrics",
        response_class=Response,
        operation_id="metrics",
        summary="Prometheus metrics: files by state, files by engine and outcome, durations",
        tags=["operations"],
        # The exact media type carries prometheus-client's format version; the schema names
        # only its kind, so it does not change with that library.
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="bcmanager API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
            # No badge that asks validator.swagger.io about the schema.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(page)

    return app
