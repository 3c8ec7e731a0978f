"""The account of a job's reads: each raw file's read ids against the read ids that came out.

An engine's DONE is a claim. Dorado skips a POD5 file it cannot open and still exits 0; a
basecaller that crashes mid-write leaves a reads file cut short; a confused wrapper can write a
read twice. None of that shows in an exit code or in a count of files, so before a DONE is
committed the manager reads the batch's raw read ids (``pod5``) and the read ids of every reads
file the merge would move, and judges each raw file by its own reads:

- A reads file must be whole: a FASTQ whose last record is complete, a gzip stream that ends,
  a BAM (and a bgzipped SAM) ending with the BGZF end-of-file block, a CRAM ending with its
  end-of-file container, a SAM ending with a newline.
- A read came out when a record carries its id, or names it as its parent (``pi:Z:``, Dorado's
  split reads: one raw read, several records). Each raw read must come out, and once: a record
  id seen twice, or a read that came out both whole and split, is a read twice.
- A raw file is rejected when reads of it are missing (beyond the share the run's settings let a
  basecaller drop on purpose, none by default), when one came out twice, when its reads cannot
  be read, when the basecaller's stderr says it could not open it, or when some of its reads are
  in a reads file that is rejected. A reads file is rejected when it is not whole, holds reads of
  no raw file of the batch, or holds reads of a rejected raw file: nothing of a rejected file's
  output is merged, so its retry cannot double a read. The rule is applied until nothing changes.
- A raw file gone from INPUT_DIR (an operator deleted it while it was leased) cannot be read: it
  is not checked, and reads of no known file are then not held against the reads files.

The manager reads everything itself, so an engine that writes no account of its own (the
original BCProcessor, or any wrapper) is checked the same way. The work is O(reads of the
batch) in time and memory, in a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bcmanager.paths import is_reads_name, merge_target, shown
from bcmanager.reads.files import (
    ReadsFileError,
    derived_read_id,
    output_entries,
    raw_read_ids,
    reads_of,
    reason,
)

FORMAT = "bcmanager-job-account"
VERSION = 1
# Dorado's line for a POD5 file it skips (since 1.1.0): POD5 Failed to open file - '<error>'
# @ '<file>' (<batch>,<row>).
_SKIPPED = re.compile(r"POD5 Failed to open file - '(?P<error>.*)' @ '(?P<file>[^']*)'")


@dataclass(frozen=True, slots=True)
class FileAccount:
    """One raw file of the batch: its reads in, and how they came out."""

    name: str
    reads_in: int | None  # None: its read ids could not be read
    came_out: int = 0  # raw reads that came out, whole or split
    split: int = 0  # of those, reads that came out split (as the parent of several records)
    twice: int = 0  # raw reads that came out more than once
    rejected: str | None = None  # why its reads are not taken, or None
    alone: bool = True  # rejected on its own evidence (else for a reads file it shares)

    @property
    def missing(self) -> int:
        return 0 if self.reads_in is None else self.reads_in - self.came_out


@dataclass(slots=True)
class JobAccount:
    """The account of one job: a line per raw file and the reads files not to merge."""

    files: list[FileAccount]
    records_out: int = 0  # records of the reads files that are merged
    rejected_reads_files: dict[str, str] = field(default_factory=dict)  # path inside -> why

    def accepted(self) -> tuple[str, ...]:
        return tuple(each.name for each in self.files if each.rejected is None)

    def rejected(self) -> list[FileAccount]:
        return [each for each in self.files if each.rejected is not None]


@dataclass(slots=True)
class _ReadsFile:
    """What reading one reads file found."""

    path: Path
    inside: str
    keys: set[str] = field(default_factory=set)  # the raw read each record stands for
    records: int = 0
    problem: str | None = None
    strangers: set[str] = field(default_factory=set)  # keys of no raw read of the batch

    def owners(self, raw: list[set[str]]) -> list[int]:
        """The raw files (by index) with reads in it."""
        return [index for index, ids in enumerate(raw) if not ids.isdisjoint(self.keys)]


@dataclass(slots=True)
class _Out:
    """What came out of all the reads files: each record counted under the raw read it
    stands for, whole (its own id) or as a piece of a split read (its parent's)."""

    whole: Counter[str] = field(default_factory=Counter)
    split: Counter[str] = field(default_factory=Counter)
    pieces: set[str] = field(default_factory=set)  # the ids of the pieces
    doubled: set[str] = field(default_factory=set)  # raw reads with a piece out twice

    def add(self, found: _ReadsFile, ids: list[str], parents: list[str | None] | None) -> None:
        """A batch of records of one reads file; ``parents`` is None when none names one."""
        found.records += len(ids)
        if parents is None:
            self.whole.update(ids)
            found.keys.update(ids)
            return
        for read_id, parent in zip(ids, parents, strict=True):
            if parent is None:
                self.whole[read_id] += 1
                found.keys.add(read_id)
                continue
            if read_id in self.pieces:
                self.doubled.add(parent)
            self.pieces.add(read_id)
            self.split[parent] += 1
            found.keys.add(parent)

    def twice(self) -> set[str]:
        """The raw reads that came out more than once."""
        found = {read_id for read_id, count in self.whole.items() if count > 1}
        return found | (self.whole.keys() & self.split.keys()) | self.doubled


def account_record(account: JobAccount, files: Iterable[str], rejected: str | None) -> str:
    """The JSON text of ``paths.ACCOUNT_FILE`` for the job, or the part of it, that holds
    ``files``: a line per raw file; for a job that is done, the records merged and the reads
    files that were not; ``rejected``: why the files are not done, if they are not."""
    wanted = set(files)
    record: dict[str, object] = {
        "format": FORMAT,
        "version": VERSION,
        "rejected": rejected,
        "files": [
            {
                "name": each.name,
                "reads_in": each.reads_in,
                "came_out": each.came_out,
                "split": each.split,
                "twice": each.twice,
                "rejected": each.rejected,
            }
            for each in account.files
            if each.name in wanted
        ],
    }
    if rejected is None:
        record["records_out"] = account.records_out
        record["rejected_reads_files"] = {
            shown(inside): why for inside, why in account.rejected_reads_files.items()
        }
    return json.dumps(record, ensure_ascii=False) + "\n"


def skipped_by_basecaller(stderr: str) -> dict[str, str]:
    """The raw files a basecaller's stderr says it skipped, by file name, with its error."""
    return {os.path.basename(found["file"]): found["error"] for found in _SKIPPED.finditer(stderr)}


def account_job(
    input_dir: Path,
    files: Iterable[str],
    output: Path,
    *,
    skipped: dict[str, str] | None = None,
    may_drop: float = 0.0,
) -> JobAccount:
    """The account of a job of raw ``files`` (names in ``input_dir``) whose output folder is
    ``output``. ``skipped``: files the basecaller said it could not open (by name, with its
    error); ``may_drop``: the share of a file's reads a basecaller may drop on purpose.

    The work is done with whole sets (in C) wherever it can be: a job holds tens of thousands
    of reads, and a Python step per read would cost more than reading them."""
    names = list(files)
    raw: list[set[str]] = []
    reads_in: list[int | None] = []
    problems: list[str | None] = []
    gone = False
    for name in names:
        ids: list[str] = []
        problem = None
        try:
            ids = raw_read_ids(input_dir / name)
        except FileNotFoundError:
            gone = True
        except Exception as error:  # pod5 raises what its Arrow reader raises
            problem = f"{shown(name)} cannot be read: {reason(error)}"
        known = problem is None and (ids or (input_dir / name).exists())
        raw.append(set(ids))
        reads_in.append(len(ids) if known else None)
        problems.append(problem)
    every_raw = set().union(*raw)
    out = _Out()
    reads_files: list[_ReadsFile] = []
    for path, parts, refused in output_entries(output):
        if refused is not None or not parts or not is_reads_name(parts[-1]):
            continue
        if merge_target(parts) is None:
            continue
        found = _ReadsFile(path, shown("/".join(parts)))
        reads_files.append(found)
        try:
            for ids, parents in reads_of(path):
                out.add(found, ids, parents)
        except ReadsFileError as error:
            found.problem = f"{found.inside} {error}"
        found.strangers = found.keys - every_raw
    _find_pieces(reads_files, raw, out)
    for found in reads_files:
        if found.problem is None and found.strangers and not gone:
            count = len(found.strangers)
            found.problem = f"{found.inside} holds {count:,} reads of no file of this job"
    accounts = _judge(names, raw, reads_in, problems, out, skipped, may_drop)
    _spread(accounts, [(found, found.owners(raw)) for found in reads_files])
    return JobAccount(
        accounts,
        records_out=sum(each.records for each in reads_files if each.problem is None),
        rejected_reads_files={
            str(each.path.relative_to(output)): each.problem
            for each in reads_files
            if each.problem is not None
        },
    )


def _find_pieces(reads_files: list[_ReadsFile], raw: list[set[str]], out: _Out) -> None:
    """Records of no raw read may be pieces of a split read in a format that does not name the
    parent (Dorado writes ``pi`` into SAM tags, not into FASTQ headers): each raw read that did
    not come out is tried as a parent, piece by piece, by Dorado's own naming of the pieces.
    The cost is a hash per piece of a read that did not come out otherwise."""
    strangers = set().union(*(found.strangers for found in reads_files))
    if not strangers:
        return
    parent_of: dict[str, str] = {}
    for read_id in set().union(*raw) - out.whole.keys() - out.split.keys():
        index = 0
        while (piece := derived_read_id(read_id, index)) in strangers:
            parent_of[piece] = read_id
            index += 1
    if not parent_of:
        return
    for found in reads_files:
        pieces = found.strangers & parent_of.keys()
        for piece in pieces:
            parent = parent_of[piece]
            # A piece counted twice was one record twice: its whole count says so.
            if out.whole[piece] > 1:
                out.doubled.add(parent)
            out.split[parent] += out.whole.pop(piece)
            found.keys.add(parent)
        found.keys -= pieces
        found.strangers -= pieces


def _judge(
    names: list[str],
    raw: list[set[str]],
    reads_in: list[int | None],
    problems: list[str | None],
    out: _Out,
    skipped: dict[str, str] | None,
    may_drop: float,
) -> list[FileAccount]:
    """Each raw file judged by its own reads."""
    came_out_keys = out.whole.keys() | out.split.keys()
    twice_keys = out.twice()
    accounts = []
    for index, name in enumerate(names):
        ids, count, problem = raw[index], reads_in[index], problems[index]
        came_out, split = len(ids & came_out_keys), len(ids & out.split.keys())
        twice = len(ids & twice_keys)
        shown_name = shown(name)
        if problem is None and skipped and name in skipped:
            problem = f"{shown_name}: the basecaller could not open it ({skipped[name]})"
        if problem is None and count is not None:
            if count - came_out > may_drop * count:
                problem = f"{shown_name}: {came_out:,} of {count:,} reads came out"
            elif twice:
                problem = f"{shown_name}: {twice:,} reads came out more than once"
        accounts.append(FileAccount(name, count, came_out, split, twice, problem))
    return accounts


def _spread(accounts: list[FileAccount], reads_files: list[tuple[_ReadsFile, list[int]]]) -> None:
    """Reject every reads file that holds reads of a rejected raw file, and every raw file
    with reads in a rejected reads file, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for found, owners in reads_files:
            if found.problem is None:
                bad = [i for i in owners if accounts[i].rejected is not None]
                if bad:
                    first = shown(accounts[bad[0]].name)
                    found.problem = f"{found.inside} holds reads of {first}, which is rejected"
                    changed = True
            if found.problem is None:
                continue
            for index in owners:
                if accounts[index].rejected is None:
                    why = f"its reads are in a rejected reads file ({found.problem})"
                    accounts[index] = _rejected(accounts[index], why)
                    changed = True


def _rejected(account: FileAccount, why: str) -> FileAccount:
    return FileAccount(
        account.name,
        account.reads_in,
        account.came_out,
        account.split,
        account.twice,
        f"{shown(account.name)}: {why}",
        alone=False,
    )
