"""The simulated Dorado basecaller: one job folder of POD5 links in, reads files out, losing or
changing reads the ways Dorado does (a file it cannot open, split reads, a reads file cut short,
a crash), so that the manager is tested against them."""

from __future__ import annotations

import datetime
import random
import sys
import time
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import pod5  # type: ignore[import-untyped]

from bcmanager.paths import FAIL, PASS, is_raw_name, raw_stem
from bcmanager.sim.reads import (
    MIN_QSCORE,
    BasecalledFile,
    Outputs,
    ReadsFormat,
    SimulatedRead,
    barcode_of,
    cut_short,
)
from bcmanager.sim.sequencer import DEFAULT_SECONDS_PER_READ, Progress, SimulatorError, ignore


class SimulatedCrash(Exception):
    """The simulated basecaller dies on purpose (``crash_after``), as Dorado aborting mid-run."""


# The exit status a shell reports for a process killed by SIGABRT (128 + 6), which the
# command-line basecaller exits with when it crashes on purpose.
CRASH_EXIT_CODE = 134


class OutputLayout(str, Enum):
    """Where the simulated basecaller puts its reads files in a job's output folder."""

    PASS_FAIL = "pass-fail"  # pass/ or fail/ [<barcode>/] <raw stem>.<ext>: a file per raw file
    DORADO = "dorado"  # Dorado's --output-dir tree: <run>/bam_pass/<barcode>/<name>.bam, ...
    FLAT = "flat"  # one calls.<ext> at the top, as a wrapper saving Dorado's stdout writes


DEFAULT_MODEL = "dna_r10.4.1_e8.2_400bps_hac@v5.0.0"
# What pod5 (and so Dorado) says of a file that is not a whole POD5 file.
_POD5_BAD_SIGNATURE = "IOError: Invalid signature in file"


def file_unreadable(stem: str, seed: int, unreadable_fraction: float) -> bool:
    """Whether the simulated basecaller pretends it cannot open the raw file ``stem``: a share
    of files near ``unreadable_fraction``, chosen by ``seed`` and the stem."""
    return random.Random(f"unreadable:{seed}:{stem}").random() < unreadable_fraction


def basecall(
    input_dir: Path,
    output_dir: Path,
    *,
    seconds_per_read: float = DEFAULT_SECONDS_PER_READ,
    fail_fraction: float = 0.0,
    seed: int = 0,
    reads_format: ReadsFormat = ReadsFormat.FASTQ,
    layout: OutputLayout = OutputLayout.PASS_FAIL,
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
    say = progress or ignore
    for folder in (input_dir, output_dir):
        if not folder.is_dir():
            raise SimulatorError(f"{folder} is not a folder")
    raw_files = sorted(path for path in input_dir.iterdir() if is_raw_name(path.name))
    say(f"simulated basecaller (not Dorado): {len(raw_files)} POD5 files in {input_dir}")
    unreadable = _unreadable_files(raw_files, seed, unreadable_fraction, skip_unreadable)
    if raw_files and len(unreadable) == len(raw_files):
        _dorado_error(f"No reads found in path: {input_dir}")
        raise SimulatorError(f"no POD5 file in {input_dir} could be opened")
    outputs = Outputs(output_dir, reads_format, model)
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
                    if layout is OutputLayout.PASS_FAIL:
                        where = _pass_fail_path(FAIL if file_fails else PASS, barcode, stem)
                    elif layout is OutputLayout.DORADO:
                        verdict = PASS if read.mean_qscore >= MIN_QSCORE else FAIL
                        where = _dorado_path(run_info, reads_format, verdict, barcode)
                    else:
                        where = Path("calls")
                    outputs.add(where, read, run_info, header, barcode)
                    count += 1
            say(f"simulated basecaller: {raw.name}: {count} reads")
            if layout is OutputLayout.PASS_FAIL:
                outputs.finish(say)
        outputs.finish(say)
    except SimulatedCrash:
        raise  # a crash closes nothing: the hidden files stay as they are
    except BaseException:
        outputs.abandon()
        raise
    if cut and outputs.written:
        last = outputs.written[-1].path
        cut_short(last, reads_format)
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
