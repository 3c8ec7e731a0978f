"""Every folder and file name the manager reads or writes, and the rules for them.

The filesystem is the database (docs/design.md): a person reads the run's state with ``ls``, and a
restart rebuilds it from these names alone. So each name is spelled here, once.

INPUT_DIR holds the raw ``*.pod5`` files (never written, moved or deleted by us) and one folder
per job, named ``<KIND>_<jobid>_<engine>``: ASSIGNED_ (leased now), DONE_ (output final), FAILED_
(an attempt that failed; its files are retried), QUARANTINED_ (the failed attempt that set its
one file aside) and EXCUSED_ (a failed attempt not held against its files: an operator sent the
file back, or a benched engine made it). OUTPUT_DIR holds pass/ and fail/ and one folder per job
output: TMPOUTPUT_
(running), LOGOUTPUT_ (done), FAILEDOUTPUT_ (failed) and EXPIREDOUTPUT_ (a job whose lease ran out:
kept for inspection, never merged). Folders being built or torn down carry the hidden prefix
``.bcm-tmp-`` until an atomic rename commits them; start-up removes any that a crash left behind.
Both folders hold the hidden ``.bcmanager.lock`` of the manager that runs them (``lock.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

RAW_SUFFIX = ".pod5"
# What the agent writes at the top of a job's output folder when its basecaller has ended: the
# exit code, signal, run time and the tail of stderr, as JSON (docs/reliability.md). Kept with
# the logs, so a FAILEDOUTPUT_ folder says why its job failed.
ATTEMPT_FILE = "bcm-attempt.json"
# What the agent writes beside it when the basecaller succeeded: the job's read statistics
# (reads/stats.py). Kept with the logs, where the manager reads it.
STATS_FILE = "bcm-stats.json"
# What the manager writes there before it commits a DONE: the account of the job's reads, each
# raw file's reads in against those that came out (core/account.py). A reads file the account
# rejects is renamed with REJECTED_SUFFIX, so that no merge, now or after a crash, moves it.
ACCOUNT_FILE = "bcm-account.json"
REJECTED_SUFFIX = ".rejected"
# What the manager keeps at the top of a run's output folder: the seal of a complete run (its
# counts and its folders' modification times, read at start-up instead of its raw files) and
# the record of the run's completion command (run once, its exit status kept), and its
# run_complete notice while the webhook has not taken it.
SEAL_FILE = "bcm-run.json"
COMPLETION_FILE = "bcm-run-complete.json"
COMPLETION_LOG = "bcm-run-complete.log"
NOTICE_FILE = "bcm-run-notice.json"
# In each run folder of a root (hidden, beside MinKNOW's files): the path the run was last
# served at, so that a run moved while no manager watched is followed with its output.
RUN_PATH_FILE = ".bcm-run-path.json"
PASS = "pass"
FAIL = "fail"
TEMP_PREFIX = ".bcm-tmp-"
LOCK_NAME = ".bcmanager.lock"
FASTQ_SUFFIXES = (".fastq", ".fastq.gz", ".fq", ".fq.gz")
# What a basecaller's output folder may hold that is merged into pass/ and fail/: reads files,
# and the index files that travel with them. Everything else stays with the job's logs.
READS_SUFFIXES = (*FASTQ_SUFFIXES, ".bam", ".sam", ".sam.gz", ".cram")
INDEX_SUFFIXES = (".bai", ".csi", ".crai")
# Folder names that say pass or fail (Dorado and MinKNOW: fastq_pass, bam_fail, ...).
PASS_FOLDER = re.compile(r"^(?:.*_)?pass$")
FAIL_FOLDER = re.compile(r"^(?:.*_)?fail$")
BARCODE_FOLDER = re.compile(r"^(?:barcode[0-9]+|unclassified|mixed)$")
FINAL_PREFIX = "job_id_"
# MinKNOW writes final_summary_<flow cell>_<acquisition>_<hash>.txt when sequencing stops.
FINAL_SUMMARY_PREFIX = "final_summary_"
FINAL_SUMMARY_SUFFIX = ".txt"
# The run's report (docs/report.md), written into its output folder when it completes.
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

_UTF8_CHUNK = 4096  # names joined for one test that they are all UTF-8

ENGINE_ID_MAX = 100
# At least one character that is not a dot, so that it is never "." or "..".
ENGINE_ID_PATTERN = r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$"
JOB_ID_PATTERN = r"^[0-9]{1,40}$"
_ENGINE_ID = re.compile(ENGINE_ID_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)
# One regular expression, as a start-up reads every FASTQ name of a run. Greedy: the stem is the
# longest that leaves a FASTQ suffix, so "a.fq.fastq" stands for "a.fq".
_FASTQ_NAME = re.compile(
    f"(?:{re.escape(FINAL_PREFIX)}(?P<jobid>[0-9]+)_)?(?P<stem>.*)"
    f"(?:{'|'.join(map(re.escape, FASTQ_SUFFIXES))})",
    re.DOTALL,
)


class FolderKind(str, Enum):
    """The prefix of a job folder; the value is spelled exactly as on disk."""

    ASSIGNED = "ASSIGNED_"  # INPUT_DIR: symlinks of files leased to an engine now
    DONE = "DONE_"  # INPUT_DIR: symlinks of files whose FASTQ is final
    FAILED = "FAILED_"  # INPUT_DIR: symlinks of a failed attempt's files (retried, in halves)
    QUARANTINED = "QUARANTINED_"  # INPUT_DIR: the attempt that set its one file aside
    EXCUSED = "EXCUSED_"  # INPUT_DIR: a failed attempt not held against its files
    TMPOUTPUT = "TMPOUTPUT_"  # OUTPUT_DIR: a running job's output
    LOGOUTPUT = "LOGOUTPUT_"  # OUTPUT_DIR: what stays of a done job's output (logs)
    FAILEDOUTPUT = "FAILEDOUTPUT_"  # OUTPUT_DIR: a failed job's output
    EXPIREDOUTPUT = "EXPIREDOUTPUT_"  # OUTPUT_DIR: output of a job that lost its lease
    # OUTPUT_DIR: output of a DONE that held no reads file, as earlier versions kept it aside
    EMPTYOUTPUT = "EMPTYOUTPUT_"


INPUT_KINDS = (
    FolderKind.ASSIGNED,
    FolderKind.DONE,
    FolderKind.FAILED,
    FolderKind.QUARANTINED,
    FolderKind.EXCUSED,
)
# The job folders that record an attempt that failed: what the output goes to on FAILED.
FAILED_KINDS = (FolderKind.FAILED, FolderKind.QUARANTINED, FolderKind.EXCUSED)
OUTPUT_KINDS = (
    FolderKind.TMPOUTPUT,
    FolderKind.LOGOUTPUT,
    FolderKind.FAILEDOUTPUT,
    FolderKind.EXPIREDOUTPUT,
    FolderKind.EMPTYOUTPUT,
)
_KINDS = {kind.value: kind for kind in FolderKind}
_ASIDE = re.compile(r".+\.~[0-9]+~")
_JOB_FOLDER = re.compile(
    r"^(?P<kind>" + "|".join(kind.value for kind in FolderKind) + r")(?P<jobid>[0-9]{1,40})_"
    r"(?P<engine>" + ENGINE_ID_PATTERN[1:-1] + r")$"
)


def is_engine_id(value: str) -> bool:
    """Engine ids end up in folder names: letters, digits, '.', '-', '_' only, never a path."""
    return len(value) <= ENGINE_ID_MAX and _ENGINE_ID.fullmatch(value) is not None


def is_job_id(value: str) -> bool:
    """Job ids are decimal strings (the original uses uuid4().int)."""
    return _JOB_ID.fullmatch(value) is not None


def is_utf8(name: str) -> bool:
    """Whether a name read from disk was valid UTF-8. Python lists other bytes (a file copied
    from a Latin-1 share: ``caf\\xe9.pod5``) as surrogate escapes, which no JSON reply, metrics
    label or engine can carry."""
    if name.isascii():
        return True
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` (a name or a path) fit for a reply, a log line or a terminal: bytes that are not
    UTF-8 written as ``\\xNN``, everything else as it is."""
    if is_utf8(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte: not from a file name
        return text.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")


def is_raw_name(name: str) -> bool:
    """A raw file the sequencer wrote: ``*.pod5`` at the top of INPUT_DIR, not hidden, and
    named in UTF-8 (an engine is told each name in JSON)."""
    return (
        name.endswith(RAW_SUFFIX) and not name.startswith(".") and "/" not in name and is_utf8(name)
    )


def raw_names_among(names: Iterable[str]) -> list[str]:
    """The names ``is_raw_name`` accepts, in their order. The same rule without a call per
    name: a start-up filters every name of a run that may hold a million."""
    return split_undecodable(raw_shaped_among(names))[0]


def raw_shaped_among(names: Iterable[str]) -> list[str]:
    """The names shaped like raw files, in UTF-8 or not, in their order: what a listing warns
    about is among them."""
    return [
        name
        for name in names
        if name.endswith(RAW_SUFFIX) and not name.startswith(".") and "/" not in name
    ]


def split_undecodable(names: list[str]) -> tuple[list[str], list[str]]:
    """(the names that are UTF-8, those that are not), each in order. One test of a chunk's
    names joined is all that ordinary names cost; names are checked one by one only from the
    first chunk that holds an odd one."""
    for start in range(0, len(names), _UTF8_CHUNK):
        if not is_utf8("".join(names[start : start + _UTF8_CHUNK])):
            good: list[str] = names[:start]
            odd: list[str] = []
            for name in names[start:]:
                (good if is_utf8(name) else odd).append(name)
            return good, odd
    return names, []


def is_final_summary_name(name: str) -> bool:
    return name.startswith(FINAL_SUMMARY_PREFIX) and name.endswith(FINAL_SUMMARY_SUFFIX)


def job_folder(kind: FolderKind, jobid: str, engine: str) -> str:
    return f"{kind.value}{jobid}_{engine}"


@dataclass(frozen=True, slots=True)
class JobFolderName:
    kind: FolderKind
    jobid: str
    engine: str

    @property
    def name(self) -> str:
        return job_folder(self.kind, self.jobid, self.engine)


def parse_job_folder(name: str) -> JobFolderName | None:
    """The parts of a job folder's name, or None for anything else."""
    match = _JOB_FOLDER.fullmatch(name)
    if match is None:
        return None
    return JobFolderName(_KINDS[match["kind"]], match["jobid"], match["engine"])


def temp_name(final_name: str) -> str:
    """The hidden name a folder carries while it is built or torn down."""
    return f"{TEMP_PREFIX}{final_name}"


def aside_name(name: str, attempt: int) -> str:
    """A fresh name for a folder set aside where ``name`` is taken: ``name.~1~``, as numbered
    backups are spelled. The ``~`` keeps it from ever parsing as a job folder."""
    return f"{name}.~{attempt}~"


def is_aside_name(name: str) -> bool:
    """A folder that ``aside_name`` named: set aside by the manager, kept for a person."""
    return (
        _ASIDE.fullmatch(name) is not None and parse_job_folder(name.rsplit(".~", 1)[0]) is not None
    )


def merge_target(parts: tuple[str, ...]) -> tuple[str, str | None] | None:
    """Where a file of a job's output folder goes, from its path inside that folder: (``pass``
    or ``fail``, barcode folder or None), or None when it is no reads or index file and stays
    with the logs. The nearest folder that says pass or fail decides (pass when none does).
    The nearest barcode folder (``barcodeNN``, ``unclassified``, ``mixed``) gives the barcode;
    failing one, the folder right inside the pass or fail folder does, as Dorado names it after
    the sample sheet's alias (``bam_pass/patient_A/...``)."""
    name = parts[-1]
    if name.startswith(".") or not name.endswith(READS_SUFFIXES + INDEX_SUFFIXES):
        return None
    verdict = barcode = alias = None
    folders = parts[:-1]
    for index in range(len(folders) - 1, -1, -1):
        folder = folders[index]
        if verdict is None and (PASS_FOLDER.match(folder) or FAIL_FOLDER.match(folder)):
            verdict = PASS if PASS_FOLDER.match(folder) else FAIL
            alias = folders[index + 1] if index + 1 < len(folders) else None
        if barcode is None and BARCODE_FOLDER.match(folder):
            barcode = folder
    return verdict or PASS, barcode or alias


def is_reads_name(name: str) -> bool:
    """A reads file, as opposed to an index that travels with one."""
    return name.endswith(READS_SUFFIXES)


def final_fastq_name(jobid: str, name: str) -> str:
    """How an engine's output file is named once merged into pass/ or fail/."""
    return f"{FINAL_PREFIX}{jobid}_{name}"


@dataclass(frozen=True, slots=True)
class FastqName:
    stem: str  # the raw file stem it stands for
    jobid: str | None  # the job whose output it was, when merged by us; None: made otherwise


def parse_fastq_name(name: str) -> FastqName | None:
    """What a FASTQ in pass/ or fail/ stands for, with or without the job_id_ prefix."""
    match = _FASTQ_NAME.fullmatch(name)
    if match is None or not match["stem"]:
        return None
    return FastqName(match["stem"], match["jobid"])


def fastq_raw_stem(name: str, skip_jobids: frozenset[str] = frozenset()) -> str | None:
    """The raw file stem a FASTQ in pass/ or fail/ stands for, with or without job_id_ prefix;
    None for a FASTQ merged from one of ``skip_jobids`` (jobs whose DONE_ folder says which raw
    files they hold: a name their engine chose proves nothing). No object made: a start-up
    reads every FASTQ name of a run."""
    match = _FASTQ_NAME.fullmatch(name)
    if match is None or (skip_jobids and match["jobid"] in skip_jobids):
        return None
    return match["stem"] or None


def raw_stem(name: str) -> str:
    return name[: -len(RAW_SUFFIX)] if name.endswith(RAW_SUFFIX) else name


@dataclass(frozen=True, slots=True)
class RunPaths:
    """One raw folder's two places, and the folders derived from them.

    ``input_dir`` is the raw folder (its job folders live beside its raw files) and
    ``output_dir`` is its run's output folder. Under a root that holds many runs, the engines
    are told job folders relative to the roots (INPUT_DIR and OUTPUT_DIR); for one run served
    alone, the roots are the two folders themselves."""

    input_dir: Path
    output_dir: Path
    input_root: Path | None = None  # INPUT_DIR when it is a root above ``input_dir``
    output_root: Path | None = None  # OUTPUT_DIR when it is a root above ``output_dir``

    def job_input_dir(self, kind: FolderKind, jobid: str, engine: str) -> str:
        """A job folder as the protocol names it: relative to INPUT_DIR."""
        return _relative(self.input_folder(kind, jobid, engine), self.input_root)

    def job_output_dir(self, kind: FolderKind, jobid: str, engine: str) -> str:
        """A job's output folder as the protocol names it: relative to OUTPUT_DIR."""
        return _relative(self.output_folder(kind, jobid, engine), self.output_root)

    @property
    def pass_dir(self) -> Path:
        return self.output_dir / PASS

    @property
    def fail_dir(self) -> Path:
        return self.output_dir / FAIL

    @property
    def lock_file(self) -> Path:
        return self.input_dir / LOCK_NAME

    @property
    def output_lock_file(self) -> Path:
        return self.output_dir / LOCK_NAME

    def input_folder(self, kind: FolderKind, jobid: str, engine: str) -> Path:
        return self.input_dir / job_folder(kind, jobid, engine)

    def output_folder(self, kind: FolderKind, jobid: str, engine: str) -> Path:
        return self.output_dir / job_folder(kind, jobid, engine)


def _relative(folder: Path, root: Path | None) -> str:
    return folder.name if root is None else folder.relative_to(root).as_posix()
