"""``bcmanager check``: read a run's folders and say whether the invariants of docs/design.md hold.

Users run it after an incident (a crash, a full disk, a hand-made change), and the tests use it
as their oracle after crashes and faults. It reads only; it changes nothing.

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

Exit 0 when no BROKEN or REPAIR line was printed, 1 otherwise, 2 when a folder is unreadable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from bcmanager import scan
from bcmanager.lock import RunLock
from bcmanager.paths import (
    FAILED_KINDS,
    INPUT_KINDS,
    RAW_SUFFIX,
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
from bcmanager.serve import load_settings
from bcmanager.state import FileState

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
class Problem:
    severity: Severity
    path: Path
    what: str

    def __str__(self) -> str:
        return shown(f"{self.severity.value}: {self.path}: {self.what}")


@dataclass(slots=True)
class Report:
    """What ``inspect`` found: raw files by state, job folders by kind, FASTQ, and problems."""

    paths: RunPaths
    files: dict[FileState, int] = field(default_factory=lambda: dict.fromkeys(FileState, 0))
    job_folders: dict[FolderKind, int] = field(default_factory=lambda: dict.fromkeys(FolderKind, 0))
    fastq: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def failures(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is not Severity.NOTE]

    @property
    def ok(self) -> bool:
        return not self.failures

    def add(self, severity: Severity, path: Path, what: str) -> None:
        self.problems.append(Problem(severity, path, what))

    def lines(self) -> list[str]:
        """The problems, one per line, then the summary."""
        # A raw file that went missing before any job recorded it leaves no trace on disk: only
        # a running manager counts those (/status), so check does not show the state.
        files = ", ".join(
            f"{count} {state.value}"
            for state, count in self.files.items()
            if state is not FileState.MISSING
        )
        folders = ", ".join(
            f"{self.job_folders[kind]} {kind.value}"
            for kind in FolderKind
            if self.job_folders[kind]
        )
        fastq = ", ".join(f"{count} in {sub}/" for sub, count in sorted(self.fastq.items()))
        out = [str(problem) for problem in self.problems]
        out += [
            f"INPUT_DIR  {shown(str(self.paths.input_dir))}",
            f"OUTPUT_DIR {shown(str(self.paths.output_dir))}",
            f"raw files: {sum(self.files.values())} ({files})",
            f"job folders: {folders or 'none'}",
            f"FASTQ files: {fastq or 'none'}",
            f"ignored in INPUT_DIR: {_named(self.ignored)} "
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


def inspect(paths: RunPaths) -> Report:
    """Read both folders once and report every broken invariant. Raises OSError if INPUT_DIR
    cannot be read."""
    report = Report(paths)
    for folder, lock_file in (
        (paths.input_dir, paths.lock_file),
        (paths.output_dir, paths.output_lock_file),
    ):
        holder = RunLock.holder(lock_file)
        if holder is not None:
            report.add(
                Severity.NOTE,
                folder,
                f"managed now by {holder}: folders may change while they are read, and a change "
                "in flight can show as a problem; run check again, or with the manager stopped",
            )
    listing = scan.list_input(paths.input_dir)
    raw = set(listing.raw)
    for name in listing.temp:
        report.add(
            Severity.REPAIR,
            paths.input_dir / name,
            "an unfinished change left by a crash or a disk fault; removed at the next start",
        )
    _inspect_ignored(report, listing.ignored)
    input_folders = _inspect_input_folders(report, listing.job_folders)
    holders = _inspect_links(report, input_folders, raw)
    _inspect_output_folders(report, input_folders)
    # A merged FASTQ stands for a raw file only if its job's DONE_ folder holds that file: the
    # name was the engine's choice.
    known = frozenset(f.jobid for f in input_folders if f.kind is not FolderKind.ASSIGNED)
    held = {
        (folder.jobid, name)
        for name, folders in holders.items()
        for folder in folders
        if folder.kind is FolderKind.DONE
    }
    stems = _inspect_fastq(report, {raw_stem(name) for name in raw}, known, held)
    _count_files(report, raw, holders, stems)
    return report


def _named(names: list[str], most: int = 5) -> str:
    """A count and the first few names (odd bytes as \\xNN), so an operator knows which
    entries are meant."""
    if not names:
        return "0"
    listed = ", ".join(shown(name) for name in sorted(names)[:most])
    more = f", and {len(names) - most} more" if len(names) > most else ""
    return f"{len(names)}: {listed}{more}"


def _inspect_ignored(report: Report, ignored: list[str]) -> None:
    input_dir = report.paths.input_dir
    for name in ignored:
        path = input_dir / name
        if not is_utf8(name):
            report.add(Severity.NOTE, path, f"{UNDECODABLE}: never offered to an engine")
        elif is_raw_name(name):
            kind = "a symlink" if path.is_symlink() else "not a regular file"
            report.add(Severity.NOTE, path, f"{kind}: never offered to an engine")
        elif path.is_dir() and not path.is_symlink():
            report.add(Severity.BROKEN, path, "unknown folder: bcmanager makes no such folder")
        report.ignored.append(name)


def _inspect_input_folders(report: Report, found: list[JobFolderName]) -> list[JobFolderName]:
    """The job folders of INPUT_DIR; a job with two of them is broken."""
    input_dir = report.paths.input_dir
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
    report: Report, folders: list[JobFolderName], raw: set[str]
) -> dict[str, list[JobFolderName]]:
    """Which job folders hold each raw file; every entry must be ``../<name>`` of a raw file."""
    holders: dict[str, list[JobFolderName]] = defaultdict(list)
    for folder in folders:
        name = folder.name
        path = report.paths.input_dir / name
        for entry, target in scan.link_targets(path):
            if not is_utf8(entry):
                report.add(Severity.NOTE, path / entry, f"{UNDECODABLE}: not a file of this job")
            elif not is_raw_name(entry):
                report.add(Severity.BROKEN, path / entry, "not the link of a raw file")
            elif target is None:
                report.add(Severity.BROKEN, path / entry, "not a symlink")
            elif target != os.path.join(os.pardir, entry):
                report.add(Severity.BROKEN, path / entry, f"points to {target}, not ../{entry}")
            elif entry not in raw and not os.path.lexists(report.paths.input_dir / entry):
                report.add(
                    Severity.NOTE,
                    path / entry,
                    f"missing: {report.paths.input_dir / entry} was moved or deleted after "
                    f"{name} recorded it",
                )
                if folder.kind in FILE_STATE_OF:
                    report.files[FILE_STATE_OF[folder.kind]] += 1
            elif entry not in raw:
                report.add(
                    Severity.BROKEN,
                    path / entry,
                    f"symlink to something else: {report.paths.input_dir / entry} is not a raw "
                    "file",
                )
            else:
                holders[entry].append(folder)
    return holders


def _inspect_output_folders(report: Report, found: list[JobFolderName]) -> None:
    """Each TMPOUTPUT_ belongs to an ASSIGNED_ job, and each ASSIGNED_ job has one."""
    paths = report.paths
    input_folders = {(folder.jobid, folder.engine): folder for folder in found}
    if not paths.output_dir.is_dir():
        report.add(Severity.NOTE, paths.output_dir, "missing: no manager has started on this run")
        return
    listing = scan.list_output(paths.output_dir)
    for name in listing.unknown_folders:
        if not is_utf8(name):
            report.add(Severity.NOTE, paths.output_dir / name, f"{UNDECODABLE}: not ours")
            continue
        if is_aside_name(name):
            report.add(
                Severity.NOTE,
                paths.output_dir / name,
                "set aside by bcmanager (written after its job ended, or its name was taken): "
                "kept for a person to look at, never merged",
            )
            continue
        report.add(
            Severity.BROKEN,
            paths.output_dir / name,
            "unknown folder: bcmanager makes no such folder",
        )
    outputs = set()
    for folder in listing.job_folders:
        report.job_folders[folder.kind] += 1
        if folder.kind is not FolderKind.TMPOUTPUT:
            continue
        outputs.add((folder.jobid, folder.engine))
        path = paths.output_folder(folder.kind, folder.jobid, folder.engine)
        owner = input_folders.get((folder.jobid, folder.engine))
        if owner is None:
            report.add(
                Severity.REPAIR,
                path,
                "no job folder claims this output; set aside at the next start",
            )
        elif owner.kind is FolderKind.DONE:
            report.add(
                Severity.REPAIR,
                path,
                f"{owner.name} is committed but its output "
                "was never moved into pass/ and fail/; moved at the next start or rescan",
            )
        elif owner.kind in FAILED_KINDS:
            report.add(
                Severity.REPAIR,
                path,
                f"{owner.name} is committed but its output "
                "was never set aside; set aside at the next start or rescan",
            )
    for key, folder in input_folders.items():
        if folder.kind is FolderKind.ASSIGNED and key not in outputs:
            report.add(
                Severity.REPAIR,
                paths.input_folder(folder.kind, folder.jobid, folder.engine),
                "leased, but its TMPOUTPUT_ folder is missing; made again at the next start",
            )


def _inspect_fastq(
    report: Report, raw_stems: set[str], known: frozenset[str], held: set[tuple[str, str]]
) -> set[str]:
    """Stems with FASTQ in pass/ or fail/. A raw file whose FASTQ came from two jobs, or twice
    into one folder, was basecalled twice. FASTQ named otherwise (one file per batch, as Dorado
    writes with --emit-fastq), or merged from a ``known`` job that did not hold the raw file it
    is named after, stands for no raw file and is only counted."""
    by_stem: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for sub, name in scan.fastq_files(report.paths.output_dir):
        report.fastq[sub] = report.fastq.get(sub, 0) + 1
        if not is_utf8(name):
            path = report.paths.output_dir / sub / name
            report.add(Severity.NOTE, path, f"{UNDECODABLE}: stands for no raw file")
            continue
        parsed = parse_fastq_name(name)
        if parsed is None:
            continue
        raw = parsed.stem + RAW_SUFFIX
        if parsed.jobid in known and (parsed.jobid, raw) not in held:
            path = report.paths.output_dir / sub / name
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
                report.paths.output_dir / merged[0],
                f"raw file {stem} was basecalled twice: {merged}",
            )
    return set(by_stem)


def _count_files(
    report: Report, raw: set[str], holders: dict[str, list[JobFolderName]], stems: set[str]
) -> None:
    input_dir = report.paths.input_dir
    unheld = []
    for name in sorted(raw):
        held = [folder for folder in holders.get(name, []) if folder.kind in FILE_STATE_OF]
        has_fastq = raw_stem(name) in stems
        if len(held) > 1:
            names = sorted(f.name for f in held)
            report.add(Severity.BROKEN, input_dir / name, f"in two states: {names}")
        if held:
            first = held[0]
            state = FILE_STATE_OF[first.kind]
            if has_fastq and state is not FileState.DONE:
                report.add(
                    Severity.BROKEN,
                    input_dir / name,
                    f"{state.value} in {first.name}, yet done: its FASTQ is in pass/ or fail/",
                )
            report.files[state] += 1
        elif has_fastq:
            report.files[FileState.DONE] += 1
        else:
            unheld.append(name)
    complete = {name for name, probe in scan.probe_many(input_dir, unheld) if probe.complete}
    for name in unheld:
        report.files[FileState.PENDING if name in complete else FileState.WAITING] += 1


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a run's folders against the invariants (after an incident)",
        description="Read INPUT_DIR and OUTPUT_DIR, print one line per broken invariant or "
        "interrupted change, then files by state. Exit 1 if any. Changes nothing.",
    )
    # --input and --output are the first spellings, still accepted.
    parser.add_argument(
        "--input-dir", "--input", help="the run's INPUT_DIR (default: env BCM_INPUT_DIR)"
    )
    parser.add_argument(
        "--output-dir", "--output", help="the run's OUTPUT_DIR (default: env BCM_OUTPUT_DIR)"
    )
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    settings = load_settings({"input_dir": args.input_dir, "output_dir": args.output_dir})
    if settings is None:
        return 2
    paths = RunPaths(settings.input_dir.resolve(), settings.output_dir.resolve())
    try:
        report = inspect(paths)
    except OSError as error:
        print(f"bcmanager check: cannot read the run: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
