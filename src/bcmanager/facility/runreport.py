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

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcmanager.core import scan
from bcmanager.facility.pod5facts import read_facts
from bcmanager.facility.report import Quarantined, build_report, write_report
from bcmanager.facility.yieldledger import RunYield
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
