"""Simulated sequencer and basecaller, so the whole flow runs without a flow cell or a GPU.

Everything here writes and reads real POD5 files with the ``pod5`` package, because the
manager's completeness rule (docs/design.md, invariant 3) and the agents' basecaller command
must meet the same bytes a sequencer writes.

``pod5.Writer`` creates its destination at once, empty, with hidden scratch files beside it, and
fills it only on ``close()``. So files are built in a private scratch folder and their bytes are
then placed where they belong: atomically for test fixtures, in timed chunks for the sequencer,
which thereby leaves a half-written file under its final name for a while, as MinKNOW does.

The basecaller can also lose or change reads the ways Dorado does (a file it cannot open, split
reads, a reads file cut short, a crash), so that the manager is tested against them.

The sequencer is a coroutine and the basecaller a plain function, so the demo can run them
in-process; ``bcmanager simulate`` is a thin command-line layer over both.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import datetime
import itertools
import math
import os
import random
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import pod5  # type: ignore[import-untyped]

from bcmanager import __version__
from bcmanager.paths import FAIL, PASS, is_raw_name, raw_stem
from bcmanager.reads import stats as readstats
from bcmanager.reads.files import derived_read_id

POD5_SIGNATURE = b"\x8bPOD\r\n\x1a\n"  # first and last 8 bytes of every complete POD5 file
SAMPLE_RATE = 5000  # samples per second, as on a PromethION R10.4.1 flow cell
SAMPLES_PER_BASE = 12  # about 400 bases per second at SAMPLE_RATE
DEFAULT_SAMPLES_PER_READ = 4000  # short reads keep files small and tests fast
DEFAULT_SECONDS_PER_READ = 0.01
WRITE_CHUNKS = 10  # the sequencer writes each file in this many steps
FLOW_CELL_ID = "PAO12345"
SOFTWARE = "bcmanager simulator (not MinKNOW)"
_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)  # fixed, so files follow the seed
_PARTIAL_SUFFIX = ".partial"

Progress = Callable[[str], None]


class SimulatorError(Exception):
    """A simulated sequencer or basecaller cannot go on; the message says why."""


class SimulatedCrash(Exception):
    """The simulated basecaller dies on purpose (``crash_after``), as Dorado aborting mid-run."""


# The exit status a shell reports for a process killed by SIGABRT (128 + 6), which the
# command-line basecaller exits with when it crashes on purpose.
CRASH_EXIT_CODE = 134


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What ties the files of one simulated run together, derived from a seed.

    As in MinKNOW, the acquisition id is 40 hex digits and the protocol run id a uuid; file names
    carry the first 8 characters of each.
    """

    acquisition_id: str
    protocol_run_id: str

    @classmethod
    def from_seed(cls, seed: int) -> RunIdentity:
        rng = random.Random(f"run:{seed}")
        return cls(f"{rng.getrandbits(160):040x}", str(_uuid4(rng)))

    @property
    def short_ids(self) -> str:
        return f"{self.acquisition_id[:8]}_{self.protocol_run_id[:8]}"

    def raw_file_name(self, index: int) -> str:
        return f"{FLOW_CELL_ID}_pass_{self.short_ids}_{index}.pod5"

    def final_summary_name(self) -> str:
        return f"final_summary_{FLOW_CELL_ID}_{self.short_ids}.txt"


def _uuid4(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _run_info(run: RunIdentity) -> pod5.RunInfo:
    return pod5.RunInfo(
        acquisition_id=run.acquisition_id,
        acquisition_start_time=_EPOCH,
        adc_max=4095,
        adc_min=-4096,
        context_tags={"sample_frequency": str(SAMPLE_RATE), "sequencing_kit": "sqk-lsk114"},
        experiment_name="bcmanager-simulation",
        flow_cell_id=FLOW_CELL_ID,
        flow_cell_product_code="FLO-PRO114M",
        protocol_name="sequencing/sequencing_PRO114_DNA_e8_2_400K:FLO-PRO114M:SQK-LSK114",
        protocol_run_id=run.protocol_run_id,
        protocol_start_time=_EPOCH,
        sample_id="simulated-sample",
        sample_rate=SAMPLE_RATE,
        sequencing_kit="sqk-lsk114",
        sequencer_position="1A",
        sequencer_position_type="PromethION",
        software=SOFTWARE,
        system_name="simulated-sequencer",
        system_type="PromethION 24",
        tracking_id={"run_id": run.acquisition_id, "flow_cell_id": FLOW_CELL_ID},
    )


def _simulated_read(
    rng: random.Random, number: int, samples: int, run_info: pod5.RunInfo
) -> pod5.Read:
    noise = np.random.default_rng(rng.getrandbits(64))
    signal = noise.normal(loc=500.0, scale=60.0, size=samples).astype(np.int16)
    return pod5.Read(
        read_id=_uuid4(rng),
        pore=pod5.Pore(channel=rng.randint(1, 3000), well=1, pore_type="not_set"),
        calibration=pod5.Calibration(offset=-240.0, scale=0.1462),
        read_number=number,
        start_sample=number * samples,
        median_before=float(rng.uniform(180.0, 240.0)),
        end_reason=pod5.EndReason.from_reason_with_default_forced(
            pod5.EndReasonEnum.SIGNAL_POSITIVE
        ),
        run_info=run_info,
        signal=signal,
    )


def pod5_bytes(
    name: str,
    read_count: int,
    *,
    seed: int = 0,
    samples_per_read: int = DEFAULT_SAMPLES_PER_READ,
) -> tuple[bytes, list[str]]:
    """The bytes of a complete POD5 file, and the read ids in it.

    Read ids follow from ``seed`` and ``name`` together, so files of one run never share a read id
    and the same call always gives the same ids.
    """
    rng = random.Random(f"file:{seed}:{name}")
    run_info = _run_info(RunIdentity.from_seed(seed))
    reads = [_simulated_read(rng, n, samples_per_read, run_info) for n in range(read_count)]
    with tempfile.TemporaryDirectory(prefix="bcmanager-sim-") as scratch:
        path = Path(scratch) / name
        with pod5.Writer(path, software_name=SOFTWARE) as writer:
            writer.add_reads(reads)
        return path.read_bytes(), [str(read.read_id) for read in reads]


def write_pod5(
    path: Path,
    read_count: int,
    *,
    seed: int = 0,
    samples_per_read: int = DEFAULT_SAMPLES_PER_READ,
) -> list[str]:
    """Write a complete POD5 file at ``path`` in one atomic step; return its read ids.

    The bytes go to a hidden sibling first and are renamed into place, so a watcher never sees
    ``path`` half-written (use the sequencer for that).
    """
    data, read_ids = pod5_bytes(path.name, read_count, seed=seed, samples_per_read=samples_per_read)
    _write_atomically(path, data)
    return read_ids


def _write_atomically(path: Path, data: bytes) -> None:
    """Write under a hidden sibling name, then rename: ``path`` is absent or complete."""
    partial = path.with_name(f".{path.name}{_PARTIAL_SUFFIX}")
    partial.write_bytes(data)
    os.replace(partial, path)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


async def run_sequencer(
    outdir: Path,
    *,
    files: int,
    reads_per_file: int,
    interval: float,
    write_seconds: float,
    seed: int = 0,
    samples_per_read: int = DEFAULT_SAMPLES_PER_READ,
    final_summary: bool = True,
    progress: Progress | None = None,
) -> list[Path]:
    """Write ``files`` POD5 files into ``outdir`` the way a sequencer does; return their paths.

    Each file is written in place over ``write_seconds``, so it exists under its final name
    without its end signature until its last chunk lands; ``interval`` seconds pass between one
    file's end and the next one's start. When all are written, a MinKNOW-style final summary
    says that sequencing has stopped.
    """
    say = progress or _ignore
    run = RunIdentity.from_seed(seed)
    outdir.mkdir(parents=True, exist_ok=True)
    started = _utc_now()
    say(f"simulated sequencer (not MinKNOW): {files} files of {reads_per_file} reads into {outdir}")
    written: list[Path] = []
    for index in range(files):
        if index:
            await asyncio.sleep(interval)
        path = outdir / run.raw_file_name(index)
        data, _ = await asyncio.to_thread(
            pod5_bytes, path.name, reads_per_file, seed=seed, samples_per_read=samples_per_read
        )
        say(f"simulated sequencer: writing {path.name} ({len(data)} bytes) over {write_seconds}s")
        await _write_in_place(path, data, write_seconds)
        written.append(path)
        say(f"simulated sequencer: {path.name} complete ({index + 1}/{files})")
    if final_summary:
        summary = outdir / run.final_summary_name()
        _write_atomically(summary, _final_summary_text(run, started, files).encode())
        say(f"simulated sequencer: sequencing stopped, wrote {summary.name}")
    return written


def _ignore(line: str) -> None:
    """The progress sink when the caller wants none."""


async def _write_in_place(path: Path, data: bytes, seconds: float) -> None:
    """Append ``data`` to a new file at ``path`` in chunks spread over ``seconds``."""
    bounds = [len(data) * n // WRITE_CHUNKS for n in range(WRITE_CHUNKS + 1)]
    pause = seconds / (WRITE_CHUNKS - 1)
    try:
        raw_file = path.open("xb")
    except FileExistsError as exc:
        raise SimulatorError(f"{path} exists already; a sequencer never overwrites") from exc
    with raw_file:
        for start, end in itertools.pairwise(bounds):
            raw_file.write(data[start:end])
            raw_file.flush()
            if end < len(data):
                await asyncio.sleep(pause)


def _final_summary_text(run: RunIdentity, started: str, files: int) -> str:
    stopped = _utc_now()
    fields = {
        "instrument": "simulated-sequencer",
        "position": "1A",
        "flow_cell_id": FLOW_CELL_ID,
        "sample_id": "simulated-sample",
        "experiment_id": "bcmanager-simulation",
        "protocol_run_id": run.protocol_run_id,
        "acquisition_run_id": run.acquisition_id,
        "started": started,
        "acquisition_stopped": stopped,
        "processing_stopped": stopped,
        "basecalling_enabled": "0",
        "pod5_files_in_final_dest": str(files),
        "pod5_files_in_fallback": "0",
        "fastq_files_in_final_dest": "0",
        "fastq_files_in_fallback": "0",
        "software": SOFTWARE,
    }
    return "".join(f"{key}={value}\n" for key, value in fields.items())


class Layout(str, Enum):
    """Where the simulated basecaller puts its reads files in a job's output folder."""

    PASS_FAIL = "pass-fail"  # pass/ or fail/ [<barcode>/] <raw stem>.<ext>: a file per raw file
    DORADO = "dorado"  # Dorado's --output-dir tree: <run>/bam_pass/<barcode>/<name>.bam, ...
    FLAT = "flat"  # one calls.<ext> at the top, as a wrapper saving Dorado's stdout writes


class ReadsFormat(str, Enum):
    """What the simulated basecaller writes."""

    FASTQ = "fastq"  # plain FASTQ, as ``dorado basecaller --emit-fastq``
    BAM = "bam"  # unaligned BAM, Dorado's default: needs pysam


DEFAULT_MODEL = "dna_r10.4.1_e8.2_400bps_hac@v5.0.0"
# A read whose mean Q-score is below this goes to *_fail in the Dorado layout, as Dorado's
# default --min-qscore for its hac models sends it.
MIN_QSCORE = 9
_Q_SPREAD = 4  # a base's quality differs from its read's centre by up to this much
_SPLIT_PIECES = (2, 2, 2, 3)  # a split read comes out as 2 records, now and then as 3
_MIN_BASES = max(_SPLIT_PIECES)  # a base for each piece a read may be split into
_BGZF_EOF_SIZE = 28  # the empty BGZF block that ends every complete BAM file
# What pod5 (and so Dorado) says of a file that is not a whole POD5 file.
_POD5_BAD_SIGNATURE = "IOError: Invalid signature in file"


@dataclass(frozen=True, slots=True)
class BasecalledFile:
    """One reads file the simulated basecaller wrote, and how many reads it holds."""

    path: Path
    reads: int


@dataclass(frozen=True, slots=True)
class SimulatedRead:
    """What the simulated basecaller makes of one read: all of it follows from the read id and
    its signal's length, so a test can say what a file must hold without parsing it."""

    read_id: str
    bases: str
    qualities: bytes  # phred scores, one per base
    parent_id: str | None = None  # the raw read a piece of a split read comes from
    split_point: int = 0  # where a piece starts in its parent's signal, in samples

    @classmethod
    def of(cls, read_id: str, samples: int) -> SimulatedRead:
        """Lengths spread around one base per ``SAMPLES_PER_BASE`` samples, and each read's
        qualities around a centre of its own, so both histograms have some shape."""
        rng = random.Random(read_id)
        length = max(_MIN_BASES, round(samples / SAMPLES_PER_BASE * rng.uniform(0.3, 1.7)))
        bases = "".join(rng.choices("ACGT", k=length))
        centre = min(35, max(3, round(rng.gauss(14, 5))))
        qualities = bytes(
            min(50, max(1, centre + spread))
            for spread in rng.choices(range(-_Q_SPREAD, _Q_SPREAD + 1), k=length)
        )
        return cls(read_id, bases, qualities)

    @property
    def mean_qscore(self) -> float:
        return readstats.phred_mean_qscore(self.qualities)

    def fastq(self, header: str) -> str:
        quality_text = "".join(chr(33 + phred) for phred in self.qualities)
        return f"@{self.read_id} {header}\n{self.bases}\n+\n{quality_text}\n"

    def split(self, samples: int, seed: int, split_fraction: float) -> list[SimulatedRead]:
        """The records this read comes out as: itself, or the pieces Dorado's read splitting
        would make of it (``split_children`` names them), which together hold its bases and
        qualities in order; ``samples`` is its signal's length, to place each piece in it."""
        pieces, rng = _split_plan(self.read_id, seed, split_fraction)
        if pieces == 1:
            return [self]
        length = len(self.bases)
        cuts = [0, *sorted(rng.sample(range(1, length), pieces - 1)), length]
        return [
            SimulatedRead(
                derived_read_id(self.read_id, index),
                self.bases[start:end],
                self.qualities[start:end],
                parent_id=self.read_id,
                split_point=start * samples // length,
            )
            for index, (start, end) in enumerate(itertools.pairwise(cuts))
        ]


def split_children(read_id: str, seed: int, split_fraction: float) -> list[str]:
    """The read ids a raw read comes out as when split, in order; empty when it is not.

    Which reads are split follows from ``seed`` and the read id; the pieces are named as Dorado
    names them, so the same rule finds them in Dorado's own output.
    """
    pieces, _ = _split_plan(read_id, seed, split_fraction)
    return [derived_read_id(read_id, index) for index in range(pieces)] if pieces > 1 else []


def _split_plan(read_id: str, seed: int, split_fraction: float) -> tuple[int, random.Random]:
    """How many records a read comes out as, and the generator that goes on to place its cuts."""
    rng = random.Random(f"split:{seed}:{read_id}")
    if rng.random() >= split_fraction:
        return 1, rng
    return rng.choice(_SPLIT_PIECES), rng


def file_unreadable(stem: str, seed: int, unreadable_fraction: float) -> bool:
    """Whether the simulated basecaller pretends it cannot open the raw file ``stem``: a share
    of files near ``unreadable_fraction``, chosen by ``seed`` and the stem."""
    return random.Random(f"unreadable:{seed}:{stem}").random() < unreadable_fraction


def barcode_of(read_id: str, barcodes: int) -> str | None:
    """The barcode folder a read goes to when reads are spread over ``barcodes`` barcodes:
    barcode01..NN or unclassified, each about as likely; None with no barcodes."""
    if barcodes <= 0:
        return None
    index = random.Random(f"barcode:{read_id}").randrange(barcodes + 1)
    return "unclassified" if index == barcodes else f"barcode{index + 1:02d}"


def basecall(
    input_dir: Path,
    output_dir: Path,
    *,
    seconds_per_read: float = DEFAULT_SECONDS_PER_READ,
    fail_fraction: float = 0.0,
    seed: int = 0,
    reads_format: ReadsFormat = ReadsFormat.FASTQ,
    layout: Layout = Layout.PASS_FAIL,
    barcodes: int = 0,
    model: str = DEFAULT_MODEL,
    unreadable_fraction: float = 0.0,
    skip_unreadable: bool = False,
    split_fraction: float = 0.0,
    cut: bool = False,
    crash_after: int | None = None,
    progress: Progress | None = None,
) -> list[BasecalledFile]:
    """Stand in for Dorado on one job: a record per read of every POD5 file in input_dir.

    In the pass-fail layout each raw file's reads go to pass/ (or all to fail/, for a share of
    files near ``fail_fraction`` chosen by ``seed`` and the file's name), in the Dorado layout
    each read goes to pass or fail by its mean Q-score (``MIN_QSCORE``), in the flat layout all
    into one file. ``barcodes`` spreads reads over barcode folders (``barcode_of``). Each file
    is written under a hidden name and renamed into place when complete (in the pass-fail
    layout after each raw file, otherwise at the end), so a basecaller killed at any instant
    leaves no partial file under a reads file's name.

    The rest reproduces Dorado's ways of losing or changing reads, so the manager can be tested
    against them: files it cannot open are skipped with Dorado's error on stderr (a share near
    ``unreadable_fraction`` chosen by ``file_unreadable``, and with ``skip_unreadable`` those
    pod5 cannot open; otherwise such a file is a ``SimulatorError``); a share of reads near
    ``split_fraction`` comes out split (``SimulatedRead.split``); ``cut`` leaves the last reads
    file written cut short, as a crash mid-write does; ``crash_after`` raises
    ``SimulatedCrash`` when that many raw reads are done and another one comes.
    """
    say = progress or _ignore
    for folder in (input_dir, output_dir):
        if not folder.is_dir():
            raise SimulatorError(f"{folder} is not a folder")
    raw_files = sorted(path for path in input_dir.iterdir() if is_raw_name(path.name))
    say(f"simulated basecaller (not Dorado): {len(raw_files)} POD5 files in {input_dir}")
    unreadable = _unreadable_files(raw_files, seed, unreadable_fraction, skip_unreadable)
    if raw_files and len(unreadable) == len(raw_files):
        _dorado_error(f"No reads found in path: {input_dir}")
        raise SimulatorError(f"no POD5 file in {input_dir} could be opened")
    outputs = _Outputs(output_dir, reads_format, model)
    raw_reads = 0
    try:
        for raw in raw_files:
            if raw in unreadable:
                _dorado_error(f"POD5 Failed to open file - '{unreadable[raw]}' @ '{raw}'.")
                say(f"simulated basecaller: {raw.name}: skipped, it cannot be opened")
                continue
            stem = raw_stem(raw.name)
            file_fails = _file_fails(stem, fail_fraction, seed)
            count = 0
            for raw_read, samples, run_info, header in _simulated_reads(raw, seconds_per_read):
                if raw_reads == crash_after:
                    raise SimulatedCrash(f"crashed on purpose after {raw_reads} reads")
                raw_reads += 1
                for read in raw_read.split(samples, seed, split_fraction):
                    barcode = barcode_of(read.read_id, barcodes)
                    if layout is Layout.PASS_FAIL:
                        where = _pass_fail_path(FAIL if file_fails else PASS, barcode, stem)
                    elif layout is Layout.DORADO:
                        verdict = PASS if read.mean_qscore >= MIN_QSCORE else FAIL
                        where = _dorado_path(run_info, reads_format, verdict, barcode)
                    else:
                        where = Path("calls")
                    outputs.add(where, read, run_info, header, barcode)
                    count += 1
            say(f"simulated basecaller: {raw.name}: {count} reads")
            if layout is Layout.PASS_FAIL:
                outputs.finish(say)
        outputs.finish(say)
    except SimulatedCrash:
        raise  # a crash closes nothing: the hidden files stay as they are
    except BaseException:
        outputs.abandon()
        raise
    if cut and outputs.written:
        last = outputs.written[-1].path
        _cut_short(last, reads_format)
        say(f"simulated basecaller: cut {last.relative_to(output_dir)} short, as a crash would")
    return outputs.written


def _unreadable_files(
    raw_files: list[Path], seed: int, unreadable_fraction: float, skip_unreadable: bool
) -> dict[Path, str]:
    """The raw files the basecaller skips, each with the error pod5 gives for it; each is named
    on stderr as Dorado's first look at its input names it (``Failed to open file``)."""
    unreadable: dict[Path, str] = {}
    for raw in raw_files:
        if file_unreadable(raw_stem(raw.name), seed, unreadable_fraction):
            unreadable[raw] = _POD5_BAD_SIGNATURE
        elif skip_unreadable:
            try:
                pod5.Reader(raw).close()
            except (OSError, RuntimeError, ValueError) as exc:
                unreadable[raw] = str(exc)
    for raw, error in unreadable.items():
        _dorado_error(f"Failed to open file {raw}: {error}")
    return unreadable


def _dorado_error(message: str) -> None:
    """Write an error on stderr as Dorado logs it (spdlog: local time to the millisecond)."""
    now = datetime.datetime.now()
    print(
        f"[{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d}] [error] {message}",
        file=sys.stderr,
        flush=True,
    )


def _cut_short(path: Path, reads_format: ReadsFormat) -> None:
    """Leave ``path`` as a basecaller dying mid-write leaves it (dorado issue #262): a BAM file
    without its BGZF end-of-file block, a FASTQ file ending after its last record's '+' line."""
    if reads_format is ReadsFormat.BAM:
        keep = path.stat().st_size - _BGZF_EOF_SIZE
    else:
        data = path.read_bytes()
        keep = data.rindex(b"\n", 0, len(data) - 1) + 1
    os.truncate(path, keep)


def _file_fails(stem: str, fail_fraction: float, seed: int) -> bool:
    return random.Random(f"fail:{seed}:{stem}").random() < fail_fraction


def _pass_fail_path(verdict: str, barcode: str | None, stem: str) -> Path:
    return Path(verdict, *([barcode] if barcode else []), stem)


def _dorado_path(
    run_info: pod5.RunInfo, reads_format: ReadsFormat, verdict: str, barcode: str | None
) -> Path:
    """Where Dorado's --output-dir puts a read (its NestedFileStructure), without the suffix:
    <experiment>/<sample>/<YYYYMMDD_HHMM>_<position>_<flow cell>_<protocol run id[:8]>/
    <bam|fastq>_<pass|fail>/[<barcode>/]<flow cell>_<pass|fail>_[<barcode>_]<ids>_0."""
    flow_cell = run_info.flow_cell_id
    protocol_run = run_info.protocol_run_id[:8]
    run_folder = (
        f"{run_info.protocol_start_time:%Y%m%d_%H%M}_{run_info.sequencer_position}_"
        f"{flow_cell}_{protocol_run}"
    )
    label = f"{barcode}_" if barcode else ""
    name = f"{flow_cell}_{verdict}_{label}{protocol_run}_{run_info.acquisition_id[:8]}_0"
    return Path(
        run_info.experiment_name,
        run_info.sample_id,
        run_folder,
        f"{reads_format.value}_{verdict}",
        *([barcode] if barcode else []),
        name,
    )


def _simulated_reads(
    raw: Path, seconds_per_read: float
) -> Iterator[tuple[SimulatedRead, int, pod5.RunInfo, str]]:
    """Each read of ``raw`` as the simulator calls it, taking ``seconds_per_read`` each, with
    its signal's length, its run and the rest of a FASTQ header line."""
    try:
        with pod5.Reader(raw) as reader:
            for record in reader.reads():
                time.sleep(seconds_per_read)
                run_info = record.run_info
                header = (
                    f"runid={run_info.acquisition_id} read={record.read_number} "
                    f"ch={record.pore.channel} simulator=bcmanager"
                )
                samples = record.num_samples
                yield SimulatedRead.of(str(record.read_id), samples), samples, run_info, header
    except (OSError, RuntimeError, ValueError) as exc:
        raise SimulatorError(f"cannot read POD5 file {raw}: {exc}") from exc


class _Outputs:
    """The reads files being written, each under a hidden name until ``finish`` renames it."""

    def __init__(self, output_dir: Path, reads_format: ReadsFormat, model: str) -> None:
        self._output_dir = output_dir
        self._format = reads_format
        self._model = model
        self._open: dict[Path, _ReadsWriter] = {}
        self.written: list[BasecalledFile] = []

    def add(
        self,
        where: Path,
        read: SimulatedRead,
        run_info: pod5.RunInfo,
        header: str,
        barcode: str | None,
    ) -> None:
        writer = self._open.get(where)
        if writer is None:
            target = self._output_dir / where.with_name(f"{where.name}.{self._format.value}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if self._format is ReadsFormat.BAM:
                writer = _BamWriter(target, run_info, self._model)
            else:
                writer = _FastqWriter(target)
            self._open[where] = writer
        writer.add(read, header, barcode)

    def finish(self, say: Progress) -> None:
        """Rename every file written so far into place."""
        for writer in self._open.values():
            writer.close()
            os.replace(writer.partial, writer.target)
            self.written.append(BasecalledFile(writer.target, writer.reads))
            shown = writer.target.relative_to(self._output_dir)
            say(f"simulated basecaller: wrote {shown} ({writer.reads} reads)")
        self._open.clear()

    def abandon(self) -> None:
        """Close what is still open (after an error); its hidden files stay behind."""
        for writer in self._open.values():
            writer.close()
        self._open.clear()


class _ReadsWriter(ABC):
    """One reads file, written under a hidden name beside its target."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.partial = target.with_name(f".{target.name}{_PARTIAL_SUFFIX}")
        self.reads = 0

    @abstractmethod
    def add(self, read: SimulatedRead, header: str, barcode: str | None) -> None:
        """Append one read's record."""

    @abstractmethod
    def close(self) -> None:
        """Flush and close the hidden file."""


class _FastqWriter(_ReadsWriter):
    """FASTQ with the simulator's own header words. A piece of a split read carries no parent
    id: Dorado's FASTQ headers hold a fixed few SAM tags (RG, st, DS, qs, ch, ...), never
    ``pi``, so its pieces are known only by their ids (``split_children``)."""

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        self._file = self.partial.open("w", encoding="ascii")

    def add(self, read: SimulatedRead, header: str, barcode: str | None) -> None:
        tag = f" barcode={barcode}" if barcode else ""
        self._file.write(read.fastq(header + tag))
        self.reads += 1

    def close(self) -> None:
        self._file.close()


class _BamWriter(_ReadsWriter):
    """Unaligned BAM as Dorado writes it: an @PG line for the basecaller and an @RG line
    whose description names the model (``basecall_model=``); each record carries its read
    group, its mean Q-score (``qs``) and its barcode (``BC``) when it has one, and a piece of
    a split read its parent's id (``pi``) and where it starts in its parent's signal (``sp``)."""

    def __init__(self, target: Path, run_info: pod5.RunInfo, model: str) -> None:
        super().__init__(target)
        try:
            import pysam
        except ImportError as exc:
            raise SimulatorError("writing BAM needs pysam: pip install 'bcmanager[agent]'") from exc
        self._pysam = pysam
        self._group = f"{run_info.acquisition_id}_{model}"
        header = {
            "HD": {"VN": "1.6", "SO": "unknown"},
            "PG": [
                {
                    "ID": "basecaller",
                    "PN": "bcmanager-simulate",
                    "VN": __version__,
                    "CL": f"bcmanager simulate basecaller --model {model}",
                }
            ],
            "RG": [
                {
                    "ID": self._group,
                    "PU": run_info.flow_cell_id,
                    "PL": "ONT",
                    "DS": f"basecall_model={model} runid={run_info.acquisition_id}",
                    "LB": run_info.sample_id,
                    "SM": run_info.sample_id,
                }
            ],
        }
        self._file = pysam.AlignmentFile(str(self.partial), "wb", header=header)

    def add(self, read: SimulatedRead, header: str, barcode: str | None) -> None:
        record = self._pysam.AlignedSegment(self._file.header)
        record.query_name = read.read_id
        record.flag = 4  # unmapped
        record.query_sequence = read.bases
        record.query_qualities = array.array("B", read.qualities)
        tags: list[tuple[str, object, str]] = [
            ("RG", self._group, "Z"),
            ("qs", read.mean_qscore, "f"),
        ]
        if barcode:
            tags.append(("BC", barcode, "Z"))
        if read.parent_id:
            tags += [("pi", read.parent_id, "Z"), ("sp", read.split_point, "i")]
        record.set_tags(tags)
        self._file.write(record)
        self.reads += 1

    def close(self) -> None:
        self._file.close()


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="a simulated sequencer and basecaller writing real POD5 and FASTQ files",
        description="Simulators for demos and tests; neither touches a flow cell or a GPU.",
    )
    simulators = parser.add_subparsers(dest="simulator", required=True, metavar="SIMULATOR")
    _add_sequencer_command(simulators)
    _add_basecaller_command(simulators)


def _add_sequencer_command(simulators: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = simulators.add_parser(
        "sequencer",
        help="write POD5 files into a folder over time, as MinKNOW does",
        description="SIMULATOR, not MinKNOW: writes real POD5 files into OUTDIR one by one, each "
        "in place over --write-seconds (half-written under its final name meanwhile), then a "
        "final_summary_*.txt when sequencing stops.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("outdir", type=Path, metavar="OUTDIR", help="the run's POD5 folder")
    parser.add_argument("--files", type=_positive_int, default=10, metavar="N", help="files")
    parser.add_argument(
        "--reads-per-file", type=_positive_int, default=20, metavar="R", help="reads per file"
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="pause between one file's end and the next one's start",
    )
    parser.add_argument(
        "--write-seconds",
        type=_seconds,
        default=2.0,
        metavar="W",
        help="time each file spends half-written",
    )
    parser.add_argument(
        "--samples-per-read",
        type=_positive_int,
        default=DEFAULT_SAMPLES_PER_READ,
        metavar="SAMPLES",
        help="signal length of each read",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="names the run and its read ids"
    )
    parser.add_argument(
        "--final-summary",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write final_summary_*.txt at the end, as MinKNOW does when sequencing stops",
    )
    parser.set_defaults(func=_sequencer_main)


def _add_basecaller_command(
    simulators: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = simulators.add_parser(
        "basecaller",
        help="stand in for Dorado on one job folder",
        description="SIMULATOR, not Dorado: writes one made-up FASTQ or BAM record per read of "
        "each POD5 file in INPUT into OUTPUT (by default OUTPUT/pass/<stem>.fastq, or fail/), "
        "each file renamed into place once complete. Read ids are the POD5 read ids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("input_dir", type=Path, metavar="INPUT", help="job folder of POD5 links")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT", help="job output folder")
    parser.add_argument(
        "--seconds-per-read",
        type=_seconds,
        default=DEFAULT_SECONDS_PER_READ,
        metavar="X",
        help="time spent on each read",
    )
    parser.add_argument(
        "--fail-fraction",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="share of files whose reads go to fail/ (pass-fail layout)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="chooses the files that fail or cannot be opened and the reads that are split",
    )
    parser.add_argument(
        "--format",
        dest="reads_format",
        type=ReadsFormat,
        choices=[value.value for value in ReadsFormat],
        default=ReadsFormat.FASTQ.value,
        help="FASTQ, or unaligned BAM as Dorado writes it by default (needs pysam)",
    )
    parser.add_argument(
        "--layout",
        type=Layout,
        choices=[value.value for value in Layout],
        default=Layout.PASS_FAIL.value,
        help="pass-fail: pass/ or fail/ <stem>.<format> per raw file; dorado: Dorado's "
        f"--output-dir tree, pass or fail by mean Q-score (below {MIN_QSCORE}: fail); flat: one "
        "calls.<format> at the top, as a wrapper saving Dorado's output would write",
    )
    parser.add_argument(
        "--barcodes",
        type=_count,
        default=0,
        metavar="N",
        help="spread reads over barcode01..N folders and unclassified (by read id); 0: none",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model a BAM's header names")
    losses = parser.add_argument_group(
        "Dorado's ways of losing or changing reads",
        "Each reproduces what Dorado does, for testing what receives its output; choices "
        "follow --seed and the file or read id.",
    )
    losses.add_argument(
        "--unreadable-fraction",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="share of POD5 files treated as unopenable: as Dorado (1.1 and later) does with a "
        "corrupt file, each is named on stderr (\"[error] POD5 Failed to open file - '<error>' "
        "@ '<file>'.\") and skipped, no read of it written, exit code 0; with every file "
        'skipped, "No reads found in path" and exit code 1, as Dorado',
    )
    losses.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="skip a POD5 file that really cannot be opened the same way, as Dorado does, "
        "instead of failing",
    )
    losses.add_argument(
        "--split-fraction",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="share of reads split as Dorado's read splitting splits concatemers: 2 or 3 "
        "records with new ids derived from the parent's id as Dorado derives them, holding its "
        "bases in order; in BAM each has pi:Z:<parent id> and sp:i:<start in its signal> (in "
        "FASTQ, as in Dorado's, the parent is not named)",
    )
    losses.add_argument(
        "--cut",
        action="store_true",
        help="leave the last reads file cut short, as a basecaller crashing mid-write does "
        "(dorado issue #262), and still exit 0: a FASTQ file ends after its last record's '+' "
        "line, a BAM file lacks its BGZF end-of-file block",
    )
    losses.add_argument(
        "--crash-after",
        type=_non_negative_int,
        metavar="N",
        help=f"die after N reads, mid-batch, with exit code {CRASH_EXIT_CODE} (as SIGABRT): "
        "files completed so far stay, the rest stay hidden partial files",
    )
    parser.set_defaults(func=_basecaller_main)


def _sequencer_main(args: argparse.Namespace) -> int:
    return _exit_code(
        "sequencer",
        lambda: asyncio.run(
            run_sequencer(
                args.outdir,
                files=args.files,
                reads_per_file=args.reads_per_file,
                interval=args.interval,
                write_seconds=args.write_seconds,
                seed=args.seed,
                samples_per_read=args.samples_per_read,
                final_summary=args.final_summary,
                progress=_print_progress,
            )
        ),
    )


def _basecaller_main(args: argparse.Namespace) -> int:
    try:
        return _exit_code(
            "basecaller",
            lambda: basecall(
                args.input_dir,
                args.output_dir,
                seconds_per_read=args.seconds_per_read,
                fail_fraction=args.fail_fraction,
                seed=args.seed,
                reads_format=args.reads_format,
                layout=args.layout,
                barcodes=args.barcodes,
                model=args.model,
                unreadable_fraction=args.unreadable_fraction,
                skip_unreadable=args.skip_unreadable,
                split_fraction=args.split_fraction,
                cut=args.cut,
                crash_after=args.crash_after,
                progress=_print_progress,
            ),
        )
    except SimulatedCrash as crash:
        print(f"bcmanager simulate basecaller: {crash}", file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT_CODE)  # at once, as a crash: no clean-up, no buffers flushed


def _exit_code(simulator: str, run: Callable[[], object]) -> int:
    try:
        run()
    except SimulatorError as exc:
        print(f"bcmanager simulate {simulator}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_progress(line: str) -> None:
    print(line, flush=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 99:
        raise argparse.ArgumentTypeError(f"must be between 0 and 99, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value
