"""The simulated sequencer, and the POD5 files it writes: real ones, made with the ``pod5``
package, since the manager's completeness rule (docs/design.md, invariant 3) and the agents'
basecaller command must meet the same bytes a sequencer writes.

``pod5.Writer`` creates its destination at once, empty, with hidden scratch files beside it, and
fills it only on ``close()``. So files are built in a private scratch folder and their bytes are
then placed where they belong: atomically for test fixtures, in timed chunks for the sequencer,
which thereby leaves a half-written file under its final name for a while, as MinKNOW does.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import random
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pod5  # type: ignore[import-untyped]

POD5_SIGNATURE = b"\x8bPOD\r\n\x1a\n"  # first and last 8 bytes of every complete POD5 file
SAMPLE_RATE = 5000  # samples per second, as on a PromethION R10.4.1 flow cell
SAMPLES_PER_BASE = 12  # about 400 bases per second at SAMPLE_RATE
DEFAULT_SAMPLES_PER_READ = 4000  # short reads keep files small and tests fast
DEFAULT_SECONDS_PER_READ = 0.01
WRITE_CHUNKS = 10  # the sequencer writes each file in this many steps
FLOW_CELL_ID = "PAO12345"
SOFTWARE = "bcmanager simulator (not MinKNOW)"
_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)  # fixed, so files follow the seed
PARTIAL_SUFFIX = ".partial"

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
    partial = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
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
    say = progress or ignore
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


def ignore(line: str) -> None:
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
