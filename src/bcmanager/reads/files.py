"""Reading reads files: the read ids in a FASTQ, SAM, BAM or CRAM file, and in a POD5 file.

Both programs read them: the manager to account for every read of a job, the agent to count
what it made. So the readers live on the ground floor, below both, and depend on nothing of
either. A reads file is read only when it is whole; the error says why when it is not.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

from bcmanager.paths import FASTQ_SUFFIXES, shown

# htslib's BGZF end-of-file marker: an empty block that every whole BAM (and .sam.gz) ends with.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
# The end-of-file container of CRAM 3.x (the format's specification, section 9).
CRAM3_EOF = bytes.fromhex(
    "0f000000ffffffff0fe0454f4600000000010005bdd94f0001000606010001000100ee63014b"
)
CHUNK = 1 << 20  # bytes of a FASTQ file read at a time: its split holds the GIL for ~1 ms
HTS_BATCH = 4096  # records of a SAM, BAM or CRAM file handed on at a time
MAX_LINE = 1 << 26  # the longest FASTQ line read (64 MiB; the longest reads are ~4 Mb)
_PARENT = b"pi:Z:"
_FASTQ_ID = re.compile(rb"^@(\S*)", re.MULTILINE)
_FASTQ_PARENT = re.compile(rb"\spi:Z:(\S+)")


class ReadsFileError(Exception):
    """A reads file that is not whole, or cannot be read; the message says why."""


def derived_read_id(parent_id: str, index: int) -> str:
    """Dorado's id for piece ``index`` of a split read (its ``derive_uuid``): the first 16 bytes
    of SHA-256(parent id + the index in decimal), marked as a version-4 uuid."""
    digest = hashlib.sha256(f"{parent_id}{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


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
        raise ReadsFileError(reason(error)) from error


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


def reason(error: BaseException) -> str:
    return shown(str(error) or type(error).__name__)


def is_real_folder(path: Path) -> bool:
    """A folder, and not a symlink to one: what an engine made a symlink is never entered."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def output_entries(output: Path) -> Iterator[tuple[Path, tuple[str, ...], str | None]]:
    """Each entry of a job's output folder but its real folders, walked without following a
    symlink: (path, its parts inside the folder, None for a regular file or why it is refused).
    One folder's names are listed before its entries are yielded, so a merge that moves them
    away does not disturb the listing; nothing is kept per file (an engine decides how many)."""
    if not is_real_folder(output):
        if os.path.lexists(output):
            yield output, (), "is not a real folder"
        return
    stack: list[tuple[Path, tuple[str, ...]]] = [(output, ())]
    while stack:
        folder, parts = stack.pop()
        for name in os.listdir(folder):
            path, inner = folder / name, (*parts, name)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                yield path, inner, "is a symlink"
            elif stat.S_ISDIR(mode):
                stack.append((path, inner))
            elif not stat.S_ISREG(mode):
                yield path, inner, "is not a regular file"
            else:
                yield path, inner, None
