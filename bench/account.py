"""Figure 9: what the account of a job's reads costs.

A job of 10 raw POD5 files of 4,000 reads each (real files, written with ``pod5``; their signal
is short, as only their read ids matter here), and its output as a basecaller would write it:
each raw read as one record of ``READ_LENGTH`` bases (5 kb, a typical mean length of a simplex
run; the per-record cost weighs more the shorter the reads, so the quick set also measures
500-base reads, without a target), into FASTQ (one file per raw file) and into BAM (one file
for the job, written with pysam). Three figures for each format, medians over several repeats:

- the baseline: reading the reads files once, as any reader must (every FASTQ line; every BAM
  record's name, with pysam), with nothing done with them;
- the account (``core.account.account_job``): the raw files' read ids, every record's id and
  parent, and the verdict per file. Target: within 1.5x of the baseline;
- the event loop's longest stall while the account runs in a worker thread, as the manager
  runs it, seen by a task that sleeps 1 ms in a loop (the median over the repeats of each
  run's longest), beside the same while the read pass runs in a thread. Target: 10 ms.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pysam
from _common import Row, median, ms, progress, run_alone

from bcmanager.core.account import account_job
from bcmanager.reads.files import open_fastq
from bcmanager.sim.sequencer import write_pod5

FILES = 10
READS = 4_000
READ_LENGTH = 5_000
SHORT_READ = 500
QUICK_REPEATS = 5
FULL_REPEATS = 11
TARGET_RATIO = 1.5
TARGET_STALL = 0.010


def build_job(workdir: Path, length: int) -> tuple[Path, dict[str, Path]]:
    """The job's raw folder, and its output in each format, reads of ``length`` bases."""
    root = Path(tempfile.mkdtemp(prefix="bcm-bench-account-", dir=workdir))
    raw = root / "raw"
    raw.mkdir()
    reads = {
        f"f{index}": write_pod5(raw / f"f{index}.pod5", READS, seed=index, samples_per_read=200)
        for index in range(FILES)
    }
    bases, qualities = "ACGT" * (length // 4), "5" * (length // 4 * 4)
    fastq = root / "fastq" / "pass"
    fastq.mkdir(parents=True)
    for stem, ids in reads.items():
        with (fastq / f"{stem}.fastq").open("w") as sink:
            for read_id in ids:
                sink.write(f"@{read_id}\tqs:f:12.5\tch:i:1\n{bases}\n+\n{qualities}\n")
    bam = root / "bam"
    bam.mkdir()
    header = {"HD": {"VN": "1.6", "SO": "unknown"}, "RG": [{"ID": "run_model", "SM": "s"}]}
    phred = pysam.qualitystring_to_array(qualities)
    with pysam.AlignmentFile(str(bam / "calls.bam"), "wb", header=header) as sink:
        for ids in reads.values():
            for read_id in ids:
                record = pysam.AlignedSegment(sink.header)
                record.query_name, record.flag = read_id, 4
                record.query_sequence, record.query_qualities = bases, phred
                sink.write(record)
    return raw, {"fastq": root / "fastq", "bam": bam}


def read_once(output: Path) -> int:
    """The baseline: every record read once, nothing done with it."""
    records = 0
    for path in sorted(output.rglob("*.fastq")):
        with open_fastq(path) as stream:
            for number, _ in enumerate(stream, 1):
                records += number % 4 == 1
    for path in sorted(output.rglob("*.bam")):
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as reads:
            for record in reads.fetch(until_eof=True):
                records += bool(record.query_name)
    return records


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


async def longest_stall(work: Callable[[], object]) -> float:
    """The longest the event loop waits past a 1 ms sleep while ``work`` runs in a thread."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.to_thread(work)
    done = True
    await task
    return worst


def measure(full: bool, workdir: Path) -> list[Row]:
    repeats = FULL_REPEATS if full else QUICK_REPEATS
    rows = []
    for length in (READ_LENGTH, SHORT_READ):
        progress(f"account: {FILES} POD5 files of {READS:,} reads, their output ({length:,} b)")
        raw, outputs = build_job(workdir, length)
        try:
            rows += figures(raw, outputs, length, repeats)
        finally:
            shutil.rmtree(raw.parent, ignore_errors=True)
    return rows


def figures(raw: Path, outputs: dict[str, Path], length: int, repeats: int) -> list[Row]:
    names = sorted(path.name for path in raw.iterdir())
    rows = []
    targeted = length == READ_LENGTH
    for label, output in outputs.items():
        baseline, account, stalls, reading_stalls = [], [], [], []
        for _ in range(repeats):
            reading = partial(read_once, output)
            accounting = partial(account_job, raw, names, output)
            baseline.append(timed(reading))
            account.append(timed(accounting))
            stalls.append(asyncio.run(longest_stall(accounting)))
            reading_stalls.append(asyncio.run(longest_stall(reading)))
        assert account_job(raw, names, output).rejected() == []
        ratio = median(account) / median(baseline)
        what = f"{FILES} x {READS:,} reads of {length:,} b, {label}"
        progress(f"account, {what}: {ms(median(account))} against {ms(median(baseline))}")
        rows.append(
            Row(
                f"account of a job of {what}",
                ms(median(account)),
                f"{ms(median(baseline))} (one read pass)",
                ratio,
                f"<= {TARGET_RATIO}x" if targeted else "",
                ratio <= TARGET_RATIO if targeted else None,
            )
        )
        worst = median(stalls)
        rows.append(
            Row(
                f"event loop's longest stall during it, {label}",
                ms(worst),
                f"{ms(median(reading_stalls))} (during the read pass)",
                worst / median(reading_stalls),
                f"<= {ms(TARGET_STALL)}" if targeted else "",
                worst <= TARGET_STALL if targeted else None,
            )
        )
    return rows


if __name__ == "__main__":
    run_alone(__doc__, measure)
