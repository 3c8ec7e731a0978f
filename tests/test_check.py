"""``bcmanager check``: a healthy run passes with a summary; each broken invariant is one line
naming its path, and the exit code is 1."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bcmanager.cli import main
from bcmanager.cli.check import UNDECODABLE, Severity, inspect
from bcmanager.core.folders import RunFolders
from bcmanager.core.manager import Manager
from bcmanager.core.scan import POD5_SIGNATURE
from bcmanager.lock import RunLock
from bcmanager.models import BCBatch, JobState
from bcmanager.paths import RunPaths
from conftest import Run, minknow_run


@dataclass
class Jobs:
    """A run with one job of each kind, built by a manager driven directly."""

    paths: RunPaths
    done: BCBatch
    failed: BCBatch
    leased: BCBatch


@pytest.fixture
def jobs(run: Run) -> Jobs:
    names = run.add_many(6)
    (run.input_dir / "half.pod5").write_bytes(POD5_SIGNATURE + b"still writing")
    manager = Manager(run.settings())
    manager.folders.prepare()
    for name in names:
        manager.state.observe(name, complete=True)
    done = manager.assign("gpu1", 2)
    run.basecall(done.job_output_dir, done.batch)
    manager.complete(done.jobid, JobState.DONE)
    failed = manager.assign("gpu2", 1)
    manager.complete(failed.jobid, JobState.FAILED)
    # Failed alone on a second engine: quarantined.
    assert manager.assign("gpu4", 1).batch == failed.batch
    manager.complete(manager.state.live_jobs()[0].jobid, JobState.FAILED)
    leased = manager.assign("gpu3", 2)
    return Jobs(manager.paths, done, failed, leased)


def check(paths: RunPaths, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["check", "--input", str(paths.input_dir), "--output", str(paths.output_dir)])
    return code, capsys.readouterr().out.splitlines()


def test_a_healthy_run_passes_with_files_by_state(
    jobs: Jobs, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = check(jobs.paths, capsys)
    assert code == 0, lines
    assert "raw files: 7 (1 waiting, 1 pending, 2 leased, 2 done, 1 failed)" in lines
    assert (
        "job folders: 1 ASSIGNED_, 1 DONE_, 1 FAILED_, 1 QUARANTINED_, 1 TMPOUTPUT_, "
        "1 LOGOUTPUT_, 2 FAILEDOUTPUT_" in lines
    )
    assert "FASTQ files: 2 in pass/" in lines
    assert lines[-1] == "all invariants hold"


def link_leased_file_into_done(jobs: Jobs) -> Path:
    name = jobs.leased.batch[0]
    link = jobs.paths.input_dir / f"DONE_{jobs.done.jobid}_gpu1" / name
    link.symlink_to(f"../{name}")
    return jobs.paths.input_dir / name


def remove_a_done_raw_file(jobs: Jobs) -> Path:
    name = jobs.done.batch[0]
    (jobs.paths.input_dir / name).unlink()
    return jobs.paths.input_dir / f"DONE_{jobs.done.jobid}_gpu1" / name


def merge_a_fastq_twice(jobs: Jobs) -> Path:
    stem = jobs.done.batch[0].removesuffix(".pod5")
    twice = jobs.paths.pass_dir / f"job_id_99_{stem}.fastq"
    twice.write_text("@r\nA\n+\n!\n")
    return jobs.paths.pass_dir


def commit_done_without_moving_the_output(jobs: Jobs) -> Path:
    leased = jobs.paths.input_dir / jobs.leased.job_input_dir
    leased.rename(leased.with_name(f"DONE_{jobs.leased.jobid}_gpu3"))
    return jobs.paths.output_dir / jobs.leased.job_output_dir


def make_unknown_input_folder(jobs: Jobs) -> Path:
    folder = jobs.paths.input_dir / "DONE_12"
    folder.mkdir()
    return folder


def make_unknown_output_folder(jobs: Jobs) -> Path:
    folder = jobs.paths.output_dir / "ASSIGNED_12_gpu1"
    folder.mkdir()
    return folder


def leave_a_half_built_job(jobs: Jobs) -> Path:
    folder = jobs.paths.input_dir / ".bcm-tmp-ASSIGNED_12_gpu9"
    folder.mkdir()
    return folder


def leave_an_output_no_job_claims(jobs: Jobs) -> Path:
    folder = jobs.paths.output_dir / "TMPOUTPUT_12_gpu9"
    folder.mkdir()
    return folder


def point_a_link_elsewhere(jobs: Jobs) -> Path:
    link = jobs.paths.input_dir / jobs.leased.job_input_dir / jobs.leased.batch[0]
    link.unlink()
    link.symlink_to("/etc/hostname")
    return link


def replace_a_link_by_a_file(jobs: Jobs) -> Path:
    link = jobs.paths.input_dir / jobs.failed.job_input_dir.replace("ASSIGNED_", "FAILED_")
    entry = link / jobs.failed.batch[0]
    entry.unlink()
    entry.write_text("not a link")
    return entry


def lease_a_done_file_again(jobs: Jobs) -> Path:
    stem = jobs.leased.batch[0].removesuffix(".pod5")
    (jobs.paths.fail_dir / f"{stem}.fastq").write_text("@r\nA\n+\n!\n")
    return jobs.paths.input_dir / jobs.leased.batch[0]


def remove_a_leased_output(jobs: Jobs) -> Path:
    shutil.rmtree(jobs.paths.output_dir / jobs.leased.job_output_dir)
    return jobs.paths.input_dir / jobs.leased.job_input_dir


BREAKAGES: list[tuple[Callable[[Jobs], Path], Severity, str]] = [
    (link_leased_file_into_done, Severity.BROKEN, "in two states"),
    (merge_a_fastq_twice, Severity.BROKEN, "basecalled twice"),
    (commit_done_without_moving_the_output, Severity.REPAIR, "never moved"),
    (make_unknown_input_folder, Severity.BROKEN, "unknown folder"),
    (make_unknown_output_folder, Severity.BROKEN, "unknown folder"),
    (leave_a_half_built_job, Severity.REPAIR, "unfinished change"),
    (leave_an_output_no_job_claims, Severity.REPAIR, "no job folder claims"),
    (point_a_link_elsewhere, Severity.BROKEN, "points to /etc/hostname"),
    (replace_a_link_by_a_file, Severity.BROKEN, "not a symlink"),
    (lease_a_done_file_again, Severity.BROKEN, "leased in ASSIGNED_"),
    (remove_a_leased_output, Severity.REPAIR, "TMPOUTPUT_ folder is missing"),
]


@pytest.mark.parametrize(
    ("breakage", "severity", "words"), BREAKAGES, ids=[b[0].__name__ for b in BREAKAGES]
)
def test_each_broken_invariant_is_one_line_naming_its_path(
    jobs: Jobs,
    capsys: pytest.CaptureFixture[str],
    breakage: Callable[[Jobs], Path],
    severity: Severity,
    words: str,
) -> None:
    path = breakage(jobs)
    code, lines = check(jobs.paths, capsys)
    problems = [line for line in lines if line.startswith(("BROKEN: ", "REPAIR: "))]
    assert code == 1
    assert len(problems) == 1, lines
    assert problems[0].startswith(f"{severity.value}: {path}")
    assert words in problems[0]
    assert lines[-1].startswith("1 problem: ")


def test_a_raw_file_deleted_after_its_job_is_named_as_missing_and_fails_nothing(
    jobs: Jobs, capsys: pytest.CaptureFixture[str]
) -> None:
    path = remove_a_done_raw_file(jobs)
    code, lines = check(jobs.paths, capsys)
    [note] = [line for line in lines if line.startswith("NOTE: ") and "missing" in line]
    assert code == 0, lines
    assert note.startswith(f"NOTE: {path}: missing: ") and "moved or deleted" in note
    assert "raw files: 7 (1 waiting, 1 pending, 2 leased, 2 done, 1 failed)" in lines


def test_a_run_whose_raw_files_are_all_gone_is_still_read(
    jobs: Jobs, capsys: pytest.CaptureFixture[str]
) -> None:
    """No raw file left, so no run to discover: INPUT_DIR's job folders are read all the same."""
    for path in jobs.paths.input_dir.glob("*.pod5"):
        path.unlink()
    code, lines = check(jobs.paths, capsys)
    assert code == 0, lines
    assert "runs: 0" not in lines
    assert sum(line.startswith("NOTE: ") and "missing: " in line for line in lines) == 6
    assert (
        "job folders: 1 ASSIGNED_, 1 DONE_, 1 FAILED_, 1 QUARANTINED_, 1 TMPOUTPUT_, "
        "1 LOGOUTPUT_, 2 FAILEDOUTPUT_" in lines
    )


REPAIRS = [breakage for breakage, severity, _ in BREAKAGES if severity is Severity.REPAIR]


@pytest.mark.parametrize("breakage", REPAIRS, ids=[b.__name__ for b in REPAIRS])
def test_a_restart_repairs_what_check_calls_repair(
    jobs: Jobs, breakage: Callable[[Jobs], Path]
) -> None:
    breakage(jobs)
    assert [p.severity for p in inspect(jobs.paths).problems] == [Severity.REPAIR]
    RunFolders(jobs.paths).recover()
    assert inspect(jobs.paths).problems == []


def test_fastq_named_per_batch_stands_for_no_raw_file(
    jobs: Jobs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dorado with --emit-fastq writes one reads.fastq per job: merged from many jobs, it is no
    raw file basecalled twice."""
    for jobid in ("11", "12"):
        (jobs.paths.pass_dir / f"job_id_{jobid}_reads.fastq").write_text("@r\nA\n+\n!\n")
    code, lines = check(jobs.paths, capsys)
    assert code == 0, lines
    assert "FASTQ files: 4 in pass/" in lines


def test_what_bcmanager_ignores_by_design_is_a_note(
    jobs: Jobs, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.pod5"
    outside.write_bytes(POD5_SIGNATURE * 2)
    (jobs.paths.input_dir / "linked.pod5").symlink_to(outside)
    (jobs.paths.input_dir / "final_summary_PAO12345.txt").write_text("sequencing stopped")
    code, lines = check(jobs.paths, capsys)
    assert code == 0
    note = f"NOTE: {jobs.paths.input_dir / 'linked.pod5'}: a symlink: never offered to an engine"
    assert note in lines
    assert (
        "ignored in INPUT_DIR: 2: final_summary_PAO12345.txt, linked.pod5 "
        "(not raw files, or raw files not regular)"
    ) in lines


def test_each_name_that_is_not_utf8_is_a_note_shown_escaped(
    jobs: Jobs, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Latin-1 "é" (byte 0xe9) anywhere bcmanager looks: noted, never printed raw."""
    input_dir, output_dir = jobs.paths.input_dir, jobs.paths.output_dir
    before = check(jobs.paths, capsys)[1]
    odd = os.fsdecode(b"caf\xe9")
    (input_dir / f"{odd}.pod5").write_bytes(POD5_SIGNATURE * 2)
    (input_dir / odd).mkdir()
    done = input_dir / f"DONE_{jobs.done.jobid}_gpu1"
    (done / f"{odd}.pod5").symlink_to(f"../{odd}.pod5")
    (output_dir / "pass" / f"{odd}.fastq").write_text("@r\nA\n+\n!\n")
    (output_dir / odd).mkdir()
    code, lines = check(jobs.paths, capsys)
    assert code == 0, lines
    assert sorted(line for line in lines if line.startswith("NOTE: ")) == [
        f"NOTE: {done}/caf\\xe9.pod5: {UNDECODABLE}: not a file of this job",
        f"NOTE: {input_dir}/caf\\xe9.pod5: {UNDECODABLE}: never offered to an engine",
        f"NOTE: {input_dir}/caf\\xe9: {UNDECODABLE}: never offered to an engine",
        f"NOTE: {output_dir}/caf\\xe9: {UNDECODABLE}: not ours",
        f"NOTE: {output_dir}/pass/caf\\xe9.fastq: {UNDECODABLE}: stands for no raw file",
    ]
    counted = [line for line in lines if line.startswith("raw files: ")]
    assert counted == [line for line in before if line.startswith("raw files: ")]


@pytest.mark.parametrize("held", ["input", "output"])
def test_a_running_manager_is_named(
    jobs: Jobs, capsys: pytest.CaptureFixture[str], held: str
) -> None:
    """Either lock tells: a manager of another run may hold only OUTPUT_DIR."""
    folder = jobs.paths.input_dir if held == "input" else jobs.paths.output_dir
    with RunLock.acquire(folder / ".bcmanager.lock", "http://127.0.0.1:1"):
        code, lines = check(jobs.paths, capsys)
    assert code == 0
    [note] = [line for line in lines if line.startswith("NOTE: ")]
    assert note.startswith(
        f"NOTE: {folder}: managed now by pid {os.getpid()} on {socket.gethostname()} "
        "(serving http://127.0.0.1:1, since "
    )
    assert check(jobs.paths, capsys)[1][0].startswith("INPUT_DIR")


def test_an_unreadable_input_dir_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check", "--input", str(tmp_path / "none"), "--output", str(tmp_path)])
    assert code == 2
    assert "cannot read the run" in capsys.readouterr().err


@dataclass
class Root:
    """A root of two runs, MinKNOW's layout: ``one`` with a pod5/ folder; ``two`` with
    pod5_pass/ and pod5_fail/, whose jobs' output shares ``two``'s output folder."""

    root: Run
    one: str
    two: str
    leased: BCBatch  # in two/pod5_fail


def serve_folder(root: Run, run: str, raw: str) -> Manager:
    """A raw folder's core, as the facility makes it, with every raw file seen."""
    folder = root.input_dir / run / raw
    paths = RunPaths(folder, root.output_dir / run, root.input_dir, root.output_dir)
    manager = Manager(root.settings(), paths=paths, own_watcher=False)
    manager.folders.prepare()
    for name in sorted(os.listdir(folder)):
        manager.state.observe(name, complete=True)
    return manager


def basecalled(root: Run, manager: Manager, files: int) -> None:
    done = manager.assign("gpu1", files)
    root.basecall(done.job_output_dir, done.batch)
    manager.complete(done.jobid, JobState.DONE)


@pytest.fixture
def two_runs(tmp_path: Path) -> Root:
    root = Run(tmp_path / "root", tmp_path / "out")
    root.input_dir.mkdir()
    one = minknow_run(root, "expA", "FAX11111")
    two = minknow_run(root, "expB", "FAX22222", ("pod5_pass", "pod5_fail"))
    basecalled(root, serve_folder(root, one, "pod5"), 2)
    basecalled(root, serve_folder(root, two, "pod5_pass"), 1)
    leased = serve_folder(root, two, "pod5_fail").assign("gpu2", 2)
    return Root(root, one, two, leased)


def check_root(root: Run, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["check", "--input", str(root.input_dir), "--output", str(root.output_dir), *args])
    return code, capsys.readouterr().out.splitlines()


def test_a_root_is_checked_run_by_run_and_a_siblings_output_is_no_stranger(
    two_runs: Root, capsys: pytest.CaptureFixture[str]
) -> None:
    root, one, two = two_runs.root, two_runs.one, two_runs.two
    code, lines = check_root(root, capsys)
    assert code == 0, lines
    assert lines[lines.index("runs: 2") + 1 :][:2] == [
        f"run {one}: 2 (0 waiting, 0 pending, 0 leased, 2 done, 0 failed), in 1 raw folder; "
        "FASTQ files: 2 in pass/; ok",
        f"run {two}: 4 (0 waiting, 1 pending, 2 leased, 1 done, 0 failed), in 2 raw folders; "
        "FASTQ files: 1 in pass/; ok",
    ]
    assert "raw files: 6 (0 waiting, 1 pending, 2 leased, 3 done, 0 failed)" in lines
    assert "FASTQ files: 3 in pass/" in lines
    assert lines[-1] == "all invariants hold"
    # Read alone, pod5_pass/ would take its sibling's running job for an unclaimed one.
    alone = inspect(RunPaths(root.input_dir / two / "pod5_pass", root.output_dir / two))
    [stranger] = alone.failures
    assert stranger.path == root.output_dir / two_runs.leased.job_output_dir
    assert "no job folder claims this output" in stranger.what


def test_a_broken_raw_folder_of_the_second_run_is_named_and_run_alone_checks_one(
    two_runs: Root, capsys: pytest.CaptureFixture[str]
) -> None:
    root, one, two, leased = two_runs.root, two_runs.one, two_runs.two, two_runs.leased
    link = root.input_dir / leased.job_input_dir / leased.batch[0]
    link.unlink()
    link.symlink_to("/etc/hostname")
    code, lines = check_root(root, capsys)
    assert code == 1
    [broken] = [line for line in lines if line.startswith(("BROKEN: ", "REPAIR: "))]
    assert broken.startswith(f"BROKEN: {root.input_dir / two / 'pod5_fail'}/ASSIGNED_")
    assert "points to /etc/hostname" in broken
    assert [line.rpartition("; ")[2] for line in lines if line.startswith("run ")] == [
        "ok",
        "1 problem",
    ]
    assert lines[-1].startswith("1 problem: ")
    code, lines = check_root(root, capsys, "--run", one)
    assert code == 0 and lines[-1] == "all invariants hold"
    assert [line for line in lines if line.startswith("run ")] == [
        f"run {one}: 2 (0 waiting, 0 pending, 0 leased, 2 done, 0 failed), in 1 raw folder; "
        "FASTQ files: 2 in pass/; ok"
    ]
    assert check_root(root, capsys, "--run", str(root.input_dir / two) + "/")[0] == 1
    code = main(
        [
            "check",
            "--input",
            str(root.input_dir),
            "--output",
            str(root.output_dir),
            "--run",
            f"{two}/pod5_fail",
        ]
    )
    assert code == 2 and "no run" in capsys.readouterr().err
