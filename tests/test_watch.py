"""New raw files while the manager runs: seen within a second through watchfiles, within the
rescan interval without events, and never before they are complete (docs/design.md, 3 and 8)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx

from bcmanager.core.folders import Recovered, RunFolders
from bcmanager.core.manager import Manager
from bcmanager.core.scan import POD5_SIGNATURE, InputListing
from bcmanager.paths import RunPaths
from bcmanager.sim.sequencer import write_pod5
from conftest import Run, serving


async def offered_within(client: httpx.AsyncClient, seconds: float) -> tuple[list[str], float]:
    """Ask for work until some comes or ``seconds`` pass; the batch and the time it took."""
    start = time.monotonic()
    while True:
        reply = await client.get("/assignwork", params={"engineid": "gpu", "batchsize": 10})
        batch: list[str] = reply.json()["batch"]
        elapsed = time.monotonic() - start
        if batch or elapsed > seconds:
            return batch, elapsed
        await asyncio.sleep(0.02)


def finished_file(tmp_path: Path, name: str) -> Path:
    source = tmp_path / "elsewhere" / name
    source.parent.mkdir(exist_ok=True)
    write_pod5(source, 3)
    return source


async def test_copied_file_is_offered_within_a_second(run: Run, tmp_path: Path) -> None:
    source = finished_file(tmp_path, "late.pod5")
    settings = run.settings(rescan_interval=3600)
    async with serving(Manager(settings)) as client:
        assert (await offered_within(client, 0))[0] == []
        shutil.copy(source, run.input_dir / "late.pod5")
        batch, elapsed = await offered_within(client, 5)
    assert batch == ["late.pod5"]
    assert elapsed < 1.0


class ArrivalDuringRecovery(RunFolders):
    """Recovery that a sequencer overtakes: a file lands after INPUT_DIR was listed and before
    the watcher is up, so neither the listing nor an event can report it."""

    def __init__(self, run: Run, source: Path) -> None:
        super().__init__(RunPaths(run.input_dir.resolve(), run.output_dir.resolve()))
        self.source = source
        self.target = run.input_dir / source.name

    def recover(
        self, others: frozenset[str] = frozenset(), listing: InputListing | None = None
    ) -> Recovered:
        found = super().recover(others, listing)
        shutil.copy(self.source, self.target)
        return found


async def test_file_written_during_start_up_is_found_by_the_end_of_it(
    run: Run, tmp_path: Path
) -> None:
    run.add("old.pod5")
    folders = ArrivalDuringRecovery(run, finished_file(tmp_path, "during.pod5"))
    manager = Manager(run.settings(rescan_interval=3600), folders)
    async with serving(manager) as client:  # once ready: the first scan is over
        batch, _ = await offered_within(client, 0)
    assert sorted(batch) == ["during.pod5", "old.pod5"]


class FolderGoneAfterRecovery(RunFolders):
    """Recovery after which INPUT_DIR is moved away, as an unmounted share would be."""

    def __init__(self, run: Run) -> None:
        super().__init__(RunPaths(run.input_dir.resolve(), run.output_dir.resolve()))
        self.away = run.input_dir.with_name("away")

    def recover(
        self, others: frozenset[str] = frozenset(), listing: InputListing | None = None
    ) -> Recovered:
        found = super().recover(others, listing)
        self.paths.input_dir.rename(self.away)
        return found


async def test_input_dir_gone_during_the_first_scan_is_reported_and_survived(
    run: Run, tmp_path: Path
) -> None:
    folders = FolderGoneAfterRecovery(run)
    manager = Manager(run.settings(rescan_interval=0.2, force_polling=True), folders)
    async with serving(manager) as client:  # ready: the first scan ended despite the error
        reply = await client.get("/heartbeat")
        assert reply.status_code == 503
        assert any("INPUT_DIR" in problem for problem in reply.json()["problems"])
        folders.away.rename(run.input_dir)
        shutil.copy(finished_file(tmp_path, "back.pod5"), run.input_dir / "back.pod5")
        batch, _ = await offered_within(client, 5)
        assert (await client.get("/heartbeat")).status_code == 200
    assert batch == ["back.pod5"]


async def test_polling_mode_finds_files_by_rescan(run: Run, tmp_path: Path) -> None:
    source = finished_file(tmp_path, "late.pod5")
    settings = run.settings(force_polling=True, rescan_interval=0.5)
    async with serving(Manager(settings)) as client:
        assert (await offered_within(client, 0))[0] == []
        shutil.copy(source, run.input_dir / "late.pod5")
        batch, elapsed = await offered_within(client, 5)
    assert batch == ["late.pod5"]
    assert elapsed < 0.5 + 1.0


async def test_file_being_written_waits_until_its_end_signature(run: Run, tmp_path: Path) -> None:
    content = finished_file(tmp_path, "growing.pod5").read_bytes()
    assert content.endswith(POD5_SIGNATURE)
    settings = run.settings(rescan_interval=0.3)
    async with serving(Manager(settings)) as client:
        with (run.input_dir / "growing.pod5").open("wb") as sink:
            # Written in place, slowly, as a sequencer does: events and rescans both see it.
            body, step = content[:-1], len(content) // 4 + 1
            for start in range(0, len(body), step):
                sink.write(body[start : start + step])
                sink.flush()
                assert (await offered_within(client, 0.4))[0] == []
            status = (await client.get("/status")).json()
            assert status["files"]["waiting"] == 1
            sink.write(content[-1:])  # the last byte completes the end signature
        batch, elapsed = await offered_within(client, 5)
    assert batch == ["growing.pod5"]
    assert elapsed < 1.0


async def test_symlinked_and_hidden_raw_files_are_never_offered(run: Run, tmp_path: Path) -> None:
    source = finished_file(tmp_path, "outside.pod5")
    (run.input_dir / "linked.pod5").symlink_to(source)
    shutil.copy(source, run.input_dir / ".hidden.pod5")
    async with serving(Manager(run.settings(rescan_interval=0.2))) as client:
        (run.input_dir / "later-link.pod5").symlink_to(source)
        batch, _ = await offered_within(client, 0.8)
        status = (await client.get("/status")).json()
    assert batch == []
    assert sum(status["files"].values()) == 0
