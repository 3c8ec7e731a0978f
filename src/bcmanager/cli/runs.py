"""``bcmanager runs``: the runs a running manager serves, and an operator's say over them.

``bcmanager runs`` lists them (``GET /runs``, with ``BCM_READ_TOKEN``, else
``BCM_OPERATOR_TOKEN``); ``runs priority RUN N``, ``runs pause RUN`` and ``runs resume RUN``
change one on the running manager (``POST /runs/priority``, ``/runs/pause``, ``/runs/resume``,
with ``BCM_OPERATOR_TOKEN``, else ``BCM_API_TOKEN``) and print it as it is now. RUN is the run's
path relative to INPUT_DIR, as the list shows it. An https manager is verified against
``BCM_CA_FILE`` (else the system's CAs), as ``bcmanager status`` does.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Sequence
from typing import TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from bcmanager.cli.status import DEFAULT_URL
from bcmanager.settings import ClientSettings
from bcmanager.urls import base_url

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_HELP = """\
RUN is a run's path relative to the manager's INPUT_DIR, as `bcmanager runs` lists it.

Exit codes:
  0  done
  1  the manager refused (no such run, a token missing or wrong) or could not be reached
  2  a bad command line or CA file
"""
COLUMNS = (
    *("RUN", "PHASE", "PRIORITY", "PAUSED"),
    *("PENDING", "LEASED", "DONE", "QUARANTINED", "LAG"),
)
NUMERIC = frozenset({"PRIORITY", "PENDING", "LEASED", "DONE", "QUARANTINED"})
_M = TypeVar("_M", bound=BaseModel)


class ListedRun(BaseModel):
    """One run as ``GET /runs`` lists it (``models.RunEntry``), reduced to the keys this command
    shows: a manager that sends more keys is read all the same."""

    model_config = ConfigDict(extra="ignore")

    path: str
    phase: str
    priority: int
    paused: bool
    files: dict[str, int]
    lag_seconds: float | None


class ListedRuns(BaseModel):
    model_config = ConfigDict(extra="ignore")

    runs: list[ListedRun]


class Refused(Exception):
    """The manager could not be reached, or said no; the message says which, for the operator."""


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list a running manager's runs; change a run's priority, pause or resume it",
        description="List the runs a running manager serves (BCM_READ_TOKEN, else "
        "BCM_OPERATOR_TOKEN, is sent when set), or change one of them on it (BCM_OPERATOR_TOKEN, "
        "else BCM_API_TOKEN). BCM_CA_FILE verifies an https manager.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_flags(parser, suppress=False)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser(
        "list", help="list the runs (the default)", description="List the manager's runs."
    )
    priority = actions.add_parser(
        "priority",
        help="set a run's priority",
        description="Set a run's priority: runs of higher priority get engines first.",
    )
    priority.add_argument("run", metavar="RUN", help="the run's path relative to INPUT_DIR")
    priority.add_argument("priority", metavar="N", type=int, help="the new priority")
    pause = actions.add_parser(
        "pause",
        help="lease none of a run's files until it is resumed",
        description="Pause a run: none of its files is leased until it is resumed.",
    )
    resume = actions.add_parser(
        "resume", help="lease a paused run's files again", description="Resume a paused run."
    )
    for action in (pause, resume):
        action.add_argument("run", metavar="RUN", help="the run's path relative to INPUT_DIR")
    for action in (listing, priority, pause, resume):
        action.epilog = EXIT_HELP
        action.formatter_class = argparse.RawDescriptionHelpFormatter
        _connection_flags(action, suppress=True)
    parser.set_defaults(func=run_runs)


def _connection_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--url and --ca-file, before or after the action. After it they default to nothing at
    all, so that they do not overwrite what was given before it."""
    parser.add_argument(
        "--url",
        "--manager",
        default=argparse.SUPPRESS if suppress else DEFAULT_URL,
        help=f"the manager's address: HOST:PORT or a URL (default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--ca-file",
        default=argparse.SUPPRESS if suppress else None,
        help="the CA that signed an https manager's certificate (default: BCM_CA_FILE, else "
        "the system's CAs)",
    )


def run_runs(args: argparse.Namespace) -> int:
    url = base_url(args.url)
    try:
        client = ClientSettings(**({"ca_file": args.ca_file} if args.ca_file else {}))
        verify = client.verify()
    except (ValidationError, OSError, ssl.SSLError) as error:
        print(f"bcmanager runs: cannot use the CA file: {error}", file=sys.stderr)
        return EXIT_USAGE
    action = args.action or "list"
    try:
        if action == "list":
            headers = client.bearer("read_token", "operator_token")
            runs = _parse(ListedRuns, _call("GET", f"{url}/runs", headers, None, verify)).runs
        else:
            body: dict[str, str | int] = {"run": args.run}
            if action == "priority":
                body["priority"] = args.priority
            headers = client.bearer("operator_token", "api_token")
            reply = _call("POST", f"{url}/runs/{action}", headers, body, verify)
            runs = [_parse(ListedRun, reply)]
    except Refused as error:
        print(f"bcmanager runs: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print(table(runs) if runs else "no runs")
    return 0


def _call(
    method: str,
    url: str,
    headers: dict[str, str],
    body: dict[str, str | int] | None,
    verify: ssl.SSLContext,
) -> httpx.Response:
    try:
        reply = httpx.request(method, url, json=body, headers=headers, timeout=30, verify=verify)
    except httpx.HTTPError as error:
        raise Refused(f"cannot reach the manager at {url}: {error}") from error
    if reply.status_code != httpx.codes.OK:
        raise Refused(f"the manager said {reply.status_code}: {_detail(reply)}")
    return reply


def _parse(model: type[_M], reply: httpx.Response) -> _M:
    try:
        return model.model_validate_json(reply.content)
    except ValidationError as error:
        raise Refused(f"{reply.url} answered {printable(reply.text[:200])!r}: {error}") from error


def _detail(reply: httpx.Response) -> str:
    """What the manager said is wrong: the ``detail`` of its JSON error, else its text."""
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return printable(detail if isinstance(detail, str) else reply.text[:300])


def table(runs: Sequence[ListedRun]) -> str:
    """The runs as aligned columns, one line each, under a header."""
    rows = [COLUMNS] + [_row(run) for run in runs]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if name in NUMERIC else cell.ljust(width)
            for name, cell, width in zip(COLUMNS, row, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _row(run: ListedRun) -> tuple[str, ...]:
    files = run.files
    return (
        printable(run.path),
        printable(run.phase),
        str(run.priority),
        "paused" if run.paused else "-",
        str(files.get("pending", 0)),
        str(files.get("leased", 0)),
        str(files.get("done", 0)),
        str(files.get("failed", 0)),  # a quarantined file is counted as failed
        duration(run.lag_seconds),
    )


def duration(seconds: float | None) -> str:
    """A lag as people read it: 45s, 3m05s, 2h03m, 1d04h; '-' when nothing waits."""
    if seconds is None:
        return "-"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters written as escapes, so that a folder
    named with an escape sequence cannot repaint the screen."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode() for char in text
    )
