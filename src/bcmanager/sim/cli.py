"""The simulators' command line (``bcmanager simulate sequencer|basecaller``): a thin layer over
``run_sequencer`` and ``basecall``, which the demo runs in-process."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from bcmanager.sim.basecaller import (
    CRASH_EXIT_CODE,
    DEFAULT_MODEL,
    OutputLayout,
    SimulatedCrash,
    basecall,
)
from bcmanager.sim.reads import MIN_QSCORE, ReadsFormat
from bcmanager.sim.sequencer import (
    DEFAULT_SAMPLES_PER_READ,
    DEFAULT_SECONDS_PER_READ,
    SimulatorError,
    run_sequencer,
)


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
    parser.set_defaults(func=run_simulate_sequencer)


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
        type=OutputLayout,
        choices=[value.value for value in OutputLayout],
        default=OutputLayout.PASS_FAIL.value,
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
    _add_loss_flags(parser)
    parser.set_defaults(func=run_simulate_basecaller)


def _add_loss_flags(parser: argparse.ArgumentParser) -> None:
    """The basecaller's flags for Dorado's ways of losing or changing reads."""
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


def run_simulate_sequencer(args: argparse.Namespace) -> int:
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


def run_simulate_basecaller(args: argparse.Namespace) -> int:
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
