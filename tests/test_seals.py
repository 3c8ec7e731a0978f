"""A seal is a promise about every file below a run: what is added or finished below a sealed
run is found by the next start, a run sealed never hides another, ``bcmanager check`` names a
sealed run that holds files not basecalled, and a run read back from its seal counts its yield
once. Each against a real ``bcmanager serve``, stopped and started again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bcmanager.core.folders import RunFolders
from bcmanager.paths import RunPaths
from conftest import RUN_NAME, Root, simulated_dorado, wait_for
from served_root import (
    Served,
    assign,
    basecall,
    check,
    complete,
    drain,
    finish,
    half_written,
    reads_everywhere,
    record,
    runs,
    summary,
    wait_for_run,
)

MODEL = "dna_r10.4.1_e8.2_400bps_hac@v5.0.0"


@pytest.fixture
def served(root: Root, tmp_path: Path) -> Iterator[Served]:
    serving = Served(root, tmp_path)
    yield serving
    serving.close()


def sealed_run(root: Root, served: Served, folder: Path) -> Path:
    """Serve the root until the run in ``folder`` is sealed, then stop; its output folder."""
    out = root.output_dir / folder.relative_to(root.input_dir)
    server = served.start()
    drain(server, root)
    wait_for(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    server.stop()
    return out


def each_read_once_in(root: Root, folder: Path, out: Path) -> None:
    merged = reads_everywhere(root.output_dir)
    assert sorted(merged) == sorted(root.reads_in(folder))
    rel = out.relative_to(root.output_dir)
    assert all(len(where) == 1 and Path(where[0]).parent.parent == rel for where in merged.values())


def test_a_file_written_into_a_folder_that_was_empty_when_the_run_was_sealed_is_served(
    root: Root, served: Served
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    (folder / "pod5_skip").mkdir()
    summary(folder)
    out = sealed_run(root, served, folder)
    path = folder.relative_to(root.input_dir).as_posix()

    [late] = root.add(folder / "pod5_skip", 1)
    checked = check(root)
    assert checked.returncode == 1, checked.stdout
    assert path in checked.stdout and "sealed" in checked.stdout

    server = served.start()
    wait_for_run(server, path, 10, "the late file", pending=1)
    batch = assign(server)
    assert batch["batch"] == [late.name]
    basecall(root, batch)
    assert complete(server, batch["jobid"]).json() == {"ok": True}
    seal = out / "bcm-run.json"
    wait_for(lambda: seal.exists() and record(seal)["files"]["done"] == 3, 10, "a new seal")
    each_read_once_in(root, folder, out)
    assert check(root).returncode == 0


def test_a_file_half_written_when_the_others_were_done_is_served_once_finished_in_place(
    root: Root, served: Served
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    writing = folder / "pod5" / "FAX11111_late.pod5"
    rest = half_written(root, writing)
    summary(folder)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    server = served.start()
    drain(server, root)
    wait_for_run(server, path, 10, "the two complete files done", done=2, waiting=1)
    server.stop()

    finish(writing, rest)
    server = served.start()
    wait_for_run(server, path, 10, "the finished file", pending=1)
    assert [batch["batch"] for batch in drain(server, root)] == [[writing.name]]
    wait_for(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    each_read_once_in(root, folder, out)


def test_a_run_inside_a_sealed_run_is_still_served_after_a_restart(
    root: Root, served: Served
) -> None:
    outer = root.run("exp", "s1", "FAX11111")
    root.add(outer / "pod5", 2)
    summary(outer)
    inner = outer / "resequenced" / RUN_NAME.format(flow_cell="FAX22222")
    root.add(inner / "pod5", 1)  # still sequencing: no final summary
    out = sealed_run(root, served, outer)
    inner_path = inner.relative_to(root.input_dir).as_posix()

    [late] = root.add(inner / "pod5", 1)
    server = served.start()
    wait_for_run(server, inner_path, 10, "the inner run", done=1, pending=1)
    assert runs(server)[outer.relative_to(root.input_dir).as_posix()]["sealed"]
    assert [batch["batch"] for batch in drain(server, root)] == [[late.name]]
    inner_out = root.output_dir / inner_path
    merged = reads_everywhere(root.output_dir)
    assert sorted(merged) == sorted(root.reads_in(outer))
    for raw, reads in root.reads.items():
        own = inner_out if raw.is_relative_to(inner) else out
        for read in reads:
            assert [str(Path(where).parent.parent) for where in merged[read]] == [
                str(own.relative_to(root.output_dir))
            ]


def test_a_run_read_back_from_its_seal_counts_its_yield_once(root: Root, served: Served) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2, reads=3)
    summary(folder)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path

    def work(expected: int) -> None:
        for _ in range(5):
            batch = assign(server, 1)
            if not batch["batch"]:
                break
            simulated_dorado(root.input_dir, root.output_dir, batch, MODEL)
            assert complete(server, batch["jobid"]).json() == {"ok": True}
        wait_for(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
        wait_for(lambda: runs(server)[path]["reads"]["reads"] >= expected, 10, "the yield")
        assert runs(server)[path]["reads"]["reads"] == expected

    server = served.start()
    work(6)
    server.stop()
    server = served.start()
    assert runs(server)[path]["sealed"] and runs(server)[path]["reads"]["reads"] == 6
    root.add(folder / "pod5", 1, reads=3)
    wait_for_run(server, path, 10, "the new file", pending=1)
    work(9)
    assert runs(server)[path]["reads"]["reads"] == 9
    assert record(out / "report.json")["reads_out"] == 9


def test_a_file_added_below_a_sealed_run_is_found_though_its_folder_keeps_its_time(
    root: Root, served: Served
) -> None:
    """A copy that restores folder times, or a clock too coarse, leaves a folder's modification
    time as the seal has it: the start lists every sealed run once, after it is ready."""
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder)
    out = sealed_run(root, served, folder)
    path = folder.relative_to(root.input_dir).as_posix()
    raw = folder / "pod5"
    before = raw.stat()
    [late] = root.add(raw, 1)
    os.utime(raw, ns=(before.st_atime_ns, before.st_mtime_ns))

    server = served.start()
    wait_for_run(server, path, 10, "the late file", pending=1)
    assert [batch["batch"] for batch in drain(server, root)] == [[late.name]]
    each_read_once_in(root, folder, out)


def test_a_raw_folder_new_in_a_run_sealed_by_the_running_manager_unseals_it(
    root: Root, served: Served
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 1)
    summary(folder)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    server = served.start()
    drain(server, root)
    seal = out / "bcm-run.json"
    wait_for(seal.exists, 10, "the seal")
    [late] = root.add(folder / "pod5_skip", 1)
    wait_for_run(server, path, 10, "the new raw folder", pending=1)
    assert not seal.exists(), "the seal no longer holds"
    assert [batch["batch"] for batch in drain(server, root)] == [[late.name]]
    wait_for(lambda: seal.exists() and record(seal)["files"]["done"] == 2, 10, "a new seal")
    assert record(out / "report.json")["files_done"] == 2


@pytest.mark.parametrize("polling", [False, True], ids=["events", "polling"])
def test_a_file_new_in_a_raw_folder_of_a_run_sealed_by_the_running_manager_unseals_it(
    root: Root, served: Served, polling: bool
) -> None:
    """Found by the watcher's events or, on a network filesystem, by a rescan: either way the
    run is no longer complete, and is sealed anew once its new file is done."""
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 1)
    summary(folder)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    env = {"BCM_FORCE_POLLING": "true"} if polling else {}
    server = served.start(**env)
    drain(server, root)
    seal = out / "bcm-run.json"
    wait_for(seal.exists, 10, "the seal")
    [late] = root.add(folder / "pod5", 1)
    wait_for(lambda: not seal.exists(), 10, "the seal taken away")
    assert runs(server)[path]["phase"] != "complete"
    assert [batch["batch"] for batch in drain(server, root)] == [[late.name]]
    wait_for(lambda: seal.exists() and record(seal)["files"]["done"] == 2, 10, "a new seal")
    assert runs(server)[path]["sealed"]


def test_a_file_sent_back_while_the_manager_was_stopped_unseals_its_run(
    root: Root, served: Served
) -> None:
    folder = root.run("exp", "s1", "FAX11111")
    bad, _good = root.add(folder / "pod5", 2)
    summary(folder)
    path = folder.relative_to(root.input_dir).as_posix()
    out = root.output_dir / path
    server = served.start()
    for engine in ("gpu1", "gpu2"):  # fails alone on two engines: quarantined
        batch = assign(server, 1, engine)
        assert batch["batch"] == [bad.name]
        assert complete(server, batch["jobid"], "FAILED").json() == {"ok": True}
    drain(server, root)
    wait_for(lambda: (out / "bcm-run.json").exists(), 10, "the seal")
    server.stop()

    assert RunFolders(RunPaths(folder / "pod5", out)).retry({bad.name}) == [bad.name]
    server = served.start()
    wait_for_run(server, path, 10, "the file sent back", pending=1, failed=0)
    assert [batch["batch"] for batch in drain(server, root)] == [[bad.name]]


def test_output_an_engine_wrote_into_a_sealed_run_after_its_job_ended_is_set_aside(
    root: Root, served: Served
) -> None:
    """An engine told late writes on into a job output folder it recreates; when its run was
    sealed meanwhile, no start reads the run's job folders back, so the start's look at the
    sealed runs finds that folder, and the run's recovery sets it aside."""
    folder = root.run("exp", "s1", "FAX11111")
    root.add(folder / "pod5", 2)
    summary(folder)
    out = sealed_run(root, served, folder)
    path = folder.relative_to(root.input_dir).as_posix()
    late = out / "TMPOUTPUT_123456789_gpu9" / "pass"
    late.mkdir(parents=True)
    (late / "late.fastq").write_text("@late-read\nACGT\n+\n!!!!\n")
    assert "no job folder claims this output" in check(root).stdout

    server = served.start()
    wait_for(lambda: not late.parent.exists(), 10, "the late output set aside")
    wait_for(lambda: runs(server)[path]["sealed"], 10, "the run sealed again")
    server.stop()
    assert check(root).returncode == 0, check(root).stdout
    each_read_once_in(root, folder, out)
