"""``bcmanager retry``: send quarantined files back, without a restart.

With a manager running on the run (it holds the run's lock), the command asks it through its
authenticated ``POST /retry`` route, so memory and disk change together. With none, it renames
the folders itself (a failed attempt's ``FAILED_`` or ``QUARANTINED_`` folder becomes
``EXCUSED_``), and the next start reads the files back as pending. Either way the action is
appended to ``OPERATOR.log`` in INPUT_DIR (``audit.py``): by the manager, with the kind of token
and the address it came from, or here, as "local" with the user's name.

The manager is called with ``BCM_OPERATOR_TOKEN`` (else ``BCM_API_TOKEN``), over https when
``BCM_TLS_CERTFILE`` is set, verified against ``BCM_CA_FILE`` (else the system's CAs).
"""

from __future__ import annotations

import argparse
import getpass
import socket
import ssl
import sys

import httpx
from pydantic import ValidationError

from bcmanager import audit
from bcmanager.core.folders import RunFolders
from bcmanager.lock import RunLock
from bcmanager.paths import RunPaths, shown
from bcmanager.serve import load_settings
from bcmanager.settings import ClientSettings
from bcmanager.urls import base_url


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "retry",
        help="send quarantined files back to pending (all, or the files named)",
        description="Send quarantined raw files back to pending, each in a batch of its own, "
        "their failed attempts no longer counted. Through the running manager when there is "
        "one (BCM_OPERATOR_TOKEN, else BCM_API_TOKEN, is sent when set; BCM_CA_FILE verifies "
        "an https manager), else on the folders directly. Recorded in INPUT_DIR/OPERATOR.log.",
    )
    parser.add_argument("files", nargs="*", help="raw file names (default: every quarantined)")
    parser.add_argument(
        "--input-dir", "--input", help="the run's INPUT_DIR (default: env BCM_INPUT_DIR)"
    )
    parser.add_argument(
        "--output-dir", "--output", help="the run's OUTPUT_DIR (default: env BCM_OUTPUT_DIR)"
    )
    parser.add_argument(
        "--url",
        "--manager",
        help="the running manager: HOST:PORT or a URL (default: http://127.0.0.1:BCM_PORT, or "
        "BCM_HOST when it is not a wildcard address; https when BCM_TLS_CERTFILE is set; "
        "BCM_PORT is 40765 when unset)",
    )
    parser.set_defaults(func=run_retry)


def run_retry(args: argparse.Namespace) -> int:
    settings = load_settings({"input_dir": args.input_dir, "output_dir": args.output_dir})
    if settings is None:
        return 2
    paths = RunPaths(settings.input_dir.resolve(), settings.output_dir.resolve())
    names = list(args.files) or None
    if all(RunLock.holder(lock) is None for lock in (paths.lock_file, paths.output_lock_file)):
        try:
            sent = RunFolders(paths).retry(None if names is None else set(names))
        except OSError as error:
            print(f"bcmanager retry: cannot change the run's folders: {error}", file=sys.stderr)
            return 2
        try:
            audit.record(
                paths.input_dir,
                action="retry",
                token="local",
                client=f"{getpass.getuser()}@{socket.gethostname()}",
                asked=names,
                files=sent,
            )
        except OSError as error:
            print(f"bcmanager retry: cannot record it in OPERATOR.log: {error}", file=sys.stderr)
            return 2
        print(f"{len(sent)} file(s) sent back; the next start of the manager offers them")
        for name in sent:
            print(shown(name))
        return 0
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = base_url(args.url or f"{host}:{settings.port}", scheme=settings.scheme)
    try:
        client = ClientSettings()
        verify = client.verify()
    except (ValidationError, OSError, ssl.SSLError) as error:
        print(f"bcmanager retry: cannot use BCM_CA_FILE: {error}", file=sys.stderr)
        return 2
    headers = client.bearer("operator_token", "api_token")
    try:
        reply = httpx.post(
            f"{url}/retry", json={"files": names}, headers=headers, timeout=60, verify=verify
        )
    except httpx.HTTPError as error:
        print(f"bcmanager retry: cannot reach the manager at {url}: {error}", file=sys.stderr)
        return 2
    if reply.status_code != 200:
        print(
            f"bcmanager retry: the manager said {reply.status_code}: {reply.text}", file=sys.stderr
        )
        return 1
    sent = reply.json()["retried"]
    print(f"{len(sent)} quarantined file(s) pending again")
    for name in sent:
        print(shown(name))
    return 0
