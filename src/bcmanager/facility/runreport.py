"""A run's report, gathered from its folders: what ``report.json`` and ``report.html`` say.

The folders are the truth, so the report reads them, whether the manager writes it when a run
completes or an operator asks for it with ``bcmanager report RUN`` (with or without a manager
running): files done are the links of the DONE_ folders of the run's raw folders, quarantined
files those of its QUARANTINED_ folders (with what the last attempt recorded), reads in are the
read counts the done POD5 files hold (read with ``pod5``, not from the basecaller), and reads out
the run's yield ledger (``yieldledger.py``). It reads O(files of the run): run it in a worker
thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcmanager.core import scan
from bcmanager.facility.discovery import HERE, Layout, discover, named_run
from bcmanager.facility.pod5facts import read_facts
from bcmanager.facility.report import Quarantined, build_report, write_report
from bcmanager.facility.yieldledger import RunYield, rebuild_yield
from bcmanager.paths import ATTEMPT_FILE, FolderKind, RunPaths, raw_names_among


@dataclass(slots=True)
class RunFiles:
    """What the job folders of a run's raw folders say, and when the run started and ended."""

    done: dict[Path, None] = field(default_factory=dict)  # raw files, in order
    quarantined: list[Quarantined] = field(default_factory=list)
    started_at: float | None = None  # the oldest raw file's modification time
    ended_at: float | None = None  # the last job folder's rename


def run_files(raw_folders: Iterable[RunPaths]) -> RunFiles:
    found = RunFiles()
    stamps: list[float] = []
    ends: list[float] = []
    for paths in raw_folders:
        listing = scan.list_input(paths.input_dir)
        stamps += [mtime for _, mtime in _mtimes(paths.input_dir, listing.raw)]
        for folder in listing.job_folders:
            if folder.kind not in (FolderKind.DONE, FolderKind.QUARANTINED):
                continue
            path = paths.input_dir / folder.name
            files = raw_names_among(scan.names_in(path))
            try:
                ends.append(path.stat().st_ctime)
            except OSError:
                continue
            if folder.kind is FolderKind.DONE:
                found.done.update(dict.fromkeys(paths.input_dir / name for name in files))
                continue
            record = scan.attempt_record(
                paths.output_folder(FolderKind.FAILEDOUTPUT, folder.jobid, folder.engine)
                / ATTEMPT_FILE
            )
            reason = record.describe() if record is not None else "failed alone (no record of why)"
            found.quarantined += [
                Quarantined(f"{paths.input_dir.name}/{name}", f"{reason} (on {folder.engine})")
                for name in files
            ]
    found.started_at = min(stamps, default=None)
    found.ended_at = max(ends, default=None)
    return found


def write_run_report(
    run: str, output: Path, raw_folders: list[RunPaths], ledger: RunYield
) -> tuple[Path, Path, dict[str, Any]]:
    """Gather, build and write the report of ``run`` into its output folder; returns where the
    JSON and HTML went, and the report."""
    report = build_run_report(run, output, raw_folders, ledger)
    json_path, html_path = write_report(output, report)
    return json_path, html_path, report


def build_run_report(
    run: str, output: Path, raw_folders: list[RunPaths], ledger: RunYield
) -> dict[str, Any]:
    """Gather and build the report of ``run`` (the manager keeps the notice that tells of it
    before it writes it)."""
    files = run_files(raw_folders)
    reads_in: dict[str, int | None] = {}
    for path in files.done:
        facts = read_facts(path, quiet=True)  # the report counts the files it could not read
        reads_in[str(path)] = None if facts is None else facts.reads
    now = time.time()
    return build_report(
        run=run,
        output_dir=output,
        ledger=ledger,
        reads_in=reads_in,
        files_done=len(files.done),
        quarantined=files.quarantined,
        started_at=files.started_at if files.started_at is not None else now,
        ended_at=files.ended_at if files.ended_at is not None else now,
        generated_at=now,
    )


def _mtimes(folder: Path, names: list[str]) -> Iterable[tuple[str, float]]:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            try:
                yield name, os.stat(name, dir_fd=descriptor, follow_symlinks=False).st_mtime
            except OSError:
                continue
    finally:
        os.close(descriptor)


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a run's report (report.json and report.html) from its folders",
        description="Gather what a run's folders say (files done and quarantined, the reads "
        "the agents counted, the reads its POD5 files hold) and write report.json and "
        "report.html into the run's output folder, as the manager does when a run completes. "
        "Works with or without a manager running.",
    )
    parser.add_argument(
        "run", nargs="?", default=HERE, help="the run's path under INPUT_DIR (default: '.')"
    )
    parser.add_argument("--input-dir", help="INPUT_DIR (default: env BCM_INPUT_DIR)")
    parser.add_argument("--output-dir", help="OUTPUT_DIR (default: env BCM_OUTPUT_DIR)")
    parser.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    # Imported here: serve imports the app, which imports the facility, which imports this.
    from bcmanager.serve import load_settings

    settings = load_settings({"input_dir": args.input_dir, "output_dir": args.output_dir})
    if settings is None:
        return 2
    input_root, output_root = settings.input_dir.resolve(), settings.output_dir.resolve()
    run = named_run(input_root, args.run)
    if run is None:
        print(f"bcmanager report: {args.run} is not under {input_root}", file=sys.stderr)
        return 1
    layout = Layout(settings.run_folder, settings.discovery_depth)
    found = [each for each in discover(input_root, layout, below=run) if each.run == run]
    if not found:
        print(f"bcmanager report: no run {run!r} under {input_root}", file=sys.stderr)
        return 1
    output = output_root if run == HERE else output_root / run
    raw_folders = [
        RunPaths(input_root / each.source if each.source != HERE else input_root, output)
        for each in found
    ]
    try:
        logs = [
            output / name
            for name in scan.names_in(output)
            if name.startswith((FolderKind.LOGOUTPUT.value, FolderKind.FAILEDOUTPUT.value))
        ]
        json_path, html_path, report = write_run_report(
            run, output, raw_folders, rebuild_yield(logs)
        )
    except OSError as error:
        print(f"bcmanager report: {error}", file=sys.stderr)
        return 2
    basecalled = report["basecalled"]
    print(
        f"{run}: {report['files_done']} files done, {report['files_quarantined']} quarantined, "
        f"{basecalled['reads']:,} reads, {basecalled['bases']:,} bases"
    )
    print(html_path)
    print(json_path)
    return 0
