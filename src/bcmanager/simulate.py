"""Simulated sequencer and basecaller, so the whole flow runs without a flow cell or a GPU.

Everything here writes real POD5 files with the ``pod5`` package, because the manager's
completeness rule (DESIGN.md, invariant 3) and the agents' basecaller command must meet the
same bytes a sequencer writes.

``pod5.Writer`` creates its destination at once, empty, with hidden scratch files beside it, and
fills it only on ``close()``. So files are built in a private scratch folder and their bytes are
then placed where they belong: atomically for test fixtures, in timed chunks for the sequencer.
"""

from __future__ import annotations

import datetime
import os
import random
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pod5  # type: ignore[import-untyped]

POD5_SIGNATURE = b"\x8bPOD\r\n\x1a\n"
DEFAULT_SAMPLES_PER_READ = 4000
SAMPLE_RATE = 5000
FLOW_CELL_ID = "PAO12345"
SOFTWARE = "bcmanager simulator (not MinKNOW)"
_PARTIAL_SUFFIX = ".partial"
_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What ties the files of one simulated run together, derived from a seed."""

    acquisition_id: str
    protocol_run_id: str

    @classmethod
    def from_seed(cls, seed: int) -> RunIdentity:
        rng = random.Random(f"run:{seed}")
        return cls(_uuid4(rng), _uuid4(rng))


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


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
        read_id=uuid.UUID(_uuid4(rng)),
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
    partial = path.with_name(f".{path.name}{_PARTIAL_SUFFIX}")
    partial.write_bytes(data)
    os.replace(partial, path)
    return read_ids
