"""Figure 6: the end of a job with a huge output does not hold the event loop.

An engine decides how many files its output folder holds; a DONE moves each reads file and a
STOPPED removes them all. A manager (in this process, on real folders) ends jobs whose output
holds 30,000 files (3,000 in the quick set) while a ticker coroutine wakes every millisecond
and records the longest gap between two wake-ups: the longest time any other request would have
waited. bcmanager carries the job's end out in a worker thread (``complete_async``); the
baseline is the same work done on the event loop (``complete``, as before it moved off), in the
same run, on the same folders. Target: the longest gap under 20 ms with bcmanager. The first
row is the floor: the longest gap of the ticker alone, over one second, on this machine now
(other processes and the scheduler set it; a loaded machine shows tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _common import Row, ms, progress, run_alone, write_files

from bcmanager.core.manager import Manager
from bcmanager.models import JobState
from bcmanager.settings import Settings

QUICK_FILES = 3_000
FULL_FILES = 30_000
TARGET_SECONDS = 0.020
RAW = b"\x8bPOD\r\n\x1a\n" + bytes(8) + b"\x8bPOD\r\n\x1a\n"


async def longest_gap(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(longest gap between two ticks of a 1 ms ticker, duration) while ``work`` runs."""
    gaps = [0.0]
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    began = time.perf_counter()
    await work()
    took = time.perf_counter() - began
    done.set()
    await ticking
    return max(gaps), took


def fill(output: Path, files: int) -> None:
    """An output folder as Dorado with barcodes leaves one: reads in barcode folders."""
    per_folder = 1_000
    for start in range(0, files, per_folder):
        folder = output / "fastq_pass" / f"barcode{start // per_folder:02d}"
        folder.mkdir(parents=True)
        names = [f"reads_{index}.fastq" for index in range(start, min(files, start + per_folder))]
        write_files(folder, names, b"@r\nACGT\n+\n####\n")


async def one_end(root: Path, files: int, outcome: JobState, off_loop: bool) -> float:
    """The longest gap while one job with ``files`` output files ends as ``outcome``."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "input").mkdir(parents=True)
    (root / "input" / "a.pod5").write_bytes(RAW)
    # The raw files hold no reads to account: the account's own cost is figure 9.
    settings = Settings(
        input_dir=root / "input",
        output_dir=root / "output",
        force_polling=True,
        account_reads=False,
    )
    manager = Manager(settings)
    manager.folders.prepare()
    manager.state.observe("a.pod5", complete=True)
    batch = manager.assign("gpu1", 1)
    fill(root / "output" / batch.job_output_dir, files)

    async def end() -> None:
        if off_loop:
            await manager.complete_async(batch.jobid, outcome)
        else:
            manager.complete(batch.jobid, outcome)

    gap, _ = await longest_gap(end)
    assert manager.state.job(batch.jobid).state is outcome
    return gap


def measure(full: bool, workdir: Path) -> list[Row]:
    files = FULL_FILES if full else QUICK_FILES

    async def idle() -> None:
        await asyncio.sleep(1.0)

    floor, _ = asyncio.run(longest_gap(idle))
    rows = [Row("longest loop stall, nothing to do (floor)", ms(floor), "", None, "", None)]
    with tempfile.TemporaryDirectory(dir=workdir, prefix="bcm-bench-lag-") as tmp:
        root = Path(tmp)
        for outcome in (JobState.DONE, JobState.STOPPED):
            progress(f"loop lag: {outcome.value} of a job with {files:,} output files")
            ours = asyncio.run(one_end(root / "ours", files, outcome, off_loop=True))
            theirs = asyncio.run(one_end(root / "theirs", files, outcome, off_loop=False))
            rows.append(
                Row(
                    f"longest loop stall, {outcome.value} of {files:,} output files",
                    ms(ours),
                    ms(theirs),
                    ours / theirs,
                    f"< {TARGET_SECONDS * 1000:.0f} ms",
                    ours < TARGET_SECONDS,
                )
            )
    return rows


if __name__ == "__main__":
    run_alone(__doc__, measure)
