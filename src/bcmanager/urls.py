"""The manager's address as people type it: ``HOST:PORT``, ``http://HOST:PORT``, or a URL they
copied from the browser that ends in one of the manager's routes (``.../status``, ``.../docs``).
Every command that talks to a manager reads it through ``base_url``, so all accept the same."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# The manager's own routes: a copied URL that ends in one of them means the manager above it.
ROUTES = frozenset(
    {"", "status", "heartbeat", "ready", "metrics", "docs", "openapi.json", "retry"}
    | {"assignwork", "keepalive", "completed", "login", "runs"}
)


def base_url(text: str, scheme: str = "http") -> str:
    """The manager's base URL: ``scheme`` added when none is given, a trailing route and
    slash removed. A path above the route stays (a manager behind a proxy at /bcm/)."""
    text = text.strip()
    if "://" not in text:
        text = f"{scheme}://{text}"
    parts = urlsplit(text)
    path = parts.path.rstrip("/")
    head, _, last = path.rpartition("/")
    if last in ROUTES:
        path = head
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
