"""The HTTP face of the manager: the four routes of docs/protocol.md, the runs, and a few
read-only ones.

Routes only translate: query parameters in, a Facility call, a model out. Errors of the state
machine become 404 or 409, a disk that refuses a change becomes 503; each with a JSON ``detail``
and nothing changed. For people: the run's picture as JSON (/status), as Prometheus metrics
(/metrics) and as a page (/, with its files under /static). Each route belongs to one kind of
access (engine, operator, read; ``access.py``) whose token it requires when the manager sets
one; the probes (/heartbeat, /ready), the login form and the page's static files stay open.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import Enum
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.params import Depends as DependsParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BeforeValidator

from bcmanager import __version__, audit
from bcmanager.core.manager import Manager
from bcmanager.core.state import InvalidTransition, UnknownJob
from bcmanager.facility.facility import Facility
from bcmanager.facility.runs import UnknownRun
from bcmanager.http.access import BEARERS, COOKIE, COOKIE_MAX_AGE, READ_COOKIE, Access, Caller, Kind
from bcmanager.http.metrics import Metrics, RequestTimer
from bcmanager.lock import RunLocks, hold_run
from bcmanager.models import (
    BCBatch,
    CompletedReply,
    ErrorReply,
    HeartbeatReply,
    JobState,
    KeepaliveReply,
    PriorityRequest,
    ReadyReply,
    RetryReply,
    RetryRequest,
    RunEntry,
    RunRequest,
    RunsReply,
    RunStatus,
)
from bcmanager.paths import ENGINE_ID_MAX, ENGINE_ID_PATTERN, JOB_ID_PATTERN
from bcmanager.settings import Settings


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
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorReply, "description": "The route's token is set and no valid one was sent"},
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
# FastAPI adds a route's security schemes to it; an empty requirement beside them tells clients
# the token is optional, as it is on a manager that sets none for the route's kind.
TOKEN_OPTIONAL: dict[str, Any] = {"security": [{}]}


def guard(kind: Kind) -> list[DependsParam]:
    """The dependencies of a route of ``kind``: its security schemes, for the schema (they only
    parse), and the check itself."""
    schemes = [Depends(BEARERS[kind])]
    if kind is Kind.READ:
        schemes.append(Depends(READ_COOKIE))
    return [*schemes, Depends(CHECKS[kind])]


async def _engine(request: Request) -> Caller:
    access: Access = request.app.state.access
    return access.require(Kind.ENGINE, request)


async def _operator(request: Request) -> Caller:
    access: Access = request.app.state.access
    return access.require(Kind.OPERATOR, request)


async def _read(request: Request) -> Caller:
    access: Access = request.app.state.access
    return access.require(Kind.READ, request)


JSON = "application/json"
NO_RUNS = b'"runs":[]}'
CHECKS = {Kind.ENGINE: _engine, Kind.OPERATOR: _operator, Kind.READ: _read}
Operator = Annotated[Caller, Depends(_operator)]
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bcmanager: log in</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="static/page.css"></head>
<body><main class="login"><h1>bcmanager</h1>
<form method="post" action="login">
<label for="token">Read token (BCM_READ_TOKEN)</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button id="login" type="submit">Show the run</button>
<p id="refused" class="dim">{refused}</p>
</form></main></body></html>
"""


def line_json(entry: RunEntry) -> bytes:
    """A run's line in JSON, as it is within the whole picture's."""
    return entry.model_dump_json().encode()


def with_runs(picture: RunStatus, runs: list[bytes]) -> bytes:
    """``picture`` (its runs left empty) in JSON with ``runs``, each a run's line in JSON: the
    bytes FastAPI sends for the whole picture, the lines made apart (``Facility.status_async``
    says why)."""
    head = picture.model_dump_json().encode()
    if not head.endswith(NO_RUNS):
        raise AssertionError("RunStatus.runs must stay its last field")
    return b"".join((head[: -len(NO_RUNS)], b'"runs":[', b",".join(runs), b"]}"))


def error_reply(detail: str, status_code: int) -> JSONResponse:
    """An error as JSON; ``detail`` may name a path whose bytes are not UTF-8."""
    return JSONResponse(ErrorReply(detail=detail).model_dump(), status_code=status_code)


def create_app(
    settings: Settings,
    manager: Manager | None = None,
    lock: RunLocks | None = None,
    facility: Facility | None = None,
) -> FastAPI:
    """The service for every run under INPUT_DIR (or, given ``manager``, for that one raw
    folder alone). Holds the roots' locks while it runs: ``lock`` if the caller took them
    already (to report an unusable folder or a second manager before the server starts), else
    its own."""
    facility = facility or Facility(settings, manager)
    address = f"http://{settings.host}:{settings.port}"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with lock or hold_run(facility.paths, address):
            await facility.start()
            try:
                yield
            finally:
                await facility.stop()

    # The docs and the schema are read routes like the others: FastAPI's own are off and
    # served below behind the read guard.
    app = FastAPI(
        title="bcmanager",
        version=__version__,
        summary="Coordinates GPU basecalling of a nanopore run while it is still sequencing.",
        lifespan=lifespan,
        # /docs is served below from the package's own copy of Swagger UI: GPU clusters are
        # often offline, and FastAPI's default loads it from a CDN. ReDoc has no copy: off.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.facility = facility
    app.state.access = access = Access(settings)
    metrics = Metrics(facility)
    app.add_middleware(RequestTimer, histogram=metrics.requests)
    page = (resources.files("bcmanager") / "static" / "index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(packages=[("bcmanager", "static")]), name="static")
    engine, operator, read = guard(Kind.ENGINE), guard(Kind.OPERATOR), guard(Kind.READ)

    @app.exception_handler(UnknownJob)
    async def unknown_job(request: Request, error: UnknownJob) -> JSONResponse:
        return error_reply(str(error), 404)

    @app.exception_handler(UnknownRun)
    async def unknown_run(request: Request, error: UnknownRun) -> JSONResponse:
        return error_reply(str(error.args[0]), 404)

    @app.exception_handler(InvalidTransition)
    async def conflict(request: Request, error: InvalidTransition) -> JSONResponse:
        return error_reply(str(error), 409)

    @app.exception_handler(OSError)
    async def disk_refused(request: Request, error: OSError) -> JSONResponse:
        reason = f"the run's folders refused a change ({error}); nothing changed, retry later"
        return error_reply(reason, 503)

    @app.get(
        "/assignwork",
        response_model=BCBatch,
        operation_id="assign_work",
        summary="Lease a batch of raw files to an engine",
        tags=["protocol"],
        responses={200: {"links": JOB_LINKS}, 401: ERRORS[401], 503: ERRORS[503]},
        dependencies=engine,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def assignwork(
        engineid: EngineId,
        batchsize: Annotated[
            int,
            BeforeValidator(_integer_text),
            Query(description="Files wanted; <= 0 means the manager's default."),
        ],
    ) -> BCBatch:
        return facility.assign(engineid, batchsize)

    @app.get(
        "/keepalive",
        response_model=KeepaliveReply,
        operation_id="keep_alive",
        summary="Renew a job's lease; late=true means stop the job",
        tags=["protocol"],
        responses={401: ERRORS[401]},
        dependencies=engine,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def keepalive(job_id: JobId, job_state: ReportedState) -> KeepaliveReply:
        return KeepaliveReply(late=facility.keepalive(job_id, JobState(job_state.value)))

    @app.get(
        "/completed",
        response_model=CompletedReply,
        operation_id="complete_job",
        summary="Report a job DONE, FAILED or STOPPED",
        tags=["protocol"],
        responses=ERRORS,
        dependencies=engine,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def completed(job_id: JobId, job_state: CompletionState) -> CompletedReply:
        await facility.complete_async(job_id, JobState(job_state.value))
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

    @app.get(
        "/ready",
        response_model=ReadyReply,
        operation_id="ready",
        summary="Readiness probe: 200 once the first scan of INPUT_DIR is done",
        tags=["operations"],
        responses={503: {"model": ReadyReply, "description": "Still scanning"}},
    )
    async def ready() -> ReadyReply | JSONResponse:
        if not facility.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return ReadyReply(ready=True)

    @app.get(
        "/status",
        response_model=RunStatus,
        operation_id="run_status",
        summary="The run's picture: files and bytes by state, rates, ETA, engines, leases",
        tags=["operations"],
        responses={401: ERRORS[401], 404: {"model": ErrorReply, "description": "No such run"}},
        dependencies=read,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def status(
        run: Annotated[
            str | None,
            Query(description="A run's path, as /runs lists it: that run's picture alone."),
        ] = None,
    ) -> Response:
        picture, runs = await facility.status_async(run, line_json)
        return Response(with_runs(picture, runs), media_type=JSON)

    @app.post(
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
        dependencies=operator,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def retry(caller: Operator, request: RetryRequest | None = None) -> RetryReply:
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

    @app.get(
        "/runs",
        response_model=RunsReply,
        operation_id="list_runs",
        summary="The runs under INPUT_DIR: phase, priority, files, lag",
        tags=["operations"],
        responses={401: ERRORS[401]},
        dependencies=read,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def runs() -> RunsReply:
        return RunsReply(runs=await facility.entries_async())

    async def run_changed(
        caller: Caller, action: str, run: str, change: dict[str, Any], make: Callable[[], object]
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

    run_routes: dict[str, Any] = {
        "response_model": RunEntry,
        "tags": ["operations"],
        "responses": {
            400: {"model": ErrorReply, "description": "The body is not JSON"},
            401: ERRORS[401],
            404: {"model": ErrorReply, "description": "No such run"},
            503: ERRORS[503],
        },
        "dependencies": operator,
        "openapi_extra": TOKEN_OPTIONAL,
    }

    @app.post(
        "/runs/priority",
        operation_id="set_run_priority",
        summary="Set a run's priority (higher first)",
        **run_routes,
    )
    async def run_priority(caller: Operator, request: PriorityRequest) -> RunEntry:
        return await run_changed(
            caller,
            "priority",
            request.run,
            {"priority": request.priority},
            lambda: facility.set_priority(request.run, request.priority),
        )

    @app.post(
        "/runs/pause",
        operation_id="pause_run",
        summary="Offer a run's files to no engine until it is resumed",
        **run_routes,
    )
    async def pause(caller: Operator, request: RunRequest) -> RunEntry:
        return await run_changed(
            caller, "pause", request.run, {}, lambda: facility.set_paused(request.run, True)
        )

    @app.post(
        "/runs/resume", operation_id="resume_run", summary="Resume a paused run", **run_routes
    )
    async def resume(caller: Operator, request: RunRequest) -> RunEntry:
        return await run_changed(
            caller, "resume", request.run, {}, lambda: facility.set_paused(request.run, False)
        )

    @app.get(
        "/metrics",
        response_class=Response,
        operation_id="metrics",
        summary="Prometheus metrics: files by state, files by engine and outcome, durations",
        tags=["operations"],
        # The exact media type carries prometheus-client's format version; the schema names
        # only its kind, so it does not change with that library.
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            401: ERRORS[401],
        },
        dependencies=read,
        openapi_extra=TOKEN_OPTIONAL,
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def status_page(request: Request) -> Response:
        if access.caller(Kind.READ, request) is None:
            return RedirectResponse("login", status_code=303)
        return HTMLResponse(page)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form() -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE.format(refused=""))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Trade the read token, typed into the form, for the cookie: the token never goes
        into a URL, a browser's history or a proxy's log."""
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        cookie = access.login(form.get("token", [""])[0].encode())
        if cookie is None:
            refused = html.escape("That is not this manager's read or operator token.")
            return HTMLResponse(LOGIN_PAGE.format(refused=refused), status_code=401)
        reply = RedirectResponse("./", status_code=303)
        reply.set_cookie(
            COOKIE,
            cookie,
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="strict",
            secure=settings.tls_certfile is not None,
        )
        return reply

    @app.get("/openapi.json", include_in_schema=False, dependencies=read)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=read)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="bcmanager",
            swagger_js_url="static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="static/swagger-ui/favicon-32x32.png",
            # No badge that asks validator.swagger.io about the schema.
            swagger_ui_parameters={"validatorUrl": None},
        )

    return app
