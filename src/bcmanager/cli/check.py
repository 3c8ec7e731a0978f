"""``bcmanager check``: read the runs' folders and say whether the invariants of docs/design.md
hold.

Users run it after an incident (a crash, a full disk, a hand-made change), and the tests use it
as their oracle after crashes and faults. It reads only; it changes nothing. It finds the runs
under INPUT_DIR and their raw folders as the manager does (``discovery.py``), and reads each raw
folder against its run's output folder. The raw folders of one run share that folder, so a
job of one of them owns its output there as much as a job of another (as at the manager's
recovery).

Every finding is one line naming a path, with one of three kinds:

- BROKEN: an invariant does not hold (a raw file in two states, a link to something that is no
  raw file, FASTQ of one raw file from two jobs, a folder bcmanager did not make). A restart
  does not mend it: an operator must look.
- REPAIR: a change that a crash or a disk fault interrupted (a ``.bcm-tmp-`` folder, a DONE_ job
  whose output was never moved into pass/ and fail/, an output folder no job claims). The next
  start of bcmanager finishes it; a running manager also finishes unfinished commits of its own
  at its next rescan. Until then the run's output is not complete, so it counts as a problem.
- NOTE: what bcmanager ignores by design (a raw file that is a symlink, not a regular file; an
  entry named in bytes that are not UTF-8, shown as ``\\xNN``), what an operator did that
  bcmanager copes with (a raw file moved or deleted after a job recorded it), or a reason to
  distrust the answer (a manager is running and may change the folders while they are read).
  Notes do not fail the check.

Exit 0 when no BROKEN or REPAIR line was printed (a root with no run yet is said to be one and
exits 0), 1 otherwise, 2 when a folder is unreadable or `--run` names no run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TypeVar

from bcmanager.core import scan
from bcmanager.core.jobs import FileState
from bcmanager.facility import discovery, runrecord
from bcmanager.facility.discovery import HERE, Found, Layout
from bcmanager.facility.runs import UnknownRun
from bcmanager.lock import RunLock
from bcmanager.paths import (
    FAILED_KINDS,
    INPUT_KINDS,
    RAW_SUFFIX,
    SEAL_FILE,
    FolderKind,
    JobFolderName,
    RunPaths,
    is_aside_name,
    is_raw_name,
    is_utf8,
    parse_fastq_name,
    raw_stem,
    shown,
)
from bcmanager.settings import load_settings

K = TypeVar("K")

UNDECODABLE = "named in bytes that are not UTF-8"
# The state a job folder in INPUT_DIR gives the raw files it links to.
FILE_STATE_OF: dict[FolderKind, FileState] = {
    FolderKind.ASSIGNED: FileState.LEASED,
    FolderKind.DONE: FileState.DONE,
    FolderKind.QUARANTINED: FileState.FAILED,
}
# FAILED_ and EXCUSED_ folders record attempts, not states: a file only they hold is pending
# (tried again); the manager's /status tells how far its bisection has gone.


class Severity(str, Enum):
    BROKEN = "BROKEN"  # an invariant does not hold: an operator must look
    REPAIR = "REPAIR"  # an interrupted change: the next start of bcmanager finishes it
    NOTE = "NOTE"  # ignored by design, or a reason to distrust the answer: not a failure


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    path: Path
    what: str

    def __str__(self) -> str:
        return shown(f"{self.severity.value}: {self.path}: {self.what}")


@dataclass(slots=True)
class RunCheck:
    """What ``inspect_run`` found in one run: raw files by state, job folders by kind, FASTQ,
    the entries of its raw folders it ignores (relative to INPUT_DIR), and problems."""

    run: str  # relative to INPUT_DIR; "." for INPUT_DIR itself
    output_dir: Path
    raw_folders: int = 0
    files: dict[FileState, int] = field(default_factory=lambda: dict.fromkeys(FileState, 0))
    job_folders: dict[FolderKind, int] = field(default_factory=lambda: dict.fromkeys(FolderKind, 0))
    fastq: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)

    def add(self, severity: Severity, path: Path, what: str) -> None:
        self.problems.append(Finding(severity, path, what))

    def line(self) -> str:
        """The run's totals in one line, for a root that holds more than INPUT_DIR's own run."""
        failures = sum(p.severity is not Severity.NOTE for p in self.problems)
        folders = f"{self.raw_folders} raw folder{'s' if self.raw_folders != 1 else ''}"
        return shown(
            f"run {self.run}: {_files(self.files)}, in {folders}; "
            f"FASTQ files: {_fastq(self.fastq)}; "
            + (f"{failures} problem{'s' if failures > 1 else ''}" if failures else "ok")
        )


@dataclass(slots=True)
class CheckReport:
    """What a check found: each run's report, and the notes about INPUT_DIR and OUTPUT_DIR
    themselves (a manager holds them)."""

    input_dir: Path
    output_dir: Path
    runs: list[RunCheck] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [*self.notes, *(problem for run in self.runs for problem in run.problems)]

    @property
    def failures(self) -> list[Finding]:
        return [p for p in self.problems if p.severity is not Severity.NOTE]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def files(self) -> dict[FileState, int]:
        """Raw files by state over every run."""
        return _summed(run.files for run in self.runs)

    def lines(self) -> list[str]:
        """The problems, one per line, then each run's totals (but for INPUT_DIR served as
        one run) and the totals over all runs; a root where no POD5 file is written yet says
        that instead."""
        if not self.runs:
            return [
                *(str(problem) for problem in self.problems),
                f"INPUT_DIR  {shown(str(self.input_dir))}",
                f"OUTPUT_DIR {shown(str(self.output_dir))}",
                "no run yet: no folder under INPUT_DIR holds POD5 files, so there is nothing "
                "to check",
            ]
        job_folders = _summed(run.job_folders for run in self.runs)
        folders = ", ".join(
            f"{job_folders[kind]} {kind.value}" for kind in FolderKind if job_folders[kind]
        )
        fastq = _summed(run.fastq for run in self.runs)
        ignored = [name for run in self.runs for name in run.ignored]
        alone = [run.run for run in self.runs] == [HERE]
        out = [str(problem) for problem in self.problems]
        out += [
            f"INPUT_DIR  {shown(str(self.input_dir))}",
            f"OUTPUT_DIR {shown(str(self.output_dir))}",
        ]
        if not alone:
            out.append(f"runs: {len(self.runs)}")
            out += [run.line() for run in self.runs]
        out += [
            f"raw files: {_files(self.files)}",
            f"job folders: {folders or 'none'}",
            f"FASTQ files: {_fastq(fastq)}",
            f"ignored in {'INPUT_DIR' if alone else 'raw folders'}: {_named(ignored)} "
            "(not raw files, or raw files not regular)",
        ]
        if self.ok:
            out.append("all invariants hold")
        else:
            broken = sum(p.severity is Severity.BROKEN for p in self.problems)
            count = len(self.failures)
            out.append(
                f"{count} problem{'s' if count > 1 else ''}: {broken} broken, "
                f"{count - broken} left by an interrupted change (a restart of "
                "bcmanager finishes those); the invariants are listed in docs/design.md"
            )
        return out


def _summed(counts: Iterable[dict[K, int]]) -> dict[K, int]:
    total: dict[K, int] = {}
    for each in counts:
        for key, count in each.items():
            total[key] = total.get(key, 0) + count
    return total


def _files(files: dict[FileState, int]) -> str:
    # A raw file that went missing before any job recorded it leaves no trace on disk: only a
    # running manager counts those (/status), so check does not show the state.
    by_state = ", ".join(
        f"{files.get(state, 0)} {state.value}"
        for state in FileState
        if state is not FileState.MISSING
    )
    return f"{sum(files.values())} ({by_state})"


def _fastq(fastq: dict[str, int]) -> str:
    return ", ".join(f"{count} in {sub}/" for sub, count in sorted(fastq.items())) or "none"


def inspect(paths: RunPaths) -> CheckReport:
    """One raw folder served alone (INPUT_DIR is ``paths.input_dir``): read both folders once
    and report every broken invariant. Raises OSError if INPUT_DIR cannot be read."""
    report = CheckReport(paths.input_dir, paths.output_dir, notes=_lock_notes(paths))
    report.runs.append(inspect_run(paths.input_dir, paths.output_dir, HERE, [HERE]))
    return report


def inspect_root(
    input_root: Path, output_root: Path, layout: Layout, run: str | None = None
) -> CheckReport:
    """Every run under INPUT_DIR (or run ``run`` alone), its raw folders found as the manager
    finds them, each run checked against its output folder. Raises OSError if INPUT_DIR
    cannot be read, UnknownRun if ``run`` is no run under it."""
    report = CheckReport(
        input_root, output_root, notes=_lock_notes(RunPaths(input_root, output_root))
    )
    served_before = _holds_job_folders(input_root)
    found = discovery.discover(input_root, layout, below=HERE if run is None else run)
    if run in (None, HERE) and served_before and all(each.raw_folder != HERE for each in found):
        # INPUT_DIR was served as one run, whose raw files are all gone now: its job folders
        # are still worth a look.
        found.insert(0, Found(HERE, HERE))
    raw_folders: dict[str, list[str]] = defaultdict(list)
    for each in found:
        raw_folders[each.run].append(each.raw_folder)
    if run is not None and run not in raw_folders:
        raise UnknownRun(f"no run {run!r} under {input_root}")
    on_the_way = discovery.on_the_way(each.raw_folder for each in found)
    runs_on_the_way = discovery.on_the_way(raw_folders)
    for path in sorted(raw_folders) if run is None else [run]:
        output = output_root if path == HERE else output_root / path
        inspected = inspect_run(
            input_root, output, path, raw_folders[path], on_the_way, runs_on_the_way
        )
        _inspect_seal(inspected)
        report.runs.append(inspected)
    return report


def _inspect_seal(report: RunCheck) -> None:
    """A sealed run holds no raw file that is not done or quarantined: its seal promises that
    a restart need not look at its files. One that does (written below it after the seal, or
    finished since) is found by the next start, which reads the run back."""
    if report.run == HERE or runrecord.read_seal(report.output_dir, report.run) is None:
        return
    open_states = (FileState.WAITING, FileState.PENDING, FileState.LEASED)
    unaccounted = sum(report.files[state] for state in open_states)
    if unaccounted:
        report.add(
            Severity.REPAIR,
            report.output_dir / SEAL_FILE,
            f"sealed, yet {unaccounted} raw file{'s' if unaccounted > 1 else ''} below the run "
            "are not basecalled; the next start reads the run back and serves them",
        )


def _holds_job_folders(folder: Path) -> bool:
    listing = scan.list_input(folder)
    return bool(listing.job_folders or listing.temp)


def _lock_notes(paths: RunPaths) -> list[Finding]:
    notes = []
    for folder, lock_file in (
        (paths.input_dir, paths.lock_file),
        (paths.output_dir, paths.output_lock_file),
    ):
        holder = RunLock.holder(lock_file)
        if holder is not None:
            notes.append(
                Finding(
                    Severity.NOTE,
                    folder,
                    f"managed now by {holder}: folders may change while they are read, and a "
                    "change in flight can show as a problem; run check again, or with the "
                    "manager stopped",
                )
            )
    return notes


@dataclass(slots=True)
class _RawFolder:
    """One raw folder of the run being inspected, as read."""

    folder: Path
    raw: set[str]
    job_folders: list[JobFolderName]
    holders: dict[str, list[JobFolderName]]


def inspect_run(
    input_root: Path,
    output_dir: Path,
    run: str,
    raw_folders: list[str],
    on_the_way: frozenset[str] = frozenset(),
    runs_on_the_way: frozenset[str] = frozenset(),
) -> RunCheck:
    """One run: each of its raw folders (``raw_folders``, relative to ``input_root``) against the
    output folder they share. A job of one raw folder owns its output there as much as a job
    of another (as at the manager's recovery). ``on_the_way`` are the folders that lead to raw
    folders, and ``runs_on_the_way`` those that lead to runs: found inside a raw folder or an
    output folder, they are served, not unknown. Raises OSError if a raw folder cannot be read."""
    report = RunCheck(run, output_dir, raw_folders=len(raw_folders))
    read: list[_RawFolder] = []
    for raw_folder in raw_folders:
        folder = input_root if raw_folder == HERE else input_root / raw_folder
        listing = scan.list_input(folder)
        for name in listing.temp:
            report.add(
                Severity.REPAIR,
                folder / name,
                "an unfinished change left by a crash or a disk fault; removed at the next start",
            )
        ignored = [
            name for name in listing.ignored if discovery.join(raw_folder, name) not in on_the_way
        ]
        _inspect_ignored(report, folder, raw_folder, ignored)
        job_folders = _inspect_input_folders(report, folder, listing.job_folders)
        raw = set(listing.raw)
        holders = _inspect_links(report, folder, job_folders, raw)
        read.append(_RawFolder(folder, raw, job_folders, holders))
    _inspect_output_folders(report, read, runs_on_the_way)
    # A merged FASTQ stands for a raw file only if its job's DONE_ folder holds that file: the
    # name was the engine's choice.
    known = frozenset(
        f.jobid for each in read for f in each.job_folders if f.kind is not FolderKind.ASSIGNED
    )
    held = {
        (folder.jobid, name)
        for each in read
        for name, folders in each.holders.items()
        for folder in folders
        if folder.kind is FolderKind.DONE
    }
    raw_stems = {raw_stem(name) for each in read for name in each.raw}
    stems = _inspect_fastq(report, raw_stems, known, held)
    for each in read:
        _count_files(report, each, stems)
    return report


def _named(names: list[str], most: int = 5) -> str:
    """A count and the first few names (odd bytes as \\xNN), so an operator knows which
    entries are meant."""
    if not names:
        return "0"
    listed = ", ".join(shown(name) for name in sorted(names)[:most])
    more = f", and {len(names) - most} more" if len(names) > most else ""
    return f"{len(names)}: {listed}{more}"


def _inspect_ignored(report: RunCheck, folder: Path, raw_folder: str, ignored: list[str]) -> None:
    for name in ignored:
        path = folder / name
        if not is_utf8(name):
            report.add(Severity.NOTE, path, f"{UNDECODABLE}: never offered to an engine")
        elif is_raw_name(name):
            kind = "a symlink" if path.is_symlink() else "not a regular file"
            report.add(Severity.NOTE, path, f"{kind}: never offered to an engine")
        elif path.is_dir() and not path.is_symlink():
            report.add(Severity.BROKEN, path, "unknown folder: bcmanager makes no such folder")
        report.ignored.append(discovery.join(raw_folder, name))


def _inspect_input_folders(
    report: RunCheck, input_dir: Path, found: list[JobFolderName]
) -> list[JobFolderName]:
    """The job folders of a raw folder; a job with two of them is broken."""
    by_jobid: dict[str, list[JobFolderName]] = defaultdict(list)
    for folder in found:
        name = folder.name
        if folder.kind not in INPUT_KINDS:
            report.add(Severity.BROKEN, input_dir / name, "unknown folder: belongs in OUTPUT_DIR")
            continue
        report.job_folders[folder.kind] += 1
        by_jobid[folder.jobid].append(folder)
    for jobid, folders in by_jobid.items():
        if len(folders) > 1:
            names = sorted(f.name for f in folders)
            report.add(
                Severity.BROKEN, input_dir / names[0], f"job {jobid} is in two states: {names}"
            )
    return [folder for folders in by_jobid.values() for folder in folders]


def _inspect_links(
    report: RunCheck, input_dir: Path, folders: list[JobFolderName], raw: set[str]
) -> dict[str, list[JobFolderName]]:
    """Which job folders hold each raw file; every entry must be ``../<name>`` of a raw file."""
    holders: dict[str, list[JobFolderName]] = defaultdict(list)
    for folder in folders:
        name = folder.name
        path = input_dir / name
        for entry, target in scan.link_targets(path):
            if not is_utf8(entry):
                report.add(Severity.NOTE, path / entry, f"{UNDECODABLE}: not a file of this job")
            elif not is_raw_name(entry):
                report.add(Severity.BROKEN, path / entry, "not the link of a raw file")
            elif target is None:
                report.add(Severity.BROKEN, path / entry, "not a symlink")
            elif target != os.path.join(os.pardir, entry):
                report.add(Severity.BROKEN, path / entry, f"points to {target}, not ../{entry}")
            elif entry not in raw and not os.path.lexists(input_dir / entry):
                report.add(
                    Severity.NOTE,
                    path / entry,
                    f"missing: {input_dir / entry} was moved or deleted after {name} recorded it",
                )
                if folder.kind in FILE_STATE_OF:
                    report.files[FILE_STATE_OF[folder.kind]] += 1
            elif entry not in raw:
                report.add(
                    Severity.BROKEN,
                    path / entry,
                    f"symlink to something else: {input_dir / entry} is not a raw file",
                )
            else:
                holders[entry].append(folder)
    return holders


def _inspect_output_folders(
    report: RunCheck, read: list[_RawFolder], runs_on_the_way: frozenset[str]
) -> None:
    """Each TMPOUTPUT_ belongs to an ASSIGNED_ job of one of the run's raw folders, and each
    ASSIGNED_ job has one."""
    output_dir = report.output_dir
    input_folders = {
        (folder.jobid, folder.engine): (each.folder, folder)
        for each in read
        for folder in each.job_folders
    }
    if not output_dir.is_dir():
        report.add(Severity.NOTE, output_dir, "missing: no manager has started on this run")
        return
    listing = scan.list_output(output_dir)
    for name in listing.unknown_folders:
        if discovery.join(report.run, name) in runs_on_the_way:
            continue  # on the way to another run's output folder
        if not is_utf8(name):
            report.add(Severity.NOTE, output_dir / name, f"{UNDECODABLE}: not ours")
            continue
        if is_aside_name(name):
            report.add(
                Severity.NOTE,
                output_dir / name,
                "set aside by bcmanager (written after its job ended, or its name was taken): "
                "kept for a person to look at, never merged",
            )
            continue
        report.add(
            Severity.BROKEN, output_dir / name, "unknown folder: bcmanager makes no such folder"
        )
    outputs = set()
    for folder in listing.job_folders:
        report.job_folders[folder.kind] += 1
        if folder.kind is not FolderKind.TMPOUTPUT:
            continue
        outputs.add((folder.jobid, folder.engine))
        path = output_dir / folder.name
        owner = input_folders.get((folder.jobid, folder.engine))
        if owner is None:
            report.add(
                Severity.REPAIR,
                path,
                "no job folder claims this output; set aside at the next start",
            )
        elif owner[1].kind is FolderKind.DONE:
            report.add(
                Severity.REPAIR,
                path,
                f"{owner[1].name} is committed but its output "
                "was never moved into pass/ and fail/; moved at the next start or rescan",
            )
        elif owner[1].kind in FAILED_KINDS:
            report.add(
                Severity.REPAIR,
                path,
                f"{owner[1].name} is committed but its output "
                "was never set aside; set aside at the next start or rescan",
            )
    for key, (input_dir, folder) in input_folders.items():
        if folder.kind is FolderKind.ASSIGNED and key not in outputs:
            report.add(
                Severity.REPAIR,
                input_dir / folder.name,
                "leased, but its TMPOUTPUT_ folder is missing; made again at the next start",
            )


def _inspect_fastq(
    report: RunCheck, raw_stems: set[str], known: frozenset[str], held: set[tuple[str, str]]
) -> set[str]:
    """Stems with FASTQ in pass/ or fail/. A raw file whose FASTQ came from two jobs, or twice
    into one folder, was basecalled twice. FASTQ named otherwise (one file per batch, as Dorado
    writes with --emit-fastq), or merged from a ``known`` job that did not hold the raw file it
    is named after, stands for no raw file and is only counted."""
    output_dir = report.output_dir
    by_stem: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for sub, name in scan.fastq_files(output_dir):
        report.fastq[sub] = report.fastq.get(sub, 0) + 1
        if not is_utf8(name):
            path = output_dir / sub / name
            report.add(Severity.NOTE, path, f"{UNDECODABLE}: stands for no raw file")
            continue
        parsed = parse_fastq_name(name)
        if parsed is None:
            continue
        raw = parsed.stem + RAW_SUFFIX
        if parsed.jobid in known and (parsed.jobid, raw) not in held:
            path = output_dir / sub / name
            report.add(
                Severity.NOTE,
                path,
                f"named after {shown(raw)}, which job {parsed.jobid} did not hold: its engine "
                "chose the name; it stands for no raw file",
            )
            continue
        by_stem[parsed.stem].append((sub, name, parsed.jobid))
    for stem, found in by_stem.items():
        if stem not in raw_stems:
            continue
        jobs = {jobid for _, _, jobid in found}
        subs = [sub for sub, _, _ in found]
        if len(jobs) > 1 or len(subs) != len(set(subs)):
            merged = sorted(f"{sub}/{name}" for sub, name, _ in found)
            report.add(
                Severity.BROKEN,
                output_dir / merged[0],
                f"raw file {stem} was basecalled twice: {merged}",
            )
    return set(by_stem)


def _count_files(report: RunCheck, read: _RawFolder, stems: set[str]) -> None:
    unheld = []
    for name in sorted(read.raw):
        held = [folder for folder in read.holders.get(name, []) if folder.kind in FILE_STATE_OF]
        has_fastq = raw_stem(name) in stems
        if len(held) > 1:
            names = sorted(f.name for f in held)
            report.add(Severity.BROKEN, read.folder / name, f"in two states: {names}")
        if held:
            first = held[0]
            state = FILE_STATE_OF[first.kind]
            if has_fastq and state is not FileState.DONE:
                report.add(
                    Severity.BROKEN,
                    read.folder / name,
                    f"{state.value} in {first.name}, yet done: its FASTQ is in pass/ or fail/",
                )
            report.files[state] += 1
        elif has_fastq:
            report.files[FileState.DONE] += 1
        else:
            unheld.append(name)
    complete = {name for name, probe in scan.probe_many(read.folder, unheld) if probe.complete}
    for name in unheld:
        report.files[FileState.PENDING if name in complete else FileState.WAITING] += 1


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check the runs' folders against the invariants (after an incident)",
        description="Find the runs under INPUT_DIR as the manager does, read each raw folder "
        "and its run's output folder, print one line per broken invariant or interrupted "
        "change, then files by state for each run and in all. Exit 1 if any. Changes nothing.",
    )
    # --input and --output are the first spellings, still accepted.
    parser.add_argument(
        "--input-dir",
        "--input",
        help="INPUT_DIR: a run, or a root of runs (default: env BCM_INPUT_DIR)",
    )
    parser.add_argument("--output-dir", "--output", help="OUTPUT_DIR (default: env BCM_OUTPUT_DIR)")
    parser.add_argument(
        "--run",
        help="check this run alone: its path relative to INPUT_DIR, as /runs lists it (or "
        "its absolute path; default: every run)",
    )
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    settings = load_settings({"input_dir": args.input_dir, "output_dir": args.output_dir})
    if settings is None:
        return 2
    input_root, output_root = settings.input_dir.resolve(), settings.output_dir.resolve()
    run = None if args.run is None else discovery.named_run(input_root, args.run)
    if args.run is not None and run is None:
        print(f"bcmanager check: {shown(args.run)} is not under {input_root}", file=sys.stderr)
        return 2
    layout = Layout(settings.run_folder, settings.discovery_depth)
    try:
        report = inspect_root(input_root, output_root, layout, run)
    except OSError as error:
        print(f"bcmanager check: cannot read the run: {error}", file=sys.stderr)
        return 2
    except UnknownRun as error:
        print(f"bcmanager check: {shown(str(error))}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
