"""What every router of the app shares: how a route reaches the app's objects, how it is
guarded, and how the state machine's errors become answers.

The routers hold no objects of their own: ``create_app`` puts the facility, the settings, the
access rules, the metrics and the page on ``app.state``, and a route takes them as
dependencies, so one module of routes serves any number of apps (the tests make many).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response

from bcmanager.core.state import InvalidTransition, UnknownJob
from bcmanager.facility.facility import Facility
from bcmanager.facility.runs import UnknownRun
from bcmanager.http.access import BEARERS, READ_COOKIE, Access, Caller, Kind
from bcmanager.models import ErrorReply
from bcmanager.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorReply, "description": "The route's token is set and no valid one was sent"},
    404: {"model": ErrorReply, "description": "No such job"},
    409: {"model": ErrorReply, "description": "The job can no longer complete"},
    503: {"model": ErrorReply, "description": "The disk refused the change; nothing changed"},
}
# FastAPI adds a route's security schemes to it; an empty requirement beside them tells clients
# the token is optional, as it is on a manager that sets none for the route's kind.
TOKEN_OPTIONAL: dict[str, Any] = {"security": [{}]}


def _facility(request: Request) -> Facility:
    facility: Facility = request.app.state.facility
    return facility


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


TheFacility = Annotated[Facility, Depends(_facility)]
TheSettings = Annotated[Settings, Depends(_settings)]
TheAccess = Annotated[Access, Depends(_access)]


def guard(kind: Kind) -> list[DependsParam]:
    """The dependencies of a route of ``kind``: its security schemes, for the schema (they only
    parse), and the check itself."""
    schemes = [Depends(BEARERS[kind])]
    if kind is Kind.READ:
        schemes.append(Depends(READ_COOKIE))
    return [*schemes, Depends(CHECKS[kind])]


async def _engine(request: Request) -> Caller:
    return _access(request).require(Kind.ENGINE, request)


async def _operator(request: Request) -> Caller:
    return _access(request).require(Kind.OPERATOR, request)


async def _read(request: Request) -> Caller:
    return _access(request).require(Kind.READ, request)


CHECKS = {Kind.ENGINE: _engine, Kind.OPERATOR: _operator, Kind.READ: _read}
Operator = Annotated[Caller, Depends(_operator)]


def error_reply(detail: str, status_code: int) -> JSONResponse:
    """An error as JSON; ``detail`` may name a path whose bytes are not UTF-8."""
    return JSONResponse(ErrorReply(detail=detail).model_dump(), status_code=status_code)


async def _unknown_job(request: Request, error: Exception) -> JSONResponse:
    return error_reply(str(error), 404)


async def _unknown_run(request: Request, error: Exception) -> JSONResponse:
    return error_reply(str(error.args[0]), 404)


async def _conflict(request: Request, error: Exception) -> JSONResponse:
    return error_reply(str(error), 409)


async def _disk_refused(request: Request, error: Exception) -> JSONResponse:
    reason = f"the run's folders refused a change ({error}); nothing changed, retry later"
    return error_reply(reason, 503)


HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    UnknownJob: _unknown_job,
    UnknownRun: _unknown_run,
    InvalidTransition: _conflict,
    OSError: _disk_refused,
}
"""Errors of the state machine and of the disk, as the answers docs/protocol.md gives them."""
