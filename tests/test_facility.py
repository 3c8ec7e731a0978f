"""One manager for a whole sequencer: every run under a root, each into its own output.

The runs are laid out as MinKNOW lays them out (``<root>/<experiment>/<sample>/<run>/pod5/``,
older ``pod5_pass/`` and ``pod5_fail/`` with barcode folders), written with real POD5 files. The
test keeps its own ledger of read ids by raw file and judges each run's output by it: the reads
of a run's raw files, each exactly once, in that run's output folder and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bcmanager.core import scan
from bcmanager.facility import discovery
from bcmanager.facility.discovery import Found, Layout
from bcmanager.facility.facility import Facility
from bcmanager.http.app import create_app
from bcmanager.settings import Settings
from conftest import RUN_NAME, Root

LAYOUT = Layout(re.compile(Settings.model_fields["run_folder_pattern"].default), 8)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Facility]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        facility: Facility = app.state.facility
        await until(lambda: facility.ready, 10, "the first scans")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bcm") as client:
            yield client, facility


async def until(condition: Any, timeout: float, what: str) -> float:
    """Wait for ``condition``; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def assign(client: httpx.AsyncClient, engine: str = "gpu1", size: int = 10) -> dict[str, Any]:
    reply = await client.get("/assignwork", params={"engineid": engine, "batchsize": size})
    assert reply.status_code == 200, reply.text
    batch: dict[str, Any] = reply.json()
    return batch


async def complete(client: httpx.AsyncClient, jobid: str, state: str = "DONE") -> None:
    reply = await client.get("/completed", params={"job_id": jobid, "job_state": state})
    assert reply.json() == {"ok": True}, reply.text


async def drain(client: httpx.AsyncClient, root: Root, size: int = 10) -> list[dict[str, Any]]:
    """Basecall every batch offered until none is; the batches, in order."""
    batches = []
    for _ in range(200):
        batch = await assign(client, size=size)
        if not batch["batch"]:
            return batches
        root.basecall(batch)
        await complete(client, batch["jobid"])
        batches.append(batch)
    raise AssertionError("the runs never drained")


def summary(folder: Path, files: int | None = None) -> None:
    lines = ["instrument=X1", "flow_cell_id=FAX00000"]
    if files is not None:
        lines.append(f"pod5_files_in_final_dest={files}")
    (folder / "final_summary_FAX00000_0123abcd_89abcdef.txt").write_text("\n".join(lines) + "\n")


# -- discovery ---------------------------------------------------------------------------------


def test_runs_and_raw_folders_are_found_by_minknow_names_to_any_depth(root: Root) -> None:
    new = root.run("exp1", "sample1", "FAX11111")
    root.add(new / "pod5", 1)
    old = root.run("exp1", "sample2", "FAX22222")
    root.add(old / "pod5_pass" / "barcode01", 1)
    root.add(old / "pod5_pass" / "unclassified", 1)
    root.add(old / "pod5_fail", 1)
    plain = root.input_dir / "exp2" / "a" / "b" / "raw"
    root.add(plain, 1)
    # Never raw folders: a job folder's links, a hidden folder, a linked folder, too deep.
    (new / "pod5" / "ASSIGNED_123_gpu1").mkdir()
    (new / "pod5" / "ASSIGNED_123_gpu1" / "x.pod5").symlink_to("../x.pod5")
    root.add(root.input_dir / ".trash", 1)
    (root.input_dir / "linked").symlink_to(plain)
    root.add(root.input_dir / "d1" / "d2" / "d3" / "d4" / "d5" / "d6", 1)

    found = discovery.discover(root.input_dir, Layout(LAYOUT.run_folder, 5))
    prefix = "exp1/sample1/" + RUN_NAME.format(flow_cell="FAX11111")
    old_prefix = "exp1/sample2/" + RUN_NAME.format(flow_cell="FAX22222")
    assert found == [
        Found(prefix, f"{prefix}/pod5"),
        Found(old_prefix, f"{old_prefix}/pod5_fail"),
        Found(old_prefix, f"{old_prefix}/pod5_pass/barcode01"),
        Found(old_prefix, f"{old_prefix}/pod5_pass/unclassified"),
        Found("exp2/a/b/raw", "exp2/a/b/raw"),
    ]
    # One level deeper lets the deep folder in; a folder holding raw files itself is ".".
    deep = "d1/d2/d3/d4/d5/d6"
    assert Found(deep, deep) in discovery.discover(root.input_dir, Layout(LAYOUT.run_folder, 6))
    root.add(root.input_dir, 1)
    assert Found(".", ".") in discovery.discover(root.input_dir, LAYOUT)


# -- serving a root ----------------------------------------------------------------------------


async def test_each_run_is_basecalled_into_its_own_output_one_raw_folder_per_batch(
    root: Root,
) -> None:
    one = root.run("exp", "s1", "FAX11111")
    two = root.run("exp", "s2", "FAX22222")
    root.add(one / "pod5", 5)
    root.add(two / "pod5_pass" / "barcode01", 3)
    root.add(two / "pod5_fail", 2)
    async with serving(root.settings()) as (client, _facility):
        batches = await drain(client, root)
        status = (await client.get("/status")).json()
        runs = {entry["path"]: entry for entry in (await client.get("/runs")).json()["runs"]}

    for batch in batches:
        raw_folder = Path(batch["job_input_dir"]).parent
        targets = {raw.parent for raw in batch["raw_files"]}
        assert targets == {root.input_dir / raw_folder}, "a batch mixed raw folders"
        assert batch["input_dir"] == str(root.input_dir.resolve())
        assert batch["run_path"] in raw_folder.as_posix()
        assert Path(batch["job_output_dir"]).parent.as_posix() == batch["run_path"]
    for folder in (one, two):
        path = folder.relative_to(root.input_dir).as_posix()
        out = root.output_dir / path
        assert sorted(root.reads_out(out)) == sorted(root.reads_in(folder))
        assert runs[path]["files"]["done"] == len(
            [raw for raw in root.reads if raw.is_relative_to(folder)]
        )
        assert runs[path]["raw_folders"] == (1 if folder == one else 2)
    assert status["files"]["done"] == 10 and len(status["runs"]) == 2
    assert not (root.output_dir / "pass").exists(), "nothing lands outside a run's folder"


async def test_a_new_run_is_found_within_a_second_by_events(root: Root) -> None:
    async with serving(root.settings(rescan_interval=60)) as (client, facility):
        assert (await client.get("/runs")).json() == {"runs": []}
        folder = root.run("exp", "s1", "FAX33333")
        written = root.add(folder / "pod5", 2)
        took = await until(lambda: facility.status().files.pending == 2, 5, "the new run")
        batch = await assign(client)
    assert took < 1.0, f"found after {took:.2f} s"
    assert sorted(batch["batch"]) == sorted(path.name for path in written)


async def test_at_start_up_a_raw_folders_listing_by_discovery_is_its_recoverys(
    root: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first discovery hands each raw folder's listing to its recovery: a raw folder of a
    million entries is listed once at start-up, not twice. A raw folder found later is listed
    again by its recovery (discovery keeps no listing after the first)."""
    one, two = (
        root.run("exp", "s1", "FAX11111") / "pod5",
        root.run("exp", "s2", "FAX22222") / "pod5",
    )
    root.add(one, 3)
    root.add(two, 2)
    listed: list[Path] = []
    list_input = scan.list_input

    def counted(folder: Path) -> scan.InputListing:
        listed.append(Path(folder).resolve())
        return list_input(folder)

    monkeypatch.setattr(scan, "list_input", counted)
    async with serving(root.settings(force_polling=True, rescan_interval=60)) as (_, facility):
        assert [listed.count(folder.resolve()) for folder in (one, two)] == [1, 1]
        three = root.run("exp", "s3", "FAX33333") / "pod5"
        root.add(three, 1)
        await facility.server.discover()
        assert facility.status().files.pending == 6
    assert listed.count(three.resolve()) == 2


async def test_without_events_a_new_run_is_found_by_the_rescan(root: Root) -> None:
    async with serving(root.settings(force_polling=True, rescan_interval=0.2)) as (_, facility):
        root.add(root.run("exp", "s1", "FAX44444") / "pod5", 1)
        await until(lambda: facility.status().files.pending == 1, 5, "the rescan")


async def test_a_root_that_is_one_runs_pod5_folder_is_served_as_before(root: Root) -> None:
    names = [path.name for path in root.add(root.input_dir, 3)]
    async with serving(root.settings()) as (client, _):
        batch = await assign(client)
        assert sorted(batch["batch"]) == sorted(names)
        assert batch["job_input_dir"] == f"ASSIGNED_{batch['jobid']}_gpu1"
        assert batch["job_output_dir"] == f"TMPOUTPUT_{batch['jobid']}_gpu1"
        root.basecall(batch)
        await complete(client, batch["jobid"])
        assert [entry["path"] for entry in (await client.get("/runs")).json()["runs"]] == ["."]
    assert sorted(root.reads_out(root.output_dir)) == sorted(root.reads_in(root.input_dir))


# -- phases, completion, seals -----------------------------------------------------------------


async def test_a_run_finishes_with_its_summary_once_the_files_it_names_were_seen(
    root: Root,
) -> None:
    one = root.run("exp", "s1", "FAX11111")
    two = root.run("exp", "s2", "FAX22222")
    root.add(one / "pod5", 2)
    root.add(two / "pod5", 1)
    summary(one, files=3)
    async with serving(root.settings()) as (client, facility):
        await drain(client, root)

        def phases() -> dict[str, str]:
            return {entry.path: entry.phase.value for entry in facility.entries()}

        # Two raw files seen of the three the summary names: not finished.
        await asyncio.sleep(0.5)
        assert set(phases().values()) == {"sequencing"}
        root.add(one / "pod5", 1)
        await until(lambda: "finished, basecalling" in phases().values(), 5, "the third file")
        await drain(client, root)
        assert phases() == {
            one.relative_to(root.input_dir).as_posix(): "complete",
            two.relative_to(root.input_dir).as_posix(): "sequencing",
        }


async def test_the_completion_command_runs_once_across_restarts(root: Root) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder)
    ran = root.input_dir.parent / "ran.txt"
    script = f"import sys; open({str(ran)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    command = f"{sys.executable} -c {json.dumps(script)} {{run_path}} {{output_dir}}"
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    settings = root.settings(on_run_complete=command)
    async with serving(settings) as (client, _):
        await drain(client, root)
        await until(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    record = json.loads((out / "bcm-run-complete.json").read_text())
    assert record["exit_status"] == 0
    assert ran.read_text() == f"{path} {out}\n"

    async with serving(settings) as (client, facility):
        [entry] = facility.entries()
        assert entry.sealed and entry.phase.value == "complete" and entry.files.done == 2
        assert not facility.registry.managers, "a sealed run's raw files are not read back"
        await asyncio.sleep(0.3)
    assert ran.read_text() == f"{path} {out}\n", "run once, not at each start"


async def test_a_command_that_a_crash_interrupted_is_not_run_again(root: Root) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 1)
    summary(folder)
    out = root.output_dir / folder.relative_to(root.input_dir)
    out.mkdir(parents=True)
    (out / "bcm-run-complete.json").write_text(json.dumps({"command": ["x"], "started": "t"}))
    ran = root.input_dir.parent / "ran.txt"
    command = f"{sys.executable} -c \"open({str(ran)!r}, 'a').write('ran')\""
    async with serving(root.settings(on_run_complete=command)) as (client, _):
        await drain(client, root)
        await until(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    assert not ran.exists()


async def test_a_new_raw_file_unseals_a_sealed_run(root: Root) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder)
    out = root.output_dir / folder.relative_to(root.input_dir)
    async with serving(root.settings()) as (client, _):
        await drain(client, root)
        await until(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    async with serving(root.settings()) as (client, facility):
        assert facility.entries()[0].sealed
        late = root.add(folder / "pod5", 1)
        await until(lambda: facility.status().files.pending == 1, 5, "the late file")
        assert not facility.entries()[0].sealed and not (out / "bcm-run.json").exists()
        batch = await assign(client)
        assert batch["batch"] == [late[0].name]
        root.basecall(batch)
        await complete(client, batch["jobid"])
        await until(lambda: (out / "bcm-run.json").exists(), 10, "the seal again")
        assert facility.entries()[0].files.done == 3
    assert sorted(root.reads_out(out)) == sorted(root.reads_in(folder))


# -- scheduling and operators ------------------------------------------------------------------


async def test_priority_and_pause_decide_whose_files_go_first(root: Root) -> None:
    low = root.run("exp", "s1", "FAX11111")
    high = root.run("exp", "s2", "FAX22222")
    root.add(low / "pod5", 2)
    root.add(high / "pod5", 2)
    low_path, high_path = (f.relative_to(root.input_dir).as_posix() for f in (low, high))
    token = {"Authorization": "Bearer op"}
    settings = root.settings(operator_token="op")
    async with serving(settings) as (client, _facility):
        refused = await client.post("/runs/priority", json={"run": high_path, "priority": 5})
        assert refused.status_code == 401
        reply = await client.post(
            "/runs/priority", json={"run": high_path, "priority": 5}, headers=token
        )
        assert reply.status_code == 200 and reply.json()["priority"] == 5
        assert (await assign(client, size=1))["run_path"] == high_path
        paused = await client.post("/runs/pause", json={"run": high_path}, headers=token)
        assert paused.json()["paused"] is True
        assert (await assign(client, size=1))["run_path"] == low_path
        assert (await assign(client, size=1))["run_path"] == low_path
        assert (await assign(client, size=1))["batch"] == [], "a paused run is offered to none"
        await client.post("/runs/resume", json={"run": high_path}, headers=token)
        assert (await assign(client, size=1))["run_path"] == high_path
        unknown = await client.post("/runs/pause", json={"run": "nope"}, headers=token)
        assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
        metrics = (await client.get("/metrics")).text
    actions = [json.loads(line)["action"] for line in (root.input_dir / "OPERATOR.log").open()]
    assert actions == ["priority", "pause", "resume"]
    assert f'bcmanager_run_priority{{run="{high_path}"}} 5.0' in metrics
    assert f'bcmanager_run_files{{run="{low_path}",state="leased"}} 2.0' in metrics


async def test_the_run_whose_oldest_file_waited_longest_goes_first(root: Root) -> None:
    young = root.run("exp", "s1", "FAX11111")
    old = root.run("exp", "s2", "FAX22222")
    now = time.time()
    for path in root.add(young / "pod5", 2):
        os.utime(path, (now - 10, now - 10))
    for path in root.add(old / "pod5", 2):
        os.utime(path, (now - 600, now - 600))
    async with serving(root.settings()) as (client, facility):
        lags = {entry.path: entry.lag_seconds for entry in facility.entries()}
        batch = await assign(client, size=1)
    assert batch["run_path"] == old.relative_to(root.input_dir).as_posix()
    assert lags[batch["run_path"]] == pytest.approx(600, abs=30)


async def test_batches_are_sized_by_the_runs_bytes_and_capped_by_the_engines_count(
    root: Root,
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    paths = root.add(folder / "pod5", 6)
    size = max(path.stat().st_size for path in paths)
    rules = root.input_dir.parent / "runs.toml"
    rules.write_text(f'[[run]]\nmatch = "exp/**"\nbatch_bytes = {2 * size + size // 2}\n')
    async with serving(root.settings(runs_file=rules)) as (client, _):
        wide = await assign(client, size=10)
        narrow = await assign(client, size=1)
    assert len(wide["batch"]) == 2, "two files fit the run's batch_bytes, a third does not"
    assert len(narrow["batch"]) == 1, "the engine's batchsize stays a cap on files"


async def test_a_final_summary_is_seen_within_a_second_by_events(root: Root) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 1)
    async with serving(root.settings(rescan_interval=60)) as (client, facility):
        await drain(client, root)
        summary(folder)
        took = await until(
            lambda: facility.entries()[0].phase.value == "complete", 5, "the summary"
        )
    assert took < 1.0, f"seen after {took:.2f} s"


async def test_a_retry_reads_back_a_sealed_run_with_quarantined_files(root: Root) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    bad, good = root.add(folder / "pod5", 2)
    summary(folder)
    out = root.output_dir / folder.relative_to(root.input_dir)
    async with serving(root.settings()) as (client, _):
        for engine in ("gpu1", "gpu2"):  # fails alone on two engines: quarantined
            batch = await assign(client, engine, size=1)
            assert batch["batch"] == [bad.name]
            await complete(client, batch["jobid"], "FAILED")
        await drain(client, root)
        await until(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    async with serving(root.settings()) as (client, facility):
        assert facility.entries()[0].sealed and facility.entries()[0].files.failed == 1
        reply = await client.post("/retry", json={"files": [bad.name]})
        assert reply.status_code == 200, reply.text
        path = bad.relative_to(root.input_dir).as_posix()
        assert reply.json()["retried"] == [path]
        assert not (out / "bcm-run.json").exists()
        batch = await assign(client, size=10)
    assert batch["batch"] == [bad.name] and good.name not in batch["batch"]
