"""What a browser opens: the run's page (/, with its files under /static), the login form that
trades the read token for a cookie, and the API's own documentation (/docs, /openapi.json).

None of these is in the schema. The page and the documentation are read routes; the login
form stays open, and the page sends a browser without the cookie to it.
"""

from __future__ import annotations

import html
from importlib import resources
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from bcmanager.http.access import COOKIE, COOKIE_MAX_AGE, Kind
from bcmanager.http.routing import TheAccess, TheSettings, guard

router = APIRouter()

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


def read_page() -> str:
    """The page's HTML, as the package holds it (an app reads it once, when it is made)."""
    return (resources.files("bcmanager") / "static" / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def status_page(request: Request, access: TheAccess) -> Response:
    if access.caller(Kind.READ, request) is None:
        return RedirectResponse("login", status_code=303)
    page: str = request.app.state.page
    return HTMLResponse(page)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_form() -> HTMLResponse:
    return HTMLResponse(LOGIN_PAGE.format(refused=""))


@router.post("/login", include_in_schema=False)
async def login(request: Request, access: TheAccess, settings: TheSettings) -> Response:
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


@router.get("/openapi.json", include_in_schema=False, dependencies=guard(Kind.READ))
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False, dependencies=guard(Kind.READ))
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
