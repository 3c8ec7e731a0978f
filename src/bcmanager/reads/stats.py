"""A job's read statistics, computed on the GPU node where its reads are.

The agent reads every reads file of a job's output folder once the basecaller has succeeded and
writes what it found as ``paths.STATS_FILE`` at the top of that folder (docs/protocol.md). The
manager then knows each job's reads, bases, lengths and qualities, per barcode and pass or fail,
without reading a byte of the reads itself, which may be terabytes on a filesystem it reaches
only slowly.

The walk and the rules are the merge's own (``folders.output_entries``, ``paths.merge_target``),
so the statistics describe exactly the files the manager will merge. FASTQ (plain or gzip) is
read with the standard library; SAM, BAM and CRAM with pysam, an optional dependency (the
``agent`` extra): without it those files are listed with an error and FASTQ still counts.
Records are streamed, and what is kept per group is a few counters and two histograms, so the
work is bounded by the size of the output and the memory by the number of groups.

A read's mean Q-score is computed as Dorado computes the one it filters on: the mean of the
error probabilities of its base qualities, converted back to a phred score, leaving out the
first ``QSCORE_START`` bases of a read longer than that.
"""

from __future__ import annotations

import array
import hashlib
import io
import json
import math
import os
import shlex
import threading
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from bcmanager.paths import (
    FASTQ_SUFFIXES,
    PASS,
    STATS_FILE,
    is_reads_name,
    merge_target,
    shown,
)
from bcmanager.reads.files import ReadsFileError, open_fastq, output_entries, read_line
from bcmanager.records import write_record

FORMAT = "bcmanager-job-stats"
VERSION = 1
LENGTH_BIN = 100  # bases per bin of the read-length histogram
Q_BIN = 1  # phred units per bin of the mean Q-score histogram
# Dorado's default: a read longer than this is scored without its first QSCORE_START qualities.
QSCORE_START = 60
Q_DECIMALS = 6  # a mean Q-score is rounded so that a whole number stays in its own bin
FINGERPRINT_MODULUS = 1 << 256
MAX_FILES_LISTED = 1000  # files listed one by one; beyond, a count (the file stays small)
MAX_ERRORS_LISTED = 100
CHECK_EVERY = 1024  # reads between two looks at the cancel flag
PYSAM_MISSING = "pysam is not installed (pip install 'bcmanager[agent]')"
CUT_SHORT = "not read to the end: the statistics were cut short"
# Options of `dorado basecaller` that take a value, skipped when looking for its model.
_DORADO_VALUE_OPTIONS = frozenset(
    {
        "-x", "--device", "-b", "--batchsize", "-c", "--chunksize", "-o", "--overlap",
        "--models-directory", "--modified-bases", "--modified-bases-models",
        "--modified-bases-threshold", "--kit-name", "--sample-sheet", "--min-qscore",
        "--reference", "--read-ids", "--resume-from", "--max-reads", "--output-dir",
        "--mm2-opts", "--bed-file", "--trim", "--poly-a-config",
    }
)  # fmt: skip
_HTS_MODES = ((".bam", "rb"), (".cram", "rc"), (".sam", "r"), (".sam.gz", "r"))

Q_HIGHEST = 93  # the highest quality FASTQ can write: a higher one in a BAM counts as this
# The error probability of each phred score, and of each FASTQ quality character.
_ERROR_BY_PHRED: npt.NDArray[np.float64] = 10.0 ** (
    -np.minimum(np.arange(256, dtype=np.float64), Q_HIGHEST) / 10
)
_ERROR_BY_CHAR: npt.NDArray[np.float64] = np.concatenate([np.ones(33), _ERROR_BY_PHRED[:223]])
_ERROR_BY_PHRED.flags.writeable = False
_ERROR_BY_CHAR.flags.writeable = False


class JobStats(TypedDict):
    """The JSON object of ``paths.STATS_FILE`` (docs/protocol.md)."""

    format: str
    version: int
    basecaller: dict[str, str | None]
    length_bin: int
    q_bin: int
    groups: list[dict[str, object]]
    files: list[dict[str, object]]
    errors: list[str]


def mean_qscore(error_table: npt.NDArray[np.float64], codes: npt.NDArray[np.uint8]) -> float:
    """The mean Q-score of one read from its quality codes (``error_table`` maps a code to
    its error probability), rounded to ``Q_DECIMALS``; 0 for a read without qualities."""
    if len(codes) > QSCORE_START:
        codes = codes[QSCORE_START:]
    if not len(codes):
        return 0.0
    mean_error = float(error_table[codes].mean())
    return round(-10 * math.log10(mean_error), Q_DECIMALS)


def phred_mean_qscore(qualities: bytes | array.array[int]) -> float:
    """The mean Q-score of a read given as phred scores, a byte each (as a BAM record holds
    them)."""
    return mean_qscore(_ERROR_BY_PHRED, np.frombuffer(qualities, dtype=np.uint8))


def fingerprint(read_id: str) -> int:
    """A read id's share of a group's ``read_ids_sha256``: its SHA-256 as a number."""
    return int.from_bytes(hashlib.sha256(read_id.encode()).digest(), "big")


@dataclass(slots=True)
class Tally:
    """The counts of one group of reads, or of one file until it has been read to its end."""

    reads: int = 0
    bases: int = 0
    qscore_sum: float = 0.0
    length_hist: Counter[int] = field(default_factory=Counter)
    q_hist: Counter[int] = field(default_factory=Counter)
    fingerprint: int = 0  # the sum of the read ids' fingerprints, modulo 2**256

    def add(self, read_id: str, length: int, qscore: float) -> None:
        self.reads += 1
        self.bases += length
        self.qscore_sum += qscore
        self.length_hist[length // LENGTH_BIN * LENGTH_BIN] += 1
        self.q_hist[math.floor(qscore / Q_BIN) * Q_BIN] += 1
        self.fingerprint = (self.fingerprint + fingerprint(read_id)) % FINGERPRINT_MODULUS

    def merge(self, other: Tally) -> None:
        self.reads += other.reads
        self.bases += other.bases
        self.qscore_sum += other.qscore_sum
        self.length_hist.update(other.length_hist)
        self.q_hist.update(other.q_hist)
        self.fingerprint = (self.fingerprint + other.fingerprint) % FINGERPRINT_MODULUS

    def as_json(self, barcode: str | None, passed: bool) -> dict[str, object]:
        return {
            "barcode": barcode,
            "pass": passed,
            "reads": self.reads,
            "bases": self.bases,
            "qscore_sum": self.qscore_sum,
            "length_hist": {str(start): n for start, n in sorted(self.length_hist.items())},
            "q_hist": {str(start): n for start, n in sorted(self.q_hist.items())},
            "read_ids_sha256": f"{self.fingerprint:064x}",
        }


@dataclass(slots=True)
class Basecaller:
    """Who made the reads, as far as the job's files and command tell."""

    name: str | None = None
    version: str | None = None
    model: str | None = None

    def fill(self, other: Basecaller) -> None:
        """Take ``other``'s fields where this one knows nothing."""
        self.name = self.name or other.name
        self.version = self.version or other.version
        self.model = self.model or other.model

    def as_json(self) -> dict[str, str | None]:
        """The fields fit for JSON: a command's words may hold bytes that are not UTF-8."""
        fields = {"name": self.name, "version": self.version, "model": self.model}
        return {key: None if value is None else shown(value) for key, value in fields.items()}


def basecaller_from_command(words: Sequence[str]) -> Basecaller:
    """Name and model from a ``dorado basecaller [options] MODEL DATA`` command, also inside
    a word a shell is given to run (``sh -c "dorado basecaller sup ..."``); nothing otherwise.
    A model given as a path is named by its folder's name."""
    flat: list[str] = []
    for word in words:
        flat.extend(_shell_words(word) if any(c.isspace() for c in word) else [word])
    for index in range(1, len(flat)):
        if flat[index] == "basecaller" and os.path.basename(flat[index - 1]) == "dorado":
            return Basecaller(name="dorado", model=_first_positional(flat[index + 1 :]))
    return Basecaller()


def _shell_words(word: str) -> list[str]:
    try:
        return shlex.split(word)
    except ValueError:
        return [word]


def _first_positional(words: Sequence[str]) -> str | None:
    """The first word that is neither an option nor an option's value: Dorado's model."""
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in _DORADO_VALUE_OPTIONS
        else:
            return os.path.basename(word.rstrip("/")) or word
    return None


def basecaller_from_header(header: dict[str, Any]) -> Basecaller:
    """Name, version and model from a SAM header: the ``@PG`` line of the basecaller (ID
    ``basecaller``, as Dorado writes it, or PN ``dorado``) and the model named in a read
    group's description (``DS:basecall_model=...``) or on that @PG line's command."""
    found = Basecaller()
    for program in header.get("PG", []):
        if program.get("ID") == "basecaller" or program.get("PN") == "dorado":
            found.name = program.get("PN")
            found.version = program.get("VN")
            command = str(program.get("CL", "")).split()
            found.model = _first_positional(command[2:]) if command[1:2] == ["basecaller"] else None
            break
    for group in header.get("RG", []):
        for item in str(group.get("DS", "")).split():
            if item.startswith("basecall_model="):
                found.model = item.removeprefix("basecall_model=") or found.model
                return found
    return found


class _Cancelled(Exception):
    """The caller asked to stop: the file being read is left unfinished."""


@dataclass(slots=True)
class _Walk:
    """What reading a job's output has found so far."""

    cancel: threading.Event | None
    groups: dict[tuple[str | None, bool], Tally] = field(default_factory=dict)
    files: list[dict[str, object]] = field(default_factory=list)
    files_unlisted: int = 0
    errors: list[str] = field(default_factory=list)
    errors_unlisted: int = 0
    from_files: Basecaller = field(default_factory=Basecaller)
    models_seen: set[str] = field(default_factory=set)

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def file(self, path: str, reads: int | None, error: str | None) -> None:
        if len(self.files) < MAX_FILES_LISTED:
            self.files.append({"path": path, "reads": reads, "error": error})
        else:
            self.files_unlisted += 1

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append(message)
        else:
            self.errors_unlisted += 1

    def header(self, found: Basecaller) -> None:
        """Take what a file's header says; a few models are enough to say they disagree."""
        if found.model is not None and len(self.models_seen) < MAX_ERRORS_LISTED:
            self.models_seen.add(found.model)
        self.from_files.fill(found)


def job_stats(
    output_dir: Path, command: Sequence[str], *, cancel: threading.Event | None = None
) -> JobStats:
    """The statistics of a job's reads files (the JSON object of ``paths.STATS_FILE``).

    ``command`` is the basecaller's argv, which may name it and its model; a SAM header says
    more and wins. A file that cannot be read to its end is listed with the error and adds
    nothing to the groups, so every count in them is exact. Setting ``cancel`` (another
    thread) stops the walk within ``CHECK_EVERY`` reads: what was read to its end is kept.
    """
    walk = _Walk(cancel)
    for path, parts, refused in output_entries(output_dir):
        if walk.cancelled():
            walk.error("cut short: files after those listed were not looked at")
            break
        if not parts:
            walk.error(f"{shown(str(path))} {refused}")
            continue
        where = merge_target(parts)
        if where is None or not is_reads_name(parts[-1]):
            continue
        inside = shown("/".join(parts))
        if refused is not None:
            walk.file(inside, None, f"{refused}: not read")
            continue
        verdict, barcode = where
        tally = Tally()
        try:
            _read_file(walk, path, tally)
        except _Cancelled:
            walk.file(inside, None, CUT_SHORT)
            continue
        except ReadsFileError as error:
            walk.file(inside, None, str(error))
            continue
        walk.groups.setdefault((barcode, verdict == PASS), Tally()).merge(tally)
        walk.file(inside, tally.reads, None)
    if walk.files_unlisted:
        walk.error(f"{walk.files_unlisted} more reads files not listed")
    if len(walk.models_seen) > 1:
        walk.error(f"the files name more than one model: {', '.join(sorted(walk.models_seen))}")
    if walk.errors_unlisted:
        walk.errors.append(f"{walk.errors_unlisted} more errors not listed")
    basecaller = walk.from_files
    basecaller.fill(basecaller_from_command(command))
    return {
        "format": FORMAT,
        "version": VERSION,
        "basecaller": basecaller.as_json(),
        "length_bin": LENGTH_BIN,
        "q_bin": Q_BIN,
        "groups": [
            walk.groups[key].as_json(*key)
            for key in sorted(
                walk.groups, key=lambda key: (key[0] is not None, key[0] or "", not key[1])
            )
        ],
        "files": walk.files,
        "errors": walk.errors,
    }


def write_job_stats(output_dir: Path, stats: JobStats) -> None:
    """Write the statistics as ``paths.STATS_FILE`` at the top of the job's output folder,
    atomically (``records.write_record``)."""
    text = json.dumps(stats, separators=(",", ":"), ensure_ascii=False) + "\n"
    write_record(output_dir, STATS_FILE, text)


def _read_file(walk: _Walk, path: Path, tally: Tally) -> None:
    if path.name.endswith(FASTQ_SUFFIXES):
        _read_fastq(walk, path, tally)
    else:
        _read_hts(walk, path, tally)


def _read_fastq(walk: _Walk, path: Path, tally: Tally) -> None:
    try:
        with open_fastq(path) as stream:
            for number, (read_id, length, qscore) in enumerate(_fastq_records(stream), 1):
                tally.add(read_id, length, qscore)
                if number % CHECK_EVERY == 0 and walk.cancelled():
                    raise _Cancelled
    except (OSError, EOFError, zlib.error) as error:
        raise ReadsFileError(_reason(error)) from error


def _fastq_records(stream: io.BufferedIOBase) -> Iterator[tuple[str, int, float]]:
    """(read id, length, mean Q-score) of each four-line FASTQ record; blank lines between
    records are passed over."""
    line = 0
    while True:
        header = read_line(stream)
        line += 1
        while header and not header.strip():
            header = read_line(stream)
            line += 1
        if not header:
            return
        bases, plus, qualities = read_line(stream), read_line(stream), read_line(stream)
        if not qualities:
            raise ReadsFileError(f"the record at line {line} is cut short")
        if not header.startswith(b"@") or not plus.startswith(b"+"):
            raise ReadsFileError(f"not a FASTQ record at line {line}")
        bases, qualities = bases.rstrip(b"\r\n"), qualities.rstrip(b"\r\n")
        if len(bases) != len(qualities):
            raise ReadsFileError(f"bases and qualities differ in length at line {line}")
        words = header[1:].split(maxsplit=1)
        read_id = words[0].decode("utf-8", "replace") if words else ""
        codes = np.frombuffer(qualities, dtype=np.uint8)
        yield read_id, len(bases), mean_qscore(_ERROR_BY_CHAR, codes)
        line += 3


def _read_hts(walk: _Walk, path: Path, tally: Tally) -> None:
    try:
        import pysam
    except ImportError as error:
        raise ReadsFileError(PYSAM_MISSING) from error
    mode = next(mode for suffix, mode in _HTS_MODES if path.name.endswith(suffix))
    try:
        with pysam.AlignmentFile(str(path), mode, check_sq=False) as reads:
            walk.header(basecaller_from_header(reads.header.to_dict()))
            number = 0
            for record in reads.fetch(until_eof=True):
                if record.is_secondary or record.is_supplementary:
                    continue
                qualities = record.query_qualities
                qscore = 0.0 if qualities is None else phred_mean_qscore(qualities)
                tally.add(record.query_name or "", record.query_length, qscore)
                number += 1
                if number % CHECK_EVERY == 0 and walk.cancelled():
                    raise _Cancelled
    except (OSError, ValueError, KeyError, StopIteration) as error:
        raise ReadsFileError(_reason(error)) from error


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return shown(text)
