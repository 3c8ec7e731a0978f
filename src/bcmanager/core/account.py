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

import gzip
import hashlib
import io
import json
import os
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bcmanager.core.folders import output_entries
from bcmanager.paths import FASTQ_SUFFIXES, is_reads_name, merge_target, shown

# htslib's BGZF end-of-file marker: an empty block that every whole BAM (and .sam.gz) ends with.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
# The end-of-file container of CRAM 3.x (the format's specification, section 9).
CRAM3_EOF = bytes.fromhex(
    "0f000000ffffffff0fe0454f4600000000010005bdd94f0001000606010001000100ee63014b"
)
FORMAT = "bcmanager-job-account"
VERSION = 1
CHUNK = 1 << 20  # bytes of a FASTQ file read at a time: its split holds the GIL for ~1 ms
HTS_BATCH = 4096  # records of a SAM, BAM or CRAM file handed on at a time
MAX_LINE = 1 << 26  # the longest FASTQ line read (64 MiB; the longest reads are ~4 Mb)
# Dorado's line for a POD5 file it skips (since 1.1.0): POD5 Failed to open file - '<error>'
# @ '<file>' (<batch>,<row>).
_SKIPPED = re.compile(r"POD5 Failed to open file - '(?P<error>.*)' @ '(?P<file>[^']*)'")
_PARENT = b"pi:Z:"
_FASTQ_ID = re.compile(rb"^@(\S*)", re.MULTILINE)
_FASTQ_PARENT = re.compile(rb"\spi:Z:(\S+)")


class ReadsFileError(Exception):
    """A reads file that is not whole, or cannot be read; the message says why."""


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
            problem = f"{shown(name)} cannot be read: {_reason(error)}"
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


def derived_read_id(parent_id: str, index: int) -> str:
    """Dorado's id for piece ``index`` of a split read (its ``derive_uuid``): the first 16 bytes
    of SHA-256(parent id + the index in decimal), marked as a version-4 uuid."""
    digest = hashlib.sha256(f"{parent_id}{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


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


def raw_read_ids(path: Path) -> list[str]:
    """The read ids of one POD5 file."""
    import pod5  # type: ignore[import-untyped]  # the agent reads FASTQ with this module

    with pod5.Reader(path) as reader:
        ids: list[str] = reader.read_ids
    return ids


Batch = tuple[list[str], list[str | None] | None]


def reads_of(path: Path) -> Iterator[Batch]:
    """The primary records of a reads file, which must be whole, in batches: (their read ids,
    and their parents' ids, or None where no record of the batch names a parent); raises
    ReadsFileError."""
    name = path.name
    try:
        if name.endswith(FASTQ_SUFFIXES):
            yield from _fastq_reads(path)
        else:
            # Read to the end first: the records of a file cut short still say whose reads
            # it holds.
            yield from _hts_reads(path)
            _check_ending(path)
    except (OSError, EOFError, zlib.error, ValueError, KeyError, StopIteration) as error:
        raise ReadsFileError(_reason(error)) from error


def open_fastq(path: Path) -> io.BufferedIOBase:
    """A FASTQ file's bytes, gunzipped when its name says so."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _fastq_reads(path: Path) -> Iterator[Batch]:
    """The records of a FASTQ file, a chunk of the file at a time: the four lines of each
    record are taken apart by slicing, and the ids out of the headers by one pattern over all
    of them, so that the work per record is done in C."""
    with open_fastq(path) as stream:
        done = 0  # records before this chunk's
        rest: list[bytes] = []
        for lines in _line_chunks(stream):
            lines = rest + lines
            if not all(lines) or b"\r" in lines:
                lines = [line for line in lines if line.strip()]  # blank lines: passed over
            whole = len(lines) - len(lines) % 4
            rest = lines[whole:]
            if whole:
                yield _fastq_batch(lines[:whole], done)
            done += whole // 4
        if rest:
            raise ReadsFileError(f"is cut short: record {done + 1} is not whole")


def _fastq_batch(lines: list[bytes], before: int) -> Batch:
    """The ids (and parents) of whole FASTQ records, four lines each, after ``before``
    records; raises ReadsFileError at the first that is no record or not whole."""
    headers, bases, pluses, qualities = lines[0::4], lines[1::4], lines[2::4], lines[3::4]
    joined = b"\n".join(headers)
    if not (
        joined.startswith(b"@")
        and joined.count(b"\n@") == len(headers) - 1
        and (b"\n".join(pluses) + b"\n").count(b"+") >= len(pluses)
        and all(map(_starts_plus, pluses))
    ):
        bad = next(
            n
            for n, (h, p) in enumerate(zip(headers, pluses, strict=True))
            if not (h.startswith(b"@") and p.startswith(b"+"))
        )
        raise ReadsFileError(f"holds no FASTQ record at record {before + bad + 1}")
    if list(map(len, bases)) != list(map(len, qualities)):
        for n, (b, q) in enumerate(zip(bases, qualities, strict=True)):
            if len(b.rstrip(b"\r")) != len(q.rstrip(b"\r")):
                raise ReadsFileError(f"is cut short: record {before + n + 1} is not whole")
    ids = b"\n".join(_FASTQ_ID.findall(joined)).decode("utf-8", "replace").split("\n")
    if _PARENT not in joined:
        return ids, None
    parents = []
    for header in headers:
        found = _FASTQ_PARENT.search(header)
        parents.append(found[1].decode("utf-8", "replace") if found else None)
    return ids, parents


def read_line(stream: io.BufferedIOBase) -> bytes:
    """One line of a FASTQ file, bounded (an engine decides what is in it)."""
    line = stream.readline(MAX_LINE)
    if len(line) == MAX_LINE and not line.endswith(b"\n"):
        raise ReadsFileError(f"has a line longer than {MAX_LINE} bytes")
    return line


def _starts_plus(line: bytes) -> bool:
    return line.startswith(b"+")


def _line_chunks(stream: io.BufferedIOBase) -> Iterator[list[bytes]]:
    """The lines of a stream without their newlines, a chunk at a time, each at most
    ``MAX_LINE`` bytes (an engine decides what is in it); the last one as it is."""
    rest = b""
    while chunk := stream.read(CHUNK):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            raise ReadsFileError(f"has a line longer than {MAX_LINE} bytes")
        yield lines
    if rest:
        yield [rest]


def _check_ending(path: Path) -> None:
    """Whether a SAM, BAM or CRAM file ends as a whole one does (a crash mid-write cuts it)."""
    name = path.name
    with path.open("rb") as stream:
        size = stream.seek(0, os.SEEK_END)
        if name.endswith(".sam"):
            if size:
                stream.seek(size - 1)
                if stream.read(1) != b"\n":
                    raise ReadsFileError("is cut short: its last line is not whole")
            return
        stream.seek(0)
        head = stream.read(6)
        if name.endswith(".cram"):
            if head[4:5] == b"\x03" and not _ends_with(stream, size, CRAM3_EOF):
                raise ReadsFileError("has no end-of-file container: it is cut short")
            return
        if not _ends_with(stream, size, BGZF_EOF):
            raise ReadsFileError("has no EOF block: it is cut short")


def _ends_with(stream: io.BufferedReader, size: int, ending: bytes) -> bool:
    if size < len(ending):
        return False
    stream.seek(size - len(ending))
    return stream.read(len(ending)) == ending


_HTS_MODES = ((".bam", "rb"), (".cram", "rc"), (".sam", "r"), (".sam.gz", "r"))


def _hts_reads(path: Path) -> Iterator[Batch]:
    import pysam

    mode = next(mode for suffix, mode in _HTS_MODES if path.name.endswith(suffix))
    save = pysam.set_verbosity(0)
    try:
        with pysam.AlignmentFile(str(path), mode, check_sq=False, ignore_truncation=True) as reads:
            ids: list[str] = []
            parents: list[str | None] = []
            for record in reads.fetch(until_eof=True):
                if record.is_secondary or record.is_supplementary:
                    continue
                ids.append(record.query_name or "")
                parents.append(str(record.get_tag("pi")) if record.has_tag("pi") else None)
                if len(ids) == HTS_BATCH:
                    yield ids, parents if any(parents) else None
                    ids, parents = [], []
            if ids:
                yield ids, parents if any(parents) else None
    finally:
        pysam.set_verbosity(save)


def _reason(error: BaseException) -> str:
    return shown(str(error) or type(error).__name__)
