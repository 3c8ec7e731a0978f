"""The proofs' final judge, independent of bcmanager.

It knows what exists from the test's own ledger: the read ids the test wrote into each raw file
(``conftest.Run.reads``), the raw files the test deleted or moved away, and the raw files that
must never be offered (names that are not UTF-8). It reads every FASTQ under OUTPUT_DIR/pass and
/fail with its own few-line parser, the QUARANTINED_ folders' links with ``os.readlink``, and
walks both folders itself. It imports nothing from bcmanager: a bug in the manager's own parsers
(``paths``, ``scan``) or in ``bcmanager check`` cannot hide from it.

What it says, as one line per problem:

- every read of every complete raw file that the test did not delete is in pass/ or fail/
  exactly once, or its raw file sits in a QUARANTINED_ folder, set aside after failing (and then
  none of its reads is there; a FAILED_ folder records an attempt only: its files are retried);
  a raw file is basecalled wholly or not at all;
- no read id appears twice, and none that no raw file holds; a read may come out split, as
  pieces named as Dorado names them (``piece_id``), and then counts once, through its pieces;
- pass/ and fail/ hold nothing but regular FASTQ files (in folders, for barcodes);
- every raw file is still a complete regular file in INPUT_DIR, unless the test deleted it;
- no raw file and no job folder (or its links) ever left INPUT_DIR;
- a raw file that must never be offered is in no job folder and none of its reads is merged.

Before the run is drained (``drained=False``) only the "never" rules hold, the reads of the
files named in ``done`` must be there, and none of those named in ``undone``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POD5_SIGNATURE = b"\x8bPOD\r\n\x1a\n"  # the first and last 8 bytes of a complete POD5 file
FASTQ_SUFFIXES = (".fastq", ".fq", ".fastq.gz", ".fq.gz")
READS_FOLDERS = ("pass", "fail")
# A folder of INPUT_DIR that holds raw files' links, or such a folder (or its name) moved away.
_JOB_FOLDER = re.compile(r"(?:^|[_.-])(?:ASSIGNED|DONE|FAILED|QUARANTINED|EXCUSED)_[0-9]+_")
# A job's own output folder, by its name: the engine's output before (or instead of) a merge.
_JOB_OUTPUT = re.compile(r"(?:^|[_.-])[A-Z]+OUTPUT_[0-9]+_")
_SHOWN = 5  # places listed for one read id found more than once
PIECES = 2  # a split read's pieces, as the tests' engines split one


def piece_id(parent: str, index: int) -> str:
    """The id Dorado gives piece ``index`` of a split read (its ``derive_uuid``): the first 16
    bytes of SHA-256 of the parent id and the index in decimal, as a version-4 uuid."""
    digest = hashlib.sha256(f"{parent}{index}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class NotFastq(ValueError):
    """A file under pass/ or fail/ that does not parse as FASTQ."""


def fastq_read_ids(path: Path) -> list[str]:
    """The read id of each record: '@<id> ...' header, sequence, '+' line, quality line."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise NotFastq(f"not gzip: {error}") from None
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise NotFastq("not ASCII") from None
    if lines[-1] == "":
        lines.pop()
    if len(lines) % 4:
        raise NotFastq(f"{len(lines)} lines: not whole 4-line records")
    ids = []
    for start in range(0, len(lines), 4):
        header, bases, plus, qualities = lines[start : start + 4]
        words = header[1:].split()
        if not header.startswith("@") or not words:
            raise NotFastq(f"line {start + 1} is not a '@<read id>' header")
        if not plus.startswith("+") or len(bases) != len(qualities):
            raise NotFastq(
                f"record at line {start + 1}: no '+' line, or bases and qualities differ"
            )
        ids.append(words[0])
    return ids


@dataclass(slots=True)
class Verdict:
    problems: list[str] = field(default_factory=list)
    done: int = 0  # raw files whose reads are all in pass/ or fail/, once
    quarantined: int = 0  # raw files set aside in a QUARANTINED_ folder
    deleted_done: int = 0  # raw files the test deleted whose reads were merged before
    fastq_files: int = 0
    reads: int = 0  # FASTQ records read

    def summary(self) -> str:
        return (
            f"{self.done} raw files done, {self.quarantined} quarantined, {self.deleted_done} "
            f"deleted after they were done; {self.reads} reads in {self.fastq_files} FASTQ files"
        )


def judge(
    input_dir: Path,
    output_dir: Path,
    reads: Mapping[str, Sequence[str]],
    *,
    deleted: Collection[str] = (),
    never_offered: Collection[str] = (),
    drained: bool = True,
    done: Collection[str] = (),
    undone: Collection[str] = (),
) -> Verdict:
    """Judge the run's folders against the ledger ``reads`` (every complete raw file the test
    wrote, deleted or not -> its read ids)."""
    return judge_run(
        {input_dir: reads},
        output_dir,
        deleted=deleted,
        never_offered=never_offered,
        drained=drained,
        done=done,
        undone=undone,
    )


@dataclass
class RootRun:
    """One run of a root in a test's ledger: where it is now (an operator's move changes it),
    its raw folders, and its complete raw files' reads."""

    flow_cell: str
    path: str  # relative to INPUT_DIR
    raw_folders: tuple[str, ...]
    reads: dict[str, list[str]] = field(default_factory=dict)  # raw file name -> read ids
    folder_of: dict[str, str] = field(default_factory=dict)  # raw file name -> its raw folder
    old_paths: list[str] = field(default_factory=list)
    deleted: bool = False

    def move(self, input_dir: Path) -> None:
        """An operator moves the run to ``<experiment>/<sample>_moved/<run>`` in the root."""
        experiment, sample, name = self.path.split("/")
        new = f"{experiment}/{sample}_moved/{name}"
        (input_dir / new).parent.mkdir()
        os.rename(input_dir / self.path, input_dir / new)
        self.old_paths.append(self.path)
        self.path = new

    def judge(self, input_dir: Path, output_dir: Path, *, drained: bool = True) -> Verdict:
        """``judge_run`` on this run where it is now; a deleted run's reads are not required."""
        raw_folders = {
            input_dir / self.path / raw: {
                name: ids for name, ids in self.reads.items() if self.folder_of[name] == raw
            }
            for raw in {*self.raw_folders, *self.folder_of.values()}
        }
        return judge_run(
            raw_folders,
            output_dir / self.path,
            deleted=set(self.reads) if self.deleted else (),
            drained=drained,
        )


def judge_run(
    raw_folders: Mapping[Path, Mapping[str, Sequence[str]]],
    output_dir: Path,
    *,
    deleted: Collection[str] = (),
    never_offered: Collection[str] = (),
    drained: bool = True,
    done: Collection[str] = (),
    undone: Collection[str] = (),
) -> Verdict:
    """Judge a run of one raw folder or several (barcodes, pass and fail) that share one output
    folder, against the ledger of each raw folder (raw file name -> read ids; a name is one
    raw file of the run). A read of another run in this one's output is one of no raw file. A
    raw folder the test deleted whole is not looked into: its files are all in ``deleted``."""
    verdict = Verdict()
    reads = {name: ids for ledger in raw_folders.values() for name, ids in ledger.items()}
    owner = {read: name for name, ids in reads.items() for read in ids}
    pieces = {read: [piece_id(read, index) for index in range(PIECES)] for read in owner}
    owner.update({piece: owner[read] for read, each in pieces.items() for piece in each})
    held: defaultdict[str, list[str]] = defaultdict(list)
    quarantined: dict[str, str] = {}
    for input_dir, ledger in raw_folders.items():
        if not os.path.lexists(input_dir) and set(ledger) <= set(deleted):
            continue
        folder_held, folder_quarantined = job_folders(input_dir)
        for name, folders in folder_held.items():
            held[name] += folders
        quarantined.update(folder_quarantined)
        _raw_files(verdict, input_dir, ledger, deleted, never_offered, held, drained)
    _nothing_left_input(verdict, output_dir)
    places = _merged_reads(verdict, output_dir, owner)
    for read, split in pieces.items():
        whole, parts = places.get(read, []), [places.get(piece, []) for piece in split]
        # Once: whole, or as its pieces, each once.
        if len(whole) > 1 or (whole and any(parts)) or any(len(where) > 1 for where in parts):
            where = [*whole, *(place for each in parts for place in each)]
            shown = ", ".join(where[:_SHOWN]) + (" ..." if len(where) > _SHOWN else "")
            verdict.problems.append(
                f"read {read} of {owner[read]} is merged {len(where)} times: {shown}"
            )
        elif any(parts) and not all(parts):
            verdict.problems.append(f"read {read} of {owner[read]}: only some of its pieces")
    for name, ids in reads.items():
        found = sum(read in places or pieces[read][0] in places for read in ids)
        if name in never_offered:
            if found:
                verdict.problems.append(f"{name!r}, never to be offered, has {found} reads merged")
            continue
        if found and name in undone:
            verdict.problems.append(f"{name} is not done, yet {found} of its reads are merged")
        elif 0 < found < len(ids):
            verdict.problems.append(f"{name}: only {found} of its {len(ids)} reads are merged")
        elif name in deleted:
            if found:
                verdict.deleted_done += 1
        elif found and name in quarantined:
            verdict.problems.append(f"{name} is done and in {quarantined[name]} at once")
        elif found:
            verdict.done += 1
        elif name in quarantined:
            verdict.quarantined += 1
        elif drained or name in done:
            verdict.problems.append(
                f"{name}: none of its {len(ids)} reads is in pass/ or fail/, "
                "and it is in no QUARANTINED_ folder"
            )
    return verdict


def job_folders(input_dir: Path) -> tuple[defaultdict[str, list[str]], dict[str, str]]:
    """Which folders of INPUT_DIR hold an entry of each name, and the raw files that a
    QUARANTINED_ folder links to (an entry ``<name>`` that is a symlink to ``../<name>``). A
    folder renamed while it is read is left out (a running manager may rename them)."""
    held: defaultdict[str, list[str]] = defaultdict(list)
    quarantined: dict[str, str] = {}
    with os.scandir(input_dir) as entries:
        folders = [entry for entry in entries if entry.is_dir(follow_symlinks=False)]
    for folder in folders:
        try:
            with os.scandir(folder.path) as entries:
                for entry in entries:
                    held[entry.name].append(folder.name)
                    if (
                        folder.name.startswith("QUARANTINED_")
                        and entry.is_symlink()
                        and os.readlink(entry.path) == os.path.join(os.pardir, entry.name)
                    ):
                        quarantined[entry.name] = folder.name
        except FileNotFoundError:
            continue
    return held, quarantined


def _raw_files(
    verdict: Verdict,
    input_dir: Path,
    reads: Mapping[str, Sequence[str]],
    deleted: Collection[str],
    never_offered: Collection[str],
    held: Mapping[str, list[str]],
    drained: bool,
) -> None:
    """Each raw file is where the test left it: gone if deleted, else complete and regular."""
    for name in reads:
        path = input_dir / name
        if name in deleted:
            if os.path.lexists(path):
                verdict.problems.append(f"{name} was deleted by the test, yet is in INPUT_DIR")
            continue
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            verdict.problems.append(f"{name!r} is gone from INPUT_DIR")
            continue
        if not stat.S_ISREG(info.st_mode):
            verdict.problems.append(f"{name!r} is no longer a regular file in INPUT_DIR")
        elif drained and not _complete(path, info.st_size):
            verdict.problems.append(f"{name!r} is no longer a complete POD5 file")
        if name in never_offered and held.get(name):
            verdict.problems.append(f"{name!r}, never to be offered, is in {held[name]}")


def _complete(path: Path, size: int) -> bool:
    with path.open("rb") as raw:
        head = raw.read(len(POD5_SIGNATURE))
        raw.seek(max(0, size - len(POD5_SIGNATURE)))
        return head == POD5_SIGNATURE and raw.read() == POD5_SIGNATURE


def _nothing_left_input(verdict: Verdict, output_dir: Path) -> None:
    """No raw file (by name or by content), no job folder and no job folder's link is
    anywhere under OUTPUT_DIR (symlinks are not followed)."""
    if not output_dir.is_dir():
        return
    for folder, dirs, files in os.walk(output_dir):
        for name in dirs + files:
            path = Path(folder, name)
            shown = path.relative_to(output_dir)
            if name.endswith(".pod5") or _JOB_FOLDER.search(name):
                verdict.problems.append(f"OUTPUT_DIR/{shown}: a raw file or job folder's name")
            elif path.is_symlink():
                target = os.readlink(path)
                if target.startswith(os.pardir + os.sep) and target.endswith(".pod5"):
                    verdict.problems.append(f"OUTPUT_DIR/{shown}: a job folder's link")
            elif path.is_file() and _starts_like_pod5(path):
                verdict.problems.append(f"OUTPUT_DIR/{shown}: a raw file's bytes")


def stray_reads(output_root: Path, outputs: Collection[Path]) -> list[str]:
    """Every FASTQ file in a pass/ or fail/ folder under ``output_root`` but those of the
    runs' own output folders ``outputs`` (the judges of each run read those): reads merged
    where no run's output is (a run's old path after a move, say). A job's own output folder
    (``<KIND>OUTPUT_<job>_<engine>``) and hidden folders hold no merged reads and are not
    looked into."""
    problems = []
    allowed = {output / sub for output in outputs for sub in READS_FOLDERS}
    for folder, dirs, files in os.walk(output_root):
        here = Path(folder)
        if here in allowed:
            dirs.clear()
            continue
        dirs[:] = [
            name for name in dirs if not name.startswith(".") and not _JOB_OUTPUT.search(name)
        ]
        if here.name in READS_FOLDERS or any(
            part in READS_FOLDERS for part in here.relative_to(output_root).parts
        ):
            problems += [
                f"{_shown(output_root, folder, name)}: reads in no run's output folder"
                for name in files
                if name.endswith(FASTQ_SUFFIXES)
            ]
    return problems


def _starts_like_pod5(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(len(POD5_SIGNATURE)) == POD5_SIGNATURE


def _merged_reads(
    verdict: Verdict, output_dir: Path, owner: Mapping[str, str]
) -> dict[str, list[str]]:
    """Where each known read id is in pass/ and fail/; every other entry there is a problem."""
    places: dict[str, list[str]] = defaultdict(list)
    for sub in READS_FOLDERS:
        top = output_dir / sub
        if top.is_symlink() or (os.path.lexists(top) and not top.is_dir()):
            verdict.problems.append(f"OUTPUT_DIR/{sub} is not a folder")
            continue
        for folder, dirs, files in os.walk(top):
            for name in dirs:
                if Path(folder, name).is_symlink():
                    verdict.problems.append(f"{_shown(output_dir, folder, name)}: a symlink")
            for name in files:
                _merged_file(verdict, output_dir, Path(folder, name), owner, places)
    return places


def _merged_file(
    verdict: Verdict,
    output_dir: Path,
    path: Path,
    owner: Mapping[str, str],
    places: dict[str, list[str]],
) -> None:
    shown = _shown(output_dir, str(path.parent), path.name)
    if not stat.S_ISREG(os.lstat(path).st_mode):
        verdict.problems.append(f"{shown}: not a regular file")
        return
    if not path.name.endswith(FASTQ_SUFFIXES):
        verdict.problems.append(f"{shown}: not named as a FASTQ file")
        return
    try:
        ids = fastq_read_ids(path)
    except NotFastq as error:
        verdict.problems.append(f"{shown}: not FASTQ ({error})")
        return
    verdict.fastq_files += 1
    verdict.reads += len(ids)
    foreign = Counter(read for read in ids if read not in owner)
    if foreign:
        verdict.problems.append(
            f"{shown}: {sum(foreign.values())} reads of no raw file, e.g. {next(iter(foreign))}"
        )
    for read in ids:
        if read in owner:
            places[read].append(shown)


def _shown(output_dir: Path, folder: str, name: str) -> str:
    return f"OUTPUT_DIR/{Path(folder, name).relative_to(output_dir)}"
