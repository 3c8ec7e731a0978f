"""No request does work proportional to the size of the run, and full scans leave the event
loop free (docs/design.md, invariant 8). Speed itself is measured in bench/; here the *amount* of
work is counted: Python lines executed and disk calls made, which must not grow with the run."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import bcmanager
from bcmanager.core import scan
from bcmanager.core.folders import DiskOps, RunFolders
from bcmanager.core.manager import Manager
from bcmanager.models import JobState
from bcmanager.paths import RunPaths
from conftest import Run, serving

PACKAGE = str(Path(bcmanager.__file__).parent)


class CountingOps(DiskOps):
    def __init__(self) -> None:
        self.calls = 0

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in {"mkdir", "symlink", "rename", "unlink", "rmdir", "rmtree", "copy", "fsync"}:
            self.calls += 1
        return attribute


def lines_executed(work: Callable[[], object]) -> int:
    """How many lines of bcmanager's own code ``work`` runs."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        work()
    finally:
        sys.settrace(None)
    return count


def cost_of_a_job_cycle(run: Run, pending: int, done: int) -> tuple[int, int]:
    ops = CountingOps()
    paths = RunPaths(run.input_dir, run.output_dir)
    manager = Manager(run.settings(), RunFolders(paths, ops))
    manager.folders.prepare()
    for index in range(done):
        manager.state.restore(f"done_{index}.pod5", bcmanager.core.jobs.FileState.DONE)
    for index in range(pending):
        manager.state.observe(f"raw_{index}.pod5", complete=True)
    for index in range(20):  # the files leased are looked at: those must be there
        (run.input_dir / f"raw_{index}.pod5").touch()
    manager.assign("warmup", 10)  # first-call costs (imports, caches) are not the run's size
    ops.calls = 0

    def cycle() -> None:
        batch = manager.assign("gpu1", 10)
        manager.keepalive(batch.jobid, JobState.PROCESSING)
        run.basecall(batch.job_output_dir, batch.batch)  # the test's code: not counted
        manager.complete(batch.jobid, JobState.DONE)

    return lines_executed(cycle), ops.calls


@pytest.mark.parametrize("size", [1_000, 100_000])
def test_a_job_cycle_costs_the_same_in_a_small_and_a_large_run(tmp_path: Path, size: int) -> None:
    small = Run(tmp_path / "small_in", tmp_path / "small_out")
    large = Run(tmp_path / "large_in", tmp_path / "large_out")
    for each in (small, large):
        each.input_dir.mkdir()
    small_cost = cost_of_a_job_cycle(small, pending=100, done=100)
    large_cost = cost_of_a_job_cycle(large, pending=size, done=size)
    assert large_cost == small_cost


async def test_rescans_and_probes_run_off_the_event_loop(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.add_many(3)
    threads: dict[str, set[bool]] = {"raw_names": set(), "probe_many": set()}
    serving_now = threading.Event()  # start-up reads the run before the server listens

    def recorded(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if serving_now.is_set():
                threads[name].add(threading.current_thread() is threading.main_thread())
            return original(*args)

        return call

    for name in threads:
        monkeypatch.setattr(scan, name, recorded(name, getattr(scan, name)))
    async with serving(Manager(run.settings(rescan_interval=0.1))) as client:
        serving_now.set()
        (run.input_dir / "new.pod5").write_bytes(scan.POD5_SIGNATURE * 2)
        for _ in range(100):
            if (await client.get("/status")).json()["files"]["pending"] == 4:
                break
            await asyncio.sleep(0.02)
    assert threads == {"raw_names": {False}, "probe_many": {False}}
