"""``bcmanager serve``: the service on uvicorn; and its schema, as ``bcmanager openapi`` prints
it."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import ssl
import sys
from pathlib import Path
from typing import Any

import uvicorn

from bcmanager.core.logs import configure_logging
from bcmanager.facility.facility import Facility
from bcmanager.facility.rules import Rules, RulesError
from bcmanager.http.app import create_app
from bcmanager.lock import AlreadyManaged, hold_run
from bcmanager.paths import RunPaths
from bcmanager.roots import UnusableRoot
from bcmanager.settings import Settings, load_settings

log = logging.getLogger(__name__)


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the manager for one run folder",
        description="Run the manager. Settings come from BCM_* environment variables and .env; "
        "the options below override them.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--input-dir",
        help="folder the sequencer writes POD5 files into (env BCM_INPUT_DIR; required)",
    )
    serve.add_argument(
        "--output-dir",
        help="folder that receives pass/ and fail/ FASTQ (env BCM_OUTPUT_DIR; required)",
    )
    serve.add_argument("--host", help="address to listen on (env BCM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (env BCM_PORT, default 40765)")
    serve.set_defaults(func=run_serve)


def settings_help() -> str:
    """Every setting the manager reads, as its environment variable with its default, so
    ``serve --help`` names them all (.env.example lists the same)."""
    lines = ["settings (environment variables, or lines in .env):"]
    for name, field in Settings.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            default = "default: unset" if field.default is None else f"default {field.default}"
        lines.append(f"  BCM_{name.upper():<24} {field.description} ({default})")
    return "\n".join(lines)


def run_serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        {
            "input_dir": args.input_dir,
            "output_dir": args.output_dir,
            "host": args.host,
            "port": args.port,
        }
    )
    if settings is None:
        return 2
    paths = RunPaths(settings.input_dir.resolve(), settings.output_dir.resolve())
    if (refusal := exposure_refusal(settings) or tls_problem(settings)) is not None:
        print(f"bcmanager: {refusal}", file=sys.stderr)
        return 2
    try:
        rules = Rules.from_settings(settings)
    except RulesError as error:
        print(f"bcmanager: {error}", file=sys.stderr)
        return 2
    try:
        locks = hold_run(paths, f"{settings.scheme}://{settings.host}:{settings.port}")
    except UnusableRoot as error:
        print(f"bcmanager: {error}", file=sys.stderr)
        return 2
    except AlreadyManaged as error:
        print(f"bcmanager: {error}", file=sys.stderr)
        return 1
    configure_logging(settings.log_format)
    app = create_app(settings, lock=locks, facility=Facility(settings, rules=rules))
    # log_config=None: uvicorn's own lines go through the handler configured above.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level="info",
        access_log=False,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )
    return 0


def exposure_refusal(settings: Settings) -> str | None:
    """Why the service as configured would let other hosts read its tokens off the wire or
    drive the run without one; None if it may start. Beyond loopback it needs TLS and an engine
    token, unless BCM_TRUSTED_NETWORK says every host that reaches the port may drive the run."""
    if settings.trusted_network or _is_loopback(settings.host):
        return None
    missing = [
        what
        for what, absent in (
            ("TLS (BCM_TLS_CERTFILE, BCM_TLS_KEYFILE)", settings.tls_certfile is None),
            ("an engine token (BCM_API_TOKEN)", settings.api_token is None),
        )
        if absent
    ]
    if not missing:
        return None
    return (
        f"refusing to listen on {settings.host} without {' and '.join(missing)}: any host "
        f"that reaches port {settings.port} could read tokens and run names off the wire or "
        "drive the run; set them, or BCM_TRUSTED_NETWORK=true on a network you trust"
    )


def tls_problem(settings: Settings) -> str | None:
    """Why the certificate and key cannot serve TLS, found before the server starts, so that a
    wrong path is one line and exit 2 rather than uvicorn's traceback."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_certfile, settings.tls_keyfile
        )
    except (OSError, ssl.SSLError) as error:
        return (
            f"cannot serve TLS with BCM_TLS_CERTFILE {settings.tls_certfile} and "
            f"BCM_TLS_KEYFILE {settings.tls_keyfile}: {error}"
        )
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve beyond this machine


def openapi_schema() -> dict[str, Any]:
    """The schema of the app; it depends on no setting, so placeholders stand in for them."""
    settings = Settings(input_dir=Path("INPUT_DIR"), output_dir=Path("OUTPUT_DIR"))
    return create_app(settings).openapi()
