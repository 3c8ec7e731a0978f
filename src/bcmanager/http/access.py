"""Who may do what: three kinds of access, each guarded by its own optional token.

- engine: the protocol routes that lease and complete work (/assignwork, /keepalive,
  /completed), opened by ``BCM_API_TOKEN`` (the name existing agents and deployments use);
- operator: the routes that change a run (POST /retry), opened by ``BCM_OPERATOR_TOKEN``;
  while that is unset they need ``BCM_API_TOKEN`` instead, as before there were kinds, so that
  adding kinds never opens a route an existing deployment guarded;
- read: what shows the run (/status, /metrics, the page, /docs, /openapi.json), opened by
  ``BCM_READ_TOKEN`` or by the operator token (whoever may change a run may see it).

A kind whose token is unset is open. No token opens another kind: an engine token opens no
operator or read route, a read token no engine or operator route. The probes (/heartbeat,
/ready) are never guarded: kubelets and the Slurm watchdog call them without secrets.

Tokens travel as ``Authorization: Bearer <token>``. A browser cannot send that header when it
opens the page, so /login trades the read (or operator) token for an HttpOnly cookie holding an
HMAC of the token rather than the token itself: it opens read routes only, which are all GETs,
so a page elsewhere that makes the browser send it (CSRF) can change nothing. Every comparison
of a secret is constant-time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPBearer
from pydantic import SecretStr

from bcmanager.settings import Settings

COOKIE = "bcm_read"
COOKIE_MAX_AGE = 7 * 24 * 3600
"""Seconds a login lasts: a page left open on a wall screen keeps working for a week."""
_COOKIE_PURPOSE = b"bcmanager read cookie v1"


class Kind(str, enum.Enum):
    ENGINE = "engine"
    OPERATOR = "operator"
    READ = "read"


SETTING = {
    Kind.ENGINE: "BCM_API_TOKEN",
    Kind.OPERATOR: "BCM_OPERATOR_TOKEN",
    Kind.READ: "BCM_READ_TOKEN",
}
# One security scheme per kind in the OpenAPI schema, so that clients see which token a route
# takes. auto_error=False: the kind may be open, and a refusal is ours to word.
BEARERS = {
    kind: HTTPBearer(
        scheme_name=f"{kind.value}_token",
        description=f"The manager's {SETTING[kind]}; required only when the manager sets one.",
        auto_error=False,
    )
    for kind in Kind
}
READ_COOKIE = APIKeyCookie(
    name=COOKIE,
    scheme_name="read_cookie",
    description="Set by POST /login for the read (or operator) token; opens the read routes.",
    auto_error=False,
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request, for the record of operator actions: the kind of the token that let
    it in ("open" when its kind needs none) and the client's address."""

    token: str
    client: str


def cookie_value(token: bytes) -> str:
    """What the login cookie holds: derived from the token, so the cookie never carries the
    token itself, and every cookie stops working when the token changes."""
    return hmac.new(token, _COOKIE_PURPOSE, hashlib.sha256).hexdigest()


def _secret(token: SecretStr | None) -> bytes | None:
    return None if token is None else token.get_secret_value().encode()


def bearer_of(request: Request) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header, if the request has one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" and token.strip() else None


class Access:
    """The tokens of one manager, and which of them opens which kind of route."""

    def __init__(self, settings: Settings) -> None:
        engine, operator, read = (
            _secret(settings.api_token),
            _secret(settings.operator_token),
            _secret(settings.read_token),
        )
        self._tokens: dict[Kind, list[tuple[Kind, bytes]]] = {
            Kind.ENGINE: [(Kind.ENGINE, engine)] if engine else [],
            Kind.OPERATOR: (
                [(Kind.OPERATOR, operator)]
                if operator
                else [(Kind.ENGINE, engine)]
                if engine
                else []
            ),
            Kind.READ: (
                [(Kind.READ, read)] + ([(Kind.OPERATOR, operator)] if operator else [])
                if read
                else []
            ),
        }
        self._cookies = [cookie_value(token).encode() for _, token in self._tokens[Kind.READ]]

    def guarded(self, kind: Kind) -> bool:
        return bool(self._tokens[kind])

    def token_kind(self, kind: Kind, given: bytes | None) -> Kind | None:
        """The kind of the token that opens a route of ``kind``, if ``given`` is one. Each
        accepted token is compared, whichever matches, so the time says nothing of which."""
        found = None
        for token_kind, token in self._tokens[kind]:
            if secrets.compare_digest(given or b"", token):
                found = token_kind
        return found

    def login(self, given: bytes) -> str | None:
        """The cookie for a token that opens the read routes; None for any other."""
        if self.token_kind(Kind.READ, given) is None:
            return None
        return cookie_value(given)

    def caller(self, kind: Kind, request: Request) -> Caller | None:
        """Who sent ``request``, if it may reach a route of ``kind``; None if it may not."""
        client = request.client.host if request.client is not None else "unknown"
        if not self.guarded(kind):
            return Caller("open", client)
        token_kind = self.token_kind(kind, bearer_of(request))
        if token_kind is not None:
            return Caller(token_kind.value, client)
        cookie = request.cookies.get(COOKIE, "").encode()
        if kind is Kind.READ and cookie and _matches_any(cookie, self._cookies):
            return Caller("read cookie", client)
        return None

    def require(self, kind: Kind, request: Request) -> Caller:
        """The caller, or a 401 that names the setting whose token the route takes."""
        caller = self.caller(kind, request)
        if caller is None:
            names = [SETTING[token_kind] for token_kind, _ in self._tokens[kind]]
            raise HTTPException(
                status_code=401,
                detail=f"this route requires 'Authorization: Bearer <{' or '.join(names)}>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return caller


def _matches_any(given: bytes, expected: list[bytes]) -> bool:
    return sum(secrets.compare_digest(given, value) for value in expected) > 0
