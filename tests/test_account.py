"""The account of a job's reads: raw read ids against the reads that came out, per file.

Raw files are real POD5 files whose read ids the test keeps (its own ledger); outputs are what
the simulated Dorado writes, in every format and layout the output contract accepts, and what
Dorado does to reads: files it skips, split reads, files cut short, reads written twice.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pysam
import pytest

from bcmanager.core.account import account_job, skipped_by_basecaller
from bcmanager.sim.basecaller import OutputLayout, basecall, file_unreadable
from bcmanager.sim.reads import ReadsFormat, split_children
from bcmanager.sim.sequencer import write_pod5

READS = 6


def batch(tmp_path: Path, files: int = 4) -> tuple[Path, Path, dict[str, list[str]]]:
    """A job's input folder of real POD5 files, an empty output folder, and the ledger."""
    raw, output = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    output.mkdir()
    ledger = {
        f"f{index}.pod5": write_pod5(raw / f"f{index}.pod5", READS, seed=index)
        for index in range(files)
    }
    return raw, output, ledger


def bam_records(
    raw: Path, output: Path
) -> tuple[pysam.AlignmentHeader, list[pysam.AlignedSegment]]:
    """The simulated Dorado's records of the job as one BAM, read back and the file removed:
    for the test to write them as SAM or CRAM."""
    basecall(
        raw, output, seconds_per_read=0, reads_format=ReadsFormat.BAM, layout=OutputLayout.FLAT
    )
    bam = output / "calls.bam"
    with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as source:
        header, records = source.header, list(source.fetch(until_eof=True))
    bam.unlink()
    return header, records


@pytest.mark.parametrize(
    ("reads_format", "layout", "barcodes"),
    [
        (ReadsFormat.FASTQ, OutputLayout.PASS_FAIL, 0),
        (ReadsFormat.FASTQ, OutputLayout.DORADO, 3),
        (ReadsFormat.BAM, OutputLayout.DORADO, 3),
        (ReadsFormat.BAM, OutputLayout.FLAT, 0),
    ],
)
def test_every_read_of_every_file_is_accounted_in_every_layout(
    tmp_path: Path, reads_format: ReadsFormat, layout: OutputLayout, barcodes: int
) -> None:
    raw, output, ledger = batch(tmp_path)
    basecall(
        raw, output, seconds_per_read=0, reads_format=reads_format, layout=layout, barcodes=barcodes
    )
    account = account_job(raw, ledger, output)
    assert account.rejected() == [] and account.rejected_reads_files == {}
    assert [(each.name, each.reads_in, each.came_out) for each in account.files] == [
        (name, READS, READS) for name in ledger
    ]
    assert account.records_out == READS * len(ledger)


def test_gzipped_fastq_sam_and_cram_are_read_as_the_others(tmp_path: Path) -> None:
    raw, output, ledger = batch(tmp_path, files=3)
    header, records = bam_records(raw, output)
    for name, mode in (("calls.sam", "w"), ("calls.cram", "wc")):
        with pysam.AlignmentFile(str(output / name), mode, header=header) as sink:
            for record in (
                records[: len(records) // 2]
                if name == "calls.sam"
                else records[len(records) // 2 :]
            ):
                sink.write(record)
    second = tmp_path / "out2"
    second.mkdir()
    basecall(raw, second, seconds_per_read=0)
    for fastq in (second / "pass").iterdir():
        with fastq.open("rb") as source, gzip.open(output / f"{fastq.name}.gz", "wb") as sink:
            shutil.copyfileobj(source, sink)
    account = account_job(raw, ledger, output)
    # Every read came out twice: once in SAM or CRAM, once in a gzipped FASTQ.
    assert [each.twice for each in account.files] == [READS] * 3
    assert all("more than once" in str(each.rejected) for each in account.files)
    (output / "calls.sam").unlink()
    (output / "calls.cram").unlink()
    assert account_job(raw, ledger, output).rejected() == []


def test_split_reads_come_out_through_their_parents_in_bam_and_in_fastq(tmp_path: Path) -> None:
    raw, output, ledger = batch(tmp_path, files=2)
    for reads_format in (ReadsFormat.BAM, ReadsFormat.FASTQ):
        shutil.rmtree(output)
        output.mkdir()
        basecall(
            raw, output, seconds_per_read=0, reads_format=reads_format, split_fraction=0.5, seed=3
        )
        pieces = {read: split_children(read, 3, 0.5) for reads in ledger.values() for read in reads}
        split = {read for read, children in pieces.items() if children}
        assert split and len(split) < len(pieces)  # some are, some are not
        account = account_job(raw, ledger, output)
        assert account.rejected() == []
        assert sum(each.split for each in account.files) == len(split)
        assert account.records_out == sum(max(1, len(children)) for children in pieces.values())


def test_a_file_dorado_skipped_is_named_and_the_others_are_taken(tmp_path: Path) -> None:
    raw, output, ledger = batch(tmp_path, files=4)
    skipped = [name for name in ledger if file_unreadable(name[:-5], 1, 0.4)]
    assert 0 < len(skipped) < len(ledger)
    done = subprocess.run(
        [sys.executable, "-m", "bcmanager", "simulate", "basecaller", "--seconds-per-read", "0",
         "--unreadable-fraction", "0.4", "--seed", "1", str(raw), str(output)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = skipped_by_basecaller(done.stderr)
    assert sorted(said) == sorted(skipped)
    account = account_job(raw, ledger, output, skipped=said)
    rejected = {each.name: each.rejected for each in account.rejected()}
    assert sorted(rejected) == sorted(skipped)
    for name in skipped:
        assert f"{name}: the basecaller could not open it" in str(rejected[name])
    assert all(each.alone for each in account.rejected())
    # Without the basecaller's word, the account finds them all the same.
    again = {each.name: each.rejected for each in account_job(raw, ledger, output).rejected()}
    assert again == {name: f"{name}: 0 of {READS} reads came out" for name in skipped}


@pytest.mark.parametrize("reads_format", [ReadsFormat.FASTQ, ReadsFormat.BAM])
def test_a_reads_file_cut_short_takes_every_file_with_reads_in_it(
    tmp_path: Path, reads_format: ReadsFormat
) -> None:
    raw, output, ledger = batch(tmp_path, files=3)
    basecall(
        raw,
        output,
        seconds_per_read=0,
        reads_format=reads_format,
        layout=OutputLayout.FLAT,
        cut=True,
    )
    account = account_job(raw, ledger, output)
    [(inside, why)] = account.rejected_reads_files.items()
    expected = "has no EOF block" if reads_format is ReadsFormat.BAM else "is cut short"
    assert inside.startswith("calls.") and expected in why
    assert sorted(each.name for each in account.rejected()) == sorted(ledger)
    # A file whose last reads were cut off (FASTQ: the last record) is named on its own
    # evidence; the others for the reads file they share with it. A BAM loses only its EOF
    # block: every read is there, every file is rejected for the file they share.
    cut_off = [each.name for each in account.files if each.missing]
    assert len(cut_off) == (1 if reads_format is ReadsFormat.FASTQ else 0)
    assert [each.name for each in account.rejected() if each.alone] == cut_off
    assert account.records_out == 0


def test_a_cram_without_its_end_of_file_container_is_cut_short(tmp_path: Path) -> None:
    raw, output, ledger = batch(tmp_path, files=2)
    header, records = bam_records(raw, output)
    cram = output / "calls.cram"
    with pysam.AlignmentFile(str(cram), "wc", header=header) as sink:
        for record in records:
            sink.write(record)
    assert account_job(raw, ledger, output).rejected() == []
    whole = cram.read_bytes()
    cram.write_bytes(whole[:-38])  # CRAM 3's end-of-file container
    account = account_job(raw, ledger, output)
    assert account.rejected_reads_files == {
        "calls.cram": "calls.cram has no end-of-file container: it is cut short"
    }
    assert sorted(each.name for each in account.rejected()) == sorted(ledger)


def test_a_truncated_gzip_is_not_whole_and_a_per_file_layout_keeps_the_rest(tmp_path: Path) -> None:
    raw, output, ledger = batch(tmp_path, files=3)
    basecall(raw, output, seconds_per_read=0)
    first = output / "pass" / "f0.fastq"
    packed = gzip.compress(first.read_bytes())
    (output / "pass" / "f0.fastq.gz").write_bytes(packed[: len(packed) // 2])
    first.unlink()
    account = account_job(raw, ledger, output)
    assert [each.name for each in account.rejected()] == ["f0.pod5"]
    [(inside, why)] = account.rejected_reads_files.items()
    assert inside == "pass/f0.fastq.gz" and "ended before" in why
    assert account.accepted() == ("f1.pod5", "f2.pod5")
    assert account.records_out == 2 * READS


def test_a_read_written_twice_and_a_stranger_are_caught(tmp_path: Path) -> None:
    raw, output, ledger = batch(tmp_path, files=2)
    basecall(raw, output, seconds_per_read=0)
    again = output / "pass" / "again.fastq"
    record = "".join((output / "pass" / "f1.fastq").read_text().splitlines(keepends=True)[:4])
    again.write_text(record)
    account = account_job(raw, ledger, output)
    assert [(each.name, each.twice) for each in account.rejected()] == [("f1.pod5", 1)]
    assert account.accepted() == ("f0.pod5",)
    again.write_text("@not-a-read-of-this-job\nACGT\n+\n!!!!\n")
    account = account_job(raw, ledger, output)
    assert account.rejected_reads_files == {
        "pass/again.fastq": "pass/again.fastq holds 1 reads of no file of this job"
    }
    assert account.rejected() == []  # the stranger's file holds no read of the batch


def test_reads_dropped_on_purpose_are_allowed_up_to_the_setting(tmp_path: Path) -> None:
    raw, output, ledger = batch(tmp_path, files=1)
    basecall(raw, output, seconds_per_read=0)
    fastq = output / "pass" / "f0.fastq"
    lines = fastq.read_text().splitlines(keepends=True)
    fastq.write_text("".join(lines[4:]))  # one read of six left out
    assert account_job(raw, ledger, output).rejected()[0].rejected == (
        f"f0.pod5: {READS - 1} of {READS} reads came out"
    )
    assert account_job(raw, ledger, output, may_drop=0.2).rejected() == []


def test_an_unreadable_raw_file_is_rejected_and_a_deleted_one_is_not_checked(
    tmp_path: Path,
) -> None:
    raw, output, ledger = batch(tmp_path, files=2)
    basecall(raw, output, seconds_per_read=0)
    (raw / "f0.pod5").write_bytes(b"not a POD5 file")
    (raw / "f1.pod5").unlink()
    account = account_job(raw, ledger, output)
    [rejected] = account.rejected()
    assert rejected.name == "f0.pod5" and "cannot be read" in str(rejected.rejected)
    assert account.files[1].reads_in is None and account.files[1].rejected is None
