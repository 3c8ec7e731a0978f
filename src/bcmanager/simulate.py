"""Simulated sequencer and basecaller, so the whole flow runs without a flow cell or a GPU.

Everything here writes and reads real POD5 files with the ``pod5`` package, because the
manager's completeness rule (docs/design.md, invariant 3) and the agents' basecaller command
must meet the same bytes a sequencer writes.

``pod5.Writer`` creates its destination at once, empty, with hidden scratch files beside it, and
fills it only on ``close()``. So files are built in a private scratch folder and their bytes are
then placed where they belong: atomically for test fixtures, in timed chunks for the sequencer,
which thereby leaves a half-written file under its final name for a while, as MinKNOW does.

The sequencer is a coroutine and the basecaller a plain function, so the demo can run them
in-process; ``bcmanager simulate`` is a thin command-line layer over both.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pod5  # type: ignore[import-untyped]

from bcmanager.paths import FAIL, PASS, is_raw_name, raw_stem

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
_QUALITY_CHARS = "".join(chr(33 + phred) for phred in range(8, 41))

Progress = Callable[[str], None]


class SimulatorError(Exception):
    """A simulated sequencer or basecaller cannot go on; the message says why."""


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


@dataclass(frozen=True, slots=True)
class BasecalledFile:
    """One raw file's result: where its FASTQ went and how many records it holds."""

    raw_name: str
    fastq: Path
    reads: int


def basecall(
    input_dir: Path,
    output_dir: Path,
    *,
    seconds_per_read: float = DEFAULT_SECONDS_PER_READ,
    fail_fraction: float = 0.0,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[BasecalledFile]:
    """Stand in for Dorado on one job: a FASTQ record per read of every POD5 file in input_dir.

    Each file's FASTQ goes to output_dir/pass/<stem>.fastq, or to fail/ for a share of files
    near ``fail_fraction`` chosen by ``seed`` and the file's name. Each FASTQ appears in one
    rename, so a basecaller killed at any instant leaves no partial file under a final name.
    """
    say = progress or _ignore
    for folder in (input_dir, output_dir):
        if not folder.is_dir():
            raise SimulatorError(f"{folder} is not a folder")
    raw_files = sorted(path for path in input_dir.iterdir() if is_raw_name(path.name))
    say(f"simulated basecaller (not Dorado): {len(raw_files)} POD5 files in {input_dir}")
    results: list[BasecalledFile] = []
    for raw in raw_files:
        records = _fastq_records(raw, seconds_per_read)
        stem = raw_stem(raw.name)
        verdict = FAIL if _file_fails(stem, fail_fraction, seed) else PASS
        target = output_dir / verdict / f"{stem}.fastq"
        target.parent.mkdir(exist_ok=True)
        _write_atomically(target, "".join(records).encode())
        results.append(BasecalledFile(raw.name, target, len(records)))
        say(f"simulated basecaller: {raw.name}: {len(records)} reads -> {verdict}/{target.name}")
    return results


def _file_fails(stem: str, fail_fraction: float, seed: int) -> bool:
    return random.Random(f"fail:{seed}:{stem}").random() < fail_fraction


def _fastq_records(raw: Path, seconds_per_read: float) -> list[str]:
    """Made-up FASTQ records for the reads of ``raw``, taking ``seconds_per_read`` each."""
    records: list[str] = []
    try:
        with pod5.Reader(raw) as reader:
            for read in reader.reads():
                time.sleep(seconds_per_read)
                records.append(
                    _fastq_record(
                        str(read.read_id),
                        read.num_samples,
                        read.run_info.acquisition_id,
                        read.pore.channel,
                        read.read_number,
                    )
                )
    except (OSError, RuntimeError, ValueError) as exc:
        raise SimulatorError(f"cannot read POD5 file {raw}: {exc}") from exc
    return records


def _fastq_record(read_id: str, samples: int, run_id: str, channel: int, number: int) -> str:
    """Bases and qualities follow from the read id; their count from the signal's length."""
    rng = random.Random(read_id)
    length = max(1, samples // SAMPLES_PER_BASE)
    bases = "".join(rng.choices("ACGT", k=length))
    qualities = "".join(rng.choices(_QUALITY_CHARS, k=length))
    header = f"@{read_id} runid={run_id} read={number} ch={channel} simulator=bcmanager"
    return f"{header}\n{bases}\n+\n{qualities}\n"


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
        description="SIMULATOR, not Dorado: writes one made-up FASTQ record per read of each POD5 "
        "file in INPUT into OUTPUT/pass/<stem>.fastq (or fail/), each file in one atomic rename.",
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
        help="share of files whose FASTQ goes to fail/",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="chooses which files fail")
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
    return _exit_code(
        "basecaller",
        lambda: basecall(
            args.input_dir,
            args.output_dir,
            seconds_per_read=args.seconds_per_read,
            fail_fraction=args.fail_fraction,
            seed=args.seed,
            progress=_print_progress,
        ),
    )


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
