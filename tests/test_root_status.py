"""/status of a root of many runs never holds the event loop (issue 21, point 8).

A page polls the snapshot of every run; at 1,000 runs it held the loop 200 ms a poll, and the
lines it kept alive set off the collector's full collections. Speed is measured in bench/
(figure 10, ``root_status.py``); here the *amount* of work between two turns of the loop is
counted, in lines of bcmanager run, and must not grow with the number of runs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from test_scaling import PACKAGE

from bcmanager.core.scan import POD5_SIGNATURE
from bcmanager.facility.facility import Facility
from bcmanager.facility.views import SLICE
from bcmanager.http.status import line_json, with_runs
from bcmanager.models import RunEntry
from bcmanager.settings import Settings
from conftest import RUN_NAME, Clock

RAW = POD5_SIGNATURE + bytes(8) + POD5_SIGNATURE


async def served_root(tmp_path: Path, runs: int) -> Facility:
    """A facility that read a root of ``runs`` runs of two raw files each back from disk, then
    stopped: no watcher, rescan or reaper runs beside what the test counts. Its clock stands
    still."""
    for n in range(runs):
        raw = tmp_path / "root" / "exp" / f"s{n:03d}" / RUN_NAME.format(flow_cell=f"FA{n:05d}")
        raw = raw / "pod5"
        raw.mkdir(parents=True)
        for index in range(2):
            (raw / f"r{n}_{index}.pod5").write_bytes(RAW)
    settings = Settings(
        input_dir=tmp_path / "root",
        output_dir=tmp_path / "out",
        account_reads=False,
        rescan_interval=3600,
    )
    facility = Facility(settings, clock=Clock())
    await facility.start()
    for _ in range(500):
        if facility.ready:
            break
        await asyncio.sleep(0.01)
    await facility.stop()
    assert facility.ready and len(facility.registry.runs) == runs
    return facility


async def largest_turn(facility: Facility) -> tuple[int, int]:
    """The most lines of bcmanager run without a turn of the event loop in between, while
    /status makes the snapshot of every run; and the turns it gave."""
    counts = [0]
    serving = True

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        if event == "line":
            counts[-1] += 1
        return tracer

    async def other_request() -> None:
        while serving:
            counts.append(0)
            await asyncio.sleep(0)

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    sys.settrace(tracer)
    try:
        with_runs(*await facility.status_async(None, line_json))
    finally:
        sys.settrace(None)
    serving = False
    await other
    return max(counts), len(counts) - 2  # its own first turn and the one that ends it


async def test_the_snapshot_of_a_root_does_the_same_work_between_turns_of_the_loop_at_any_size(
    tmp_path: Path,
) -> None:
    small = await served_root(tmp_path / "small", 2 * SLICE)
    large = await served_root(tmp_path / "large", 6 * SLICE)
    await largest_turn(small)  # first-call costs (imports, caches) are not the root's size
    small_turn, small_turns = await largest_turn(small)
    large_turn, large_turns = await largest_turn(large)
    # Three times the runs: the same turns, but for the few lines by which one run's line
    # differs from another's (a snapshot made in one go would be three times the work).
    assert large_turn < 1.05 * small_turn
    assert large_turns == 6 - 1 + 6 - 1  # a turn after each slice of runs, then of raw folders
    assert small_turns == 2 - 1 + 2 - 1


async def test_each_runs_line_is_let_go_once_serialised(tmp_path: Path) -> None:
    """Lines kept to the end outlive the collector's young generations (they did: 35 to 55 ms
    full collections at 1,000 runs); each must be garbage as soon as it is in JSON."""
    facility = await served_root(tmp_path, 3 * SLICE)

    def entries() -> int:
        """RunEntry objects alive (it has no subclass), counted in C: a Python generator over
        every object took seconds for the test's few hundred counts."""
        return list(map(type, gc.get_objects())).count(RunEntry)

    before = entries()
    alive: list[int] = []

    def line(entry: RunEntry) -> bytes:
        alive.append(entries() - before)
        return line_json(entry)

    await facility.status_async(None, line)
    assert len(alive) == 3 * SLICE and max(alive) == 1


async def test_the_snapshot_made_in_slices_is_the_snapshot_made_at_once(tmp_path: Path) -> None:
    """Same keys, same values, same bytes as FastAPI sent for the whole RunStatus, for a root
    and for one run (/status?run=)."""
    facility = await served_root(tmp_path, 2 * SLICE + 3)
    whole = facility.status()
    sliced = with_runs(*await facility.status_async(None, line_json))
    assert sliced == whole.model_dump_json().encode()
    assert json.loads(sliced)["runs"][0]["path"] == whole.runs[0].path
    path = whole.runs[-1].path
    one = with_runs(*await facility.status_async(path, line_json))
    assert one == facility.status(path).model_dump_json().encode()
