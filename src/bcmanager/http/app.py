"""The HTTP face of the manager: the app, its state and middleware, and its routers.

Routes only translate: query parameters in, a Facility call, a model out. Errors of the state
machine become 404 or 409, a disk that refuses a change becomes 503; each with a JSON ``detail``
and nothing changed (``routing.HANDLERS``). Each concern is a router of its own: the protocol
the agents speak (``protocol``), readiness and the run's snapshot (``status``), the runs and
what an operator changes (``operator``), Prometheus metrics (``metrics``) and what a browser
opens (``page``). Each route belongs to one kind of access (engine, operator, read;
``access.py``) whose token it requires when the manager sets one; the probes (/heartbeat,
/ready), the login form and the page's static files stay open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from bcmanager import __version__
from bcmanager.core.manager import Manager
from bcmanager.facility.facility import Facility
from bcmanager.http import metrics, operator, page, protocol, status
from bcmanager.http.access import Access
from bcmanager.http.routing import HANDLERS
from bcmanager.lock import RunLocks, hold_run
from bcmanager.settings import Settings

# In this order, the order of the schema's paths.
ROUTERS = (protocol.router, status.router, operator.router, metrics.router, page.router)


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
    # served by ``page`` behind the read guard.
    app = FastAPI(
        title="bcmanager",
        version=__version__,
        summary="Coordinates GPU basecalling of a nanopore run while it is still sequencing.",
        lifespan=lifespan,
        # /docs is served from the package's own copy of Swagger UI: GPU clusters are often
        # offline, and FastAPI's default loads it from a CDN. ReDoc has no copy: off.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        exception_handlers=HANDLERS,
    )
    app.state.settings = settings
    app.state.facility = facility
    app.state.access = Access(settings)
    app.state.metrics = metrics.Metrics(facility)
    app.state.page = page.read_page()
    app.add_middleware(metrics.RequestTimer, histogram=app.state.metrics.requests)
    app.mount("/static", StaticFiles(packages=[("bcmanager", "static")]), name="static")
    for router in ROUTERS:
        app.include_router(router)
    return app
