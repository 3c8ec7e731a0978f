"""Reading the run's folders: which raw files exist, whether each is complete, which job folders
are there. Nothing here writes; these functions run in worker threads, off the event loop.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from bcmanager.paths import (
    FAIL,
    FINAL_PREFIX,
    OUTPUT_KINDS,
    PASS,
    RAW_SUFFIX,
    TEMP_PREFIX,
    FolderKind,
    JobFolderName,
    fastq_raw_stem,
    is_final_summary_name,
    parse_job_folder,
    raw_names_among,
    raw_shaped_among,
    split_undecodable,
)

# The POD5 specification places this signature at the start and at the end of every file,
# "to allow quickly checking whether the file is complete".
POD5_SIGNATURE = b"\x8bPOD\r\n\x1a\n"
_SIGNATURE_SIZE = len(POD5_SIGNATURE)
_MTIME = itemgetter(0)


class RawProbe(NamedTuple):
    complete: bool
    size: int
    mtime: float


def probe(path: str | Path, dir_fd: int | None = None) -> RawProbe | None:
    """Whether a raw file is complete; None when it is not a regular file (gone, a symlink,
    a folder), which is never offered. With ``dir_fd``, ``path`` is a name in that folder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        size = info.st_size
        complete = (
            size >= 2 * _SIGNATURE_SIZE
            and os.pread(fd, _SIGNATURE_SIZE, 0) == POD5_SIGNATURE
            and os.pread(fd, _SIGNATURE_SIZE, size - _SIGNATURE_SIZE) == POD5_SIGNATURE
        )
        return RawProbe(complete, size, info.st_mtime)
    except OSError:
        return None
    finally:
        os.close(fd)


@contextmanager
def _opened(folder: Path) -> Iterator[int | None]:
    """The folder open for ``dir_fd`` calls, which resolve a name in it without walking its
    whole path again (and without pathlib, which costs more than the system call): a start-up
    looks at every file of a run that may hold a million. None if it cannot be opened, so
    that each name is then simply not found."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def probe_many(input_dir: Path, names: Iterable[str]) -> list[tuple[str, RawProbe]]:
    found: list[tuple[str, RawProbe]] = []
    with _opened(input_dir) as folder:
        if folder is None:
            return found
        for name in names:
            result = probe(name, folder)
            if result is not None:
                found.append((name, result))
    return found


def absent(input_dir: Path, names: Iterable[str]) -> list[str]:
    """The names that are no longer in INPUT_DIR (one lstat each)."""
    gone: list[str] = []
    with _opened(input_dir) as folder:
        if folder is None:
            return gone
        for name in names:
            try:
                os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                gone.append(name)
            except OSError:
                continue  # cannot tell: it stays where it is
    return gone


def sizes(input_dir: Path, names: Iterable[str]) -> list[tuple[str, int]]:
    """The size of each raw file (one lstat each; a vanished file is dropped)."""
    found: list[tuple[str, int]] = []
    with _opened(input_dir) as folder:
        if folder is None:
            return found
        for name in names:
            try:
                found.append((name, os.stat(name, dir_fd=folder, follow_symlinks=False).st_size))
            except OSError:
                continue
    return found


def changed_times(input_dir: Path, names: Iterable[str]) -> list[float | None]:
    """The status-change time of each entry of INPUT_DIR (one lstat each); None for one that
    is gone."""
    found: list[float | None] = []
    with _opened(input_dir) as folder:
        if folder is None:
            return [None for _ in names]
        for name in names:
            try:
                found.append(os.stat(name, dir_fd=folder, follow_symlinks=False).st_ctime)
            except OSError:
                found.append(None)
    return found


def oldest_first(input_dir: Path, names: Iterable[str]) -> list[str]:
    """Names sorted by modification time (one lstat each; a vanished file is dropped)."""
    stamped = []
    with _opened(input_dir) as folder:
        if folder is None:
            return []
        for name in names:
            try:
                stamped.append((os.stat(name, dir_fd=folder, follow_symlinks=False).st_mtime, name))
            except OSError:
                continue
    stamped.sort(key=_MTIME)  # floats compare far faster than tuples; ties keep listing order
    return [name for _, name in stamped]


@dataclass(slots=True)
class InputListing:
    """One pass over INPUT_DIR, sorted by what each entry is."""

    raw: list[str] = field(default_factory=list)
    job_folders: list[JobFolderName] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # symlinked raw files and unknown entries


def list_input(input_dir: Path) -> InputListing:
    listing = InputListing()
    files = []
    with os.scandir(input_dir) as entries:
        for entry in entries:
            name = entry.name
            if entry.is_file(follow_symlinks=False):
                files.append(name)
            elif entry.is_dir(follow_symlinks=False):
                # By name, as a folder: an engine id may end in ".pod5" like a raw file.
                if (parsed := parse_job_folder(name)) is not None:
                    listing.job_folders.append(parsed)
                elif name.startswith(TEMP_PREFIX):
                    listing.temp.append(name)
                elif not name.startswith("."):
                    listing.ignored.append(name)
            elif not name.startswith("."):
                listing.ignored.append(name)
    listing.raw = raw_names_among(files)
    if len(listing.raw) < len(files):
        raw = set(listing.raw)
        listing.ignored += [n for n in files if n not in raw and not n.startswith(".")]
    return listing


class RawNames(NamedTuple):
    names: list[str]  # the raw files
    undecodable: list[str]  # files named like raw files in bytes that are not UTF-8: never offered


def raw_names(input_dir: Path) -> RawNames:
    """The raw files of INPUT_DIR: regular ``*.pod5`` files, never symlinks, named in UTF-8;
    and those that would be raw files but for their names, to tell an operator."""
    with os.scandir(input_dir) as entries:
        files = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
    return RawNames(*split_undecodable(raw_shaped_among(files)))


def names_in(folder: str | Path) -> list[str]:
    return os.listdir(folder)


def parse_job_folders(names: Iterable[str], kind: FolderKind) -> list[JobFolderName]:
    """The job folders of one kind among ``names``, whatever each entry is (an engine may have
    made one a symlink); other names are not parsed (a run holds one folder per job)."""
    parsed = (parse_job_folder(name) for name in names if name.startswith(kind.value))
    return [name for name in parsed if name is not None]


def link_targets(folder: Path) -> list[tuple[str, str | None]]:
    """Each entry of a job folder with where it points; None for an entry that is no symlink."""
    found: list[tuple[str, str | None]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            target = os.readlink(entry.path) if entry.is_symlink() else None
            found.append((entry.name, target))
    return found


@dataclass(slots=True)
class OutputListing:
    """One pass over OUTPUT_DIR, sorted by what each folder is; files there are not ours."""

    job_folders: list[JobFolderName] = field(default_factory=list)
    unknown_folders: list[str] = field(default_factory=list)


def list_output(output_dir: Path) -> OutputListing:
    listing = OutputListing()
    with os.scandir(output_dir) as entries:
        for entry in entries:
            name = entry.name
            if (
                name in (PASS, FAIL)
                or name.startswith(".")
                or not entry.is_dir(follow_symlinks=False)
            ):
                continue
            parsed = parse_job_folder(name)
            if parsed is not None and parsed.kind in OUTPUT_KINDS:
                listing.job_folders.append(parsed)
            else:
                listing.unknown_folders.append(name)
    return listing


def _pass_and_fail(output_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """(``pass`` or ``fail``, the names in it) for each of the two that exists."""
    for sub in (PASS, FAIL):
        try:
            names = names_in(output_dir / sub)
        except FileNotFoundError:
            continue
        yield sub, names


def fastq_files(output_dir: Path) -> list[tuple[str, str]]:
    """(``pass`` or ``fail``, name) of every FASTQ file in OUTPUT_DIR/pass and /fail."""
    found: list[tuple[str, str]] = []
    for sub, names in _pass_and_fail(output_dir):
        found.extend((sub, name) for name in names if fastq_raw_stem(name) is not None)
    return found


def raw_names_with_fastq(output_dir: Path, known_jobs: frozenset[str]) -> set[str]:
    """Raw file names whose stem already has FASTQ in pass/ or fail/, made by other means or by
    jobs not in ``known_jobs`` (whose DONE_ folders record their files themselves). Most of a
    big run's FASTQ is of known jobs: their job id is cut out of the name without the regular
    expression (a start-up reads every FASTQ name of a run)."""
    found: set[str] = set()
    start = len(FINAL_PREFIX)
    for _, names in _pass_and_fail(output_dir):
        for name in names:
            if name.startswith(FINAL_PREFIX):
                end = name.find("_", start)
                if end > start and name[start:end] in known_jobs:
                    continue
            stem = fastq_raw_stem(name, known_jobs)
            if stem is not None:
                found.add(stem + RAW_SUFFIX)
    return found


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """What an agent recorded of one run of its basecaller (the agent's ATTEMPT_FILE)."""

    exit_code: int | None
    signal: str | None
    last_line: str | None
    seconds: float | None = None  # how long the basecaller ran
    rejected: str | None = None  # why the account of its reads rejected a DONE

    def describe(self) -> str:
        """In words, for a person: "exit 127: sh: dorado: not found"; "exit 0, but f3.pod5:
        0 of 4,000 reads came out"."""
        if self.rejected:
            how = "" if self.exit_code is None else f"exit {self.exit_code}, but "
            return how + self.rejected
        how = (
            f"killed by {self.signal}"
            if self.signal
            else f"exit {self.exit_code}"
            if self.exit_code is not None
            else "no exit code"
        )
        return f"{how}: {self.last_line}" if self.last_line else how


ATTEMPT_RECORD_MAX = 64 * 1024  # an engine writes it: read no more than this


def attempt_record(path: Path, rejected: str | None = None) -> AttemptRecord | None:
    """The record an agent left, or None when there is none or it is not one (an engine wrote
    it: any bytes, any size, any JSON; nothing here raises). ``rejected``: why the account of
    the job's reads rejected it, which makes a record of its own where the agent left none."""
    record = json_record(path) or {}
    if not record and rejected is None:
        return None
    code, signal, line, seconds = (
        record.get("exit_code"),
        record.get("signal"),
        record.get("stderr_last_line"),
        record.get("seconds"),
    )
    return AttemptRecord(
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        _text(signal[:32]) if isinstance(signal, str) else None,
        _text(line[:300]) if isinstance(line, str) and line else None,
        float(seconds)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 <= seconds < 1e9
        else None,
        rejected,
    )


def json_record(path: Path) -> dict[str, object] | None:
    """A small JSON object a process left in a job's output folder (an agent's record, the
    account of a job), or None when there is none or it is not one: read through no symlink
    and no more than ``ATTEMPT_RECORD_MAX`` bytes; nothing here raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, ATTEMPT_RECORD_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > ATTEMPT_RECORD_MAX:
        return None
    try:
        record = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _text(value: str) -> str:
    """``value`` safe to send as JSON: a lone surrogate (JSON can spell one) escaped."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def final_summary(folders: Iterable[Path]) -> Path | None:
    """MinKNOW's ``final_summary_*.txt``, which it writes when sequencing stops, in the first of
    ``folders`` that has one (a folder that cannot be read has none)."""
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if is_final_summary_name(entry.name) and entry.is_file():
                        return Path(entry.path)
        except OSError:
            continue
    return None


FINAL_SUMMARY_READ = 64 * 1024  # MinKNOW's summary is a few kB: more is not one


def files_in_final_dest(summary: Path) -> int | None:
    """The raw files MinKNOW says it wrote (``pod5_files_in_final_dest=N``; older MinKNOW says
    ``fast5_files_in_final_dest``), or None when the summary does not say or cannot be read:
    a run is not finished before that many were seen, whatever order the files land in."""
    try:
        with open(summary, "rb") as handle:
            text = handle.read(FINAL_SUMMARY_READ).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("pod5_files_in_final_dest", "fast5_files_in_final_dest"):
            count = value.strip()
            return int(count) if count.isdigit() else None
    return None
