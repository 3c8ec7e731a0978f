"""``bcmanager retry``: send quarantined files back, without a restart.

With a manager running on the run (it holds the run's lock), the command asks it through its
authenticated ``POST /retry`` route, so memory and disk change together. With none, it renames
the folders itself (a failed attempt's ``FAILED_`` or ``QUARANTINED_`` folder becomes
``EXCUSED_``) in every raw folder of every run under INPUT_DIR, found as the manager finds them,
and removes the seal of each run it sent files back in; the next start reads the files back as
pending. Either way the action is appended to ``OPERATOR.log`` in INPUT_DIR (``audit.py``)
before it is made: by the manager, with the kind of token and the address it came from, or
here, as "local" with the user's name.

The manager is called with ``BCM_OPERATOR_TOKEN`` (else ``BCM_API_TOKEN``), over https when
``BCM_TLS_CERTFILE`` is set, verified against ``BCM_CA_FILE`` (else the system's CAs).
"""

from __future__ import annotations

import argparse
import getpass
import socket
import ssl
import sys
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from bcmanager import audit
from bcmanager.core import scan
from bcmanager.core.folders import RunFolders
from bcmanager.facility import discovery, runrecord
from bcmanager.facility.discovery import HERE, Layout
from bcmanager.lock import RunLock
from bcmanager.paths import JobFolderName, RunPaths, shown
from bcmanager.settings import ClientSettings, Settings, load_settings
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
    parser.add_argument(
        "files",
        nargs="*",
        help="raw file names, in every run, or paths relative to INPUT_DIR (default: every "
        "quarantined file)",
    )
    parser.add_argument(
        "--input-dir",
        "--input",
        help="INPUT_DIR: a run, or a root of runs (default: env BCM_INPUT_DIR)",
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
        return retry_on_folders(settings, paths, names)
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


@dataclass(frozen=True, slots=True)
class _Retry:
    """What a retry changes in one raw folder: the attempts it excuses there."""

    run: str
    raw_folder: str
    folders: RunFolders
    attempts: list[tuple[JobFolderName, str]]


def retry_on_folders(settings: Settings, paths: RunPaths, names: list[str] | None) -> int:
    """No manager runs: excuse the attempts in every raw folder of every run, recorded first
    (nothing is changed when the record cannot be written), and unseal each run changed."""
    root, output_root = paths.input_dir, paths.output_dir
    layout = Layout(settings.run_folder, settings.discovery_depth)
    try:
        raw_folders = {each.raw_folder: each.run for each in discovery.discover(root, layout)}
        if HERE not in raw_folders and scan.list_input(root).job_folders:
            raw_folders[HERE] = HERE  # one run served alone, whose raw files are all gone
        plan = []
        for raw_folder, run in sorted(raw_folders.items()):
            mine = _names_in(raw_folder, names)
            if mine is not None and not mine:
                continue  # no file named is one of this raw folder's
            folders = RunFolders(
                RunPaths(
                    root if raw_folder == HERE else root / raw_folder,
                    output_root if run == HERE else output_root / run,
                    root,
                    output_root,
                )
            )
            attempts = folders.to_retry(mine)
            if attempts:
                plan.append(_Retry(run, raw_folder, folders, attempts))
    except OSError as error:
        print(f"bcmanager retry: cannot read the run's folders: {error}", file=sys.stderr)
        return 2
    by_run: dict[str, list[str]] = {}
    for each in plan:
        by_run.setdefault(each.run, []).extend(
            discovery.join(each.raw_folder, name)
            for name in sorted({name for _, name in each.attempts})
        )
    sent = [path for files in by_run.values() for path in files]
    try:
        audit.record(
            root,
            action="retry",
            token="local",
            client=f"{getpass.getuser()}@{socket.gethostname()}",
            asked=names,
            files=sent,
        )
    except OSError as error:
        print(
            f"bcmanager retry: cannot record it in OPERATOR.log ({error}); nothing changed",
            file=sys.stderr,
        )
        return 2
    try:
        for each in plan:
            each.folders.excuse(each.attempts)
            if each.run != HERE:
                runrecord.remove_seal(each.folders.paths.output_dir)
    except OSError as error:
        print(f"bcmanager retry: cannot change the run's folders: {error}", file=sys.stderr)
        return 2
    print(f"{len(sent)} file(s) sent back; the next start of the manager offers them")
    for run, files in by_run.items():
        if run != HERE:
            print(shown(f"run {run}: {len(files)} file(s)"))
        for path in files:
            print(("  " if run != HERE else "") + shown(path))
    return 0


def _names_in(raw_folder: str, names: list[str] | None) -> set[str] | None:
    """The files of raw folder ``raw_folder`` among ``names``, as the running manager reads them:
    a path relative to INPUT_DIR names a file of its own raw folder, a bare name a file of any
    raw folder; None (every quarantined file) stays None."""
    if names is None:
        return None
    return {
        name.rpartition("/")[2]
        for name in names
        if discovery.parent_of(name) == raw_folder or ("/" not in name and raw_folder != HERE)
    }
