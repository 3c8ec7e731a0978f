"""The independent oracle of the crash and property tests (``oracle.py``) fails where it must:
each kind of damage to a basecalled run is one problem line naming it, and a sound run, with
FASTQ in pass/ and fail/, gzipped or not, quarantined and deleted raw files, passes."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Run, fastq
from oracle import POD5_SIGNATURE, NotFastq, fastq_read_ids, piece_id


@pytest.fixture
def basecalled(run: Run) -> Run:
    """Four raw files: a and b done (a's FASTQ gzipped, in fail/; b after a failed attempt), c
    quarantined, d deleted."""
    for name in ("a.pod5", "b.pod5", "c.pod5", "d.pod5"):
        run.add(name, read_count=2)
    done = run.input_dir / "DONE_1_gpu1"
    failed = run.input_dir / "FAILED_3_gpu2"
    quarantined = run.input_dir / "QUARANTINED_2_gpu1"
    for folder, names in (
        (done, ["a.pod5", "b.pod5"]),
        (failed, ["b.pod5", "c.pod5"]),
        (quarantined, ["c.pod5"]),
    ):
        folder.mkdir()
        for name in names:
            os.symlink(f"../{name}", folder / name)
    for sub in ("pass", "fail"):
        (run.output_dir / sub).mkdir(parents=True)
    (run.output_dir / "fail" / "job_id_1_a.fastq.gz").write_bytes(
        gzip.compress(fastq(run.reads["a.pod5"]).encode())
    )
    (run.output_dir / "pass" / "barcode01").mkdir()
    (run.output_dir / "pass" / "barcode01" / "b.fq").write_text(fastq(run.reads["b.pod5"]))
    run.delete("d.pod5")
    return run


def test_a_sound_run_passes_and_is_counted(basecalled: Run) -> None:
    verdict = basecalled.judge()
    assert verdict.problems == []
    assert (verdict.done, verdict.quarantined, verdict.deleted_done) == (2, 1, 0)
    assert (verdict.fastq_files, verdict.reads) == (2, 4)


def test_a_deleted_raw_file_may_have_been_basecalled_before(basecalled: Run) -> None:
    (basecalled.output_dir / "pass" / "d.fastq").write_text(fastq(basecalled.reads["d.pod5"]))
    verdict = basecalled.judge()
    assert verdict.problems == [] and verdict.deleted_done == 1


def test_a_split_read_counts_once_through_its_pieces_and_never_beside_itself(
    basecalled: Run,
) -> None:
    first, second = basecalled.reads["a.pod5"]
    (basecalled.output_dir / "fail" / "job_id_1_a.fastq.gz").unlink()
    merged = basecalled.output_dir / "pass" / "a.fastq"
    merged.write_text(fastq([first, piece_id(second, 0), piece_id(second, 1)]))
    assert basecalled.judge().problems == []
    merged.write_text(fastq([first, piece_id(second, 0)]))
    assert basecalled.judge().problems == [f"read {second} of a.pod5: only some of its pieces"]
    merged.write_text(fastq([first, second, piece_id(second, 0), piece_id(second, 1)]))
    [twice] = basecalled.judge().problems
    assert twice.startswith(f"read {second} of a.pod5 is merged 3 times")


def test_before_the_run_is_drained_only_the_named_files_must_be_done(basecalled: Run) -> None:
    os.unlink(basecalled.output_dir / "pass" / "barcode01" / "b.fq")
    assert basecalled.judge(drained=False).problems == []
    missing = (
        "b.pod5: none of its 2 reads is in pass/ or fail/, and it is in no QUARANTINED_ folder"
    )
    assert basecalled.judge().problems == [missing]
    assert basecalled.judge(drained=False, done=["b.pod5"]).problems == [missing]
    assert basecalled.judge(drained=False, undone=["b.pod5", "c.pod5"]).problems == []
    assert basecalled.judge(drained=False, undone=["a.pod5"]).problems == [
        "a.pod5 is not done, yet 2 of its reads are merged"
    ]


def add_fastq(name: str, raw: str | None = None, count: int = 2) -> Callable[[Run], None]:
    """Damage: a FASTQ in pass/ holding the first ``count`` reads of raw file ``raw``."""

    def damage(run: Run) -> None:
        reads = run.reads[raw][:count] if raw else ["read-of-nothing"]
        (run.output_dir / "pass" / name).write_text(fastq(reads))

    return damage


def remove(path: str) -> Callable[[Run], None]:
    def damage(run: Run) -> None:
        os.unlink(run.input_dir.parent / path)

    return damage


def relink(run: Run) -> None:
    """The QUARANTINED_ folder's entry for c points elsewhere: c counts as set aside no more."""
    link = run.input_dir / "QUARANTINED_2_gpu1" / "c.pod5"
    os.unlink(link)
    os.symlink(run.input_dir / "c.pod5", link)


def moved_raw(run: Run) -> None:
    os.rename(run.input_dir / "a.pod5", run.output_dir / "job_id_1_a.pod5")


def raw_bytes_renamed(run: Run) -> None:
    (run.output_dir / "LOGOUTPUT_1_gpu1").mkdir()
    (run.output_dir / "LOGOUTPUT_1_gpu1" / "a").write_bytes(POD5_SIGNATURE + b"...")


def moved_job_folder(run: Run) -> None:
    os.rename(run.input_dir / "DONE_1_gpu1", run.output_dir / "pass" / "job_id_1_DONE_1_gpu1")


def job_link_elsewhere(run: Run) -> None:
    (run.output_dir / "LOGOUTPUT_1_gpu1").mkdir()
    os.symlink("../a.pod5", run.output_dir / "LOGOUTPUT_1_gpu1" / "kept")


def symlink_in_pass(run: Run) -> None:
    os.symlink(run.input_dir, run.output_dir / "pass" / "elsewhere")


def not_named_fastq(run: Run) -> None:
    os.rename(
        run.output_dir / "pass" / "barcode01" / "b.fq",
        run.output_dir / "pass" / "barcode01" / "b.fq.~1~",
    )


def truncated(run: Run) -> None:
    (run.output_dir / "pass" / "barcode01" / "b.fq").write_text("@x\nACGT\n+\n")


def deleted_is_back(run: Run) -> None:
    (run.input_dir / "d.pod5").write_bytes(b"")


def undecodable_offered(run: Run) -> None:
    name = run.add_undecodable(b"\xff\xfe.pod5")
    os.symlink(f"../{name}", run.input_dir / "DONE_1_gpu1" / name)


def undecodable_merged(run: Run) -> None:
    name = run.add_undecodable(b"\xff\xfe.pod5")
    (run.output_dir / "pass" / "x.fastq").write_text(fastq(run.reads[name]))


def no_longer_complete(run: Run) -> None:
    with (run.input_dir / "b.pod5").open("ab") as raw:
        raw.write(b"more")


GONE_B = "b.pod5: none of its 2 reads is in"
DAMAGE: dict[str, tuple[Callable[[Run], None], list[str]]] = {
    "missing": (remove("output/pass/barcode01/b.fq"), [GONE_B]),
    "quarantined, by a link elsewhere": (relink, ["c.pod5: none of its 2 reads is in"]),
    "only a failed attempt": (remove("input/QUARANTINED_2_gpu1/c.pod5"), ["c.pod5: none of its"]),
    "merged twice": (add_fastq("again.fastq", "b.pod5"), ["is merged 2 times"] * 2),
    "partly merged": (add_fastq("c.fastq", "c.pod5", 1), ["c.pod5: only 1 of its 2 reads"]),
    "done and quarantined": (add_fastq("c.fastq", "c.pod5"), ["c.pod5 is done and in QUARANT"]),
    "read of nothing": (add_fastq("x.fastq"), ["pass/x.fastq: 1 reads of no raw file"]),
    "not FASTQ": (truncated, ["pass/barcode01/b.fq: not FASTQ (3 lines", GONE_B]),
    "not named FASTQ": (not_named_fastq, ["b.fq.~1~: not named as a FASTQ file", GONE_B]),
    "symlink in pass": (symlink_in_pass, ["OUTPUT_DIR/pass/elsewhere: a symlink"]),
    "raw file gone": (remove("input/b.pod5"), ["'b.pod5' is gone from INPUT_DIR"]),
    "raw file changed": (no_longer_complete, ["'b.pod5' is no longer a complete POD5 file"]),
    "raw file moved out": (
        moved_raw,
        ["'a.pod5' is gone from INPUT_DIR", "OUTPUT_DIR/job_id_1_a.pod5: a raw file"],
    ),
    "raw bytes moved out": (raw_bytes_renamed, ["LOGOUTPUT_1_gpu1/a: a raw file's bytes"]),
    "job folder moved out": (
        moved_job_folder,
        [
            "pass/job_id_1_DONE_1_gpu1: a raw file or job folder's name",
            "job_id_1_DONE_1_gpu1/a.pod5: a raw file or job folder's name",
            "job_id_1_DONE_1_gpu1/b.pod5: a raw file or job folder's name",
            "job_id_1_DONE_1_gpu1/a.pod5: not a regular file",
            "job_id_1_DONE_1_gpu1/b.pod5: not a regular file",
        ],
    ),
    "job link moved out": (job_link_elsewhere, ["LOGOUTPUT_1_gpu1/kept: a job folder's link"]),
    "deleted, yet back": (deleted_is_back, ["d.pod5 was deleted by the test, yet is in INPUT"]),
    "never to be offered, offered": (undecodable_offered, ["never to be offered, is in ['DONE_"]),
    "never to be offered, merged": (undecodable_merged, ["never to be offered, has 2 reads"]),
}


@pytest.mark.parametrize(("damage", "expected"), DAMAGE.values(), ids=DAMAGE.keys())
def test_each_kind_of_damage_is_a_problem_naming_it(
    basecalled: Run, damage: Callable[[Run], None], expected: list[str]
) -> None:
    damage(basecalled)
    problems = basecalled.judge().problems
    unmatched = list(problems)
    for says in expected:
        match = next((problem for problem in unmatched if says in problem), None)
        assert match is not None, (says, problems)
        unmatched.remove(match)
    assert unmatched == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("@a\nAC\n+\nI\n", "bases and qualities differ"),
        ("a\nAC\n+\nII\n", "not a '@<read id>' header"),
        ("@\nAC\n+\nII\n", "not a '@<read id>' header"),
        ("@a\nAC\n-\nII\n", "no '+'"),
        ("@a\nAC\n+\n", "3 lines"),
    ],
)
def test_the_fastq_parser_refuses_what_is_not_fastq(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "x.fastq"
    path.write_text(text)
    with pytest.raises(NotFastq, match=re.escape(why)):
        fastq_read_ids(path)
    path.write_text("@a b c\nAC\n+\nII\n@d\n\n+x\n\n")
    assert fastq_read_ids(path) == ["a", "d"]
