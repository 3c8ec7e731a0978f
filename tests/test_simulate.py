"""The simulator writes real POD5 files and stands in for a sequencer and a basecaller."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pod5
import pysam
import pytest

from bcmanager.cli import main
from bcmanager.paths import FolderKind, job_folder
from bcmanager.sim.basecaller import (
    CRASH_EXIT_CODE,
    OutputLayout,
    SimulatedCrash,
    basecall,
    file_unreadable,
)
from bcmanager.sim.reads import ReadsFormat, SimulatedRead, barcode_of, split_children
from bcmanager.sim.sequencer import POD5_SIGNATURE, SimulatorError, run_sequencer, write_pod5

DORADO_PATH = re.compile(
    r"^bcmanager-simulation/simulated-sample/20240101_0000_1A_PAO12345_(?P<run>[0-9a-f]{8})/"
    r"(?P<format>bam|fastq)_(?P<verdict>pass|fail)/(?P<barcode>barcode0[1-3]|unclassified)/"
    r"PAO12345_(?P=verdict)_(?P=barcode)_(?P=run)_[0-9a-f]{8}_0\.(?P=format)$"
)
RAW_NAME = re.compile(r"^PAO12345_pass_[0-9a-f]{8}_[0-9a-f]{8}_(?P<index>\d+)\.pod5$")


def pod5_read_ids(path: Path) -> list[str]:
    with pod5.Reader(path) as reader:
        return [str(record.read_id) for record in reader.reads()]


def is_complete(data: bytes) -> bool:
    return data.startswith(POD5_SIGNATURE) and data.endswith(POD5_SIGNATURE)


def parse_fastq(path: Path) -> list[tuple[str, str, str]]:
    """(name, bases, qualities) per record, failing on any malformed record."""
    lines = path.read_text().splitlines()
    assert len(lines) % 4 == 0, f"{path} has {len(lines)} lines"
    records = []
    for start in range(0, len(lines), 4):
        header, bases, plus, qualities = lines[start : start + 4]
        assert header.startswith("@")
        assert plus == "+"
        assert bases and set(bases) <= set("ACGT")
        assert len(bases) == len(qualities)
        records.append((header[1:].split()[0], bases, qualities))
    return records


def make_job(tmp_path: Path, reads_per_file: list[int]) -> tuple[Path, Path, dict[str, list[str]]]:
    """A manager-style job: raw files in INPUT_DIR, an ASSIGNED_ folder of relative symlinks
    to them, and an empty TMPOUTPUT_ folder. Returns both folders and each raw stem's read ids."""
    input_dir, output_dir = tmp_path / "input", tmp_path / "output"
    job_input = input_dir / job_folder(FolderKind.ASSIGNED, "42", "gpu001")
    job_output = output_dir / job_folder(FolderKind.TMPOUTPUT, "42", "gpu001")
    job_input.mkdir(parents=True)
    job_output.mkdir(parents=True)
    expected = {}
    for index, count in enumerate(reads_per_file):
        name = f"run_{index}.pod5"
        expected[f"run_{index}"] = write_pod5(input_dir / name, count, seed=7)
        (job_input / name).symlink_to(f"../{name}")
    return job_input, job_output, expected


def fastq_by_stem(job_output: Path, verdict: str) -> dict[str, list[str]]:
    folder = job_output / verdict
    if not folder.exists():
        return {}
    return {
        path.name.removesuffix(".fastq"): [r[0] for r in parse_fastq(path)]
        for path in folder.iterdir()
    }


def run_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bcmanager", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_write_pod5_round_trips_read_ids_and_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "reads.pod5"
    started = time.perf_counter()
    read_ids = write_pod5(path, 5, seed=3)
    elapsed = time.perf_counter() - started

    assert pod5_read_ids(path) == read_ids
    assert len(set(read_ids)) == 5
    assert is_complete(path.read_bytes())
    assert elapsed < 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["reads.pod5"]


def test_write_pod5_ids_follow_seed_and_name(tmp_path: Path) -> None:
    (tmp_path / "again").mkdir()
    first = write_pod5(tmp_path / "a.pod5", 3, seed=1)
    assert write_pod5(tmp_path / "again" / "a.pod5", 3, seed=1) == first
    assert set(write_pod5(tmp_path / "b.pod5", 3, seed=1)).isdisjoint(first)
    assert set(write_pod5(tmp_path / "c.pod5", 3, seed=2)).isdisjoint(first)


def test_sequencer_cli_leaves_files_half_written_for_a_while_then_complete(
    tmp_path: Path,
) -> None:
    outdir = tmp_path / "run"
    process = run_cli(
        "sequencer", str(outdir), "--files", "3", "--reads-per-file", "3",
        "--interval", "0.05", "--write-seconds", "0.4", "--seed", "5",
    )  # fmt: skip
    half_written_seen: set[str] = set()
    deadline = time.monotonic() + 20
    while process.poll() is None and time.monotonic() < deadline:
        for path in outdir.glob("*.pod5") if outdir.exists() else ():
            if not path.read_bytes().endswith(POD5_SIGNATURE):
                half_written_seen.add(path.name)
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=5)

    assert process.returncode == 0, stderr
    assert "simulated sequencer" in stdout
    assert half_written_seen, "never saw a file present without its end signature"
    raw_files = sorted(outdir.glob("*.pod5"))
    indexes = sorted(int(m["index"]) for p in raw_files if (m := RAW_NAME.match(p.name)))
    assert indexes == [0, 1, 2]
    all_ids = [read_id for path in raw_files for read_id in pod5_read_ids(path)]
    assert len(all_ids) == len(set(all_ids)) == 9
    assert all(is_complete(path.read_bytes()) for path in raw_files)
    (summary,) = outdir.glob("final_summary_PAO12345_*.txt")
    assert "pod5_files_in_final_dest=3\n" in summary.read_text()
    assert sorted(p.name for p in outdir.iterdir()) == sorted(
        [p.name for p in raw_files] + [summary.name]
    )


async def test_sequencer_runs_in_process_as_a_coroutine(tmp_path: Path) -> None:
    lines: list[str] = []
    written = await run_sequencer(
        tmp_path,
        files=2,
        reads_per_file=2,
        interval=0,
        write_seconds=0,
        final_summary=False,
        progress=lines.append,
    )

    assert [path.parent for path in written] == [tmp_path, tmp_path]
    assert all(len(pod5_read_ids(path)) == 2 for path in written)
    assert sorted(tmp_path.iterdir()) == sorted(written)
    assert lines[0].startswith("simulated sequencer")
    with pytest.raises(SimulatorError, match="never overwrites"):
        await run_sequencer(tmp_path, files=1, reads_per_file=1, interval=0, write_seconds=0)


def test_basecaller_writes_one_record_per_read_split_by_fail_fraction(tmp_path: Path) -> None:
    job_input, job_output, expected = make_job(tmp_path, [3, 1, 4, 2, 5, 2, 3, 1])

    results = basecall(job_input, job_output, seconds_per_read=0, fail_fraction=0.5, seed=1)

    passed, failed = fastq_by_stem(job_output, "pass"), fastq_by_stem(job_output, "fail")
    assert passed and failed
    assert passed.keys().isdisjoint(failed.keys())
    assert passed | failed == expected
    assert sum(result.reads for result in results) == 21
    again = tmp_path / "again"
    again.mkdir()
    basecall(job_input, again, seconds_per_read=0, fail_fraction=0.5, seed=1)
    assert fastq_by_stem(again, "fail") == failed


@pytest.mark.parametrize(("fail_fraction", "verdict"), [(0.0, "pass"), (1.0, "fail")])
def test_basecaller_fail_fraction_bounds(
    tmp_path: Path, fail_fraction: float, verdict: str
) -> None:
    job_input, job_output, expected = make_job(tmp_path, [2, 2, 2])

    basecall(job_input, job_output, seconds_per_read=0, fail_fraction=fail_fraction)

    assert [p.name for p in job_output.iterdir()] == [verdict]
    assert fastq_by_stem(job_output, verdict) == expected


def test_basecaller_cli_succeeds_and_says_it_is_a_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_input, job_output, expected = make_job(tmp_path, [2, 3])

    code = main(
        ["simulate", "basecaller", str(job_input), str(job_output), "--seconds-per-read", "0"]
    )

    assert code == 0
    assert "simulated basecaller (not Dorado)" in capsys.readouterr().out
    assert fastq_by_stem(job_output, "pass") == expected


def test_basecaller_cli_fails_clearly_on_an_unreadable_pod5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_input, job_output, _ = make_job(tmp_path, [2])
    complete = (job_input / "run_0.pod5").read_bytes()
    (job_input.parent / "run_1.pod5").write_bytes(complete[: len(complete) // 2])
    (job_input / "run_1.pod5").symlink_to("../run_1.pod5")

    code = main(
        ["simulate", "basecaller", str(job_input), str(job_output), "--seconds-per-read", "0"]
    )

    assert code == 1
    assert "cannot read POD5 file" in capsys.readouterr().err
    assert not (job_output / "pass" / "run_1.fastq").exists()


def test_basecaller_cli_fails_clearly_on_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "basecaller", str(tmp_path / "absent"), str(tmp_path)])

    assert code == 1
    assert "is not a folder" in capsys.readouterr().err


def test_basecaller_dies_on_sigterm_leaving_only_complete_fastq(tmp_path: Path) -> None:
    job_input, job_output, expected = make_job(tmp_path, [4, 40])
    process = run_cli("basecaller", str(job_input), str(job_output), "--seconds-per-read", "0.05")
    first = job_output / "pass" / "run_0.fastq"
    deadline = time.monotonic() + 20
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=5)

    assert process.returncode == -signal.SIGTERM
    assert fastq_by_stem(job_output, "pass") == {"run_0": expected["run_0"]}


@pytest.mark.parametrize(
    "command", [["simulate"], ["simulate", "sequencer"], ["simulate", "basecaller"]]
)
def test_help_says_it_is_a_simulator(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])

    assert exit_info.value.code == 0
    assert "SIMULATOR" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments",
    [
        ["basecaller", "in", "out", "--fail-fraction", "1.5"],
        ["basecaller", "in", "out", "--seconds-per-read", "-1"],
        ["basecaller", "in", "out", "--barcodes", "100"],
        ["basecaller", "in", "out", "--layout", "nested"],
        ["basecaller", "in", "out", "--format", "cram"],
        ["basecaller", "in", "out", "--unreadable-fraction", "-0.1"],
        ["basecaller", "in", "out", "--split-fraction", "2"],
        ["basecaller", "in", "out", "--crash-after", "-1"],
        ["sequencer", "out", "--files", "0"],
        ["sequencer", "out", "--interval", "nan"],
    ],
)
def test_cli_rejects_nonsense_arguments(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", *arguments])

    assert exit_info.value.code == 2


def job_ledger(job_input: Path) -> dict[str, SimulatedRead]:
    """read id -> what the simulator makes of it, for every read of the job's POD5 files."""
    ledger = {}
    for path in sorted(job_input.glob("*.pod5")):
        with pod5.Reader(path) as reader:
            for read in reader.reads():
                ledger[str(read.read_id)] = SimulatedRead.of(str(read.read_id), read.num_samples)
    return ledger


def bam_records(path: Path) -> tuple[dict[str, object], list[tuple[str, str, bytes, int]]]:
    """A BAM's header and (name, bases, phred qualities, flag) of each record, read by pysam."""
    with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
        records = [
            (r.query_name or "", r.query_sequence or "", bytes(r.query_qualities or b""), r.flag)
            for r in bam.fetch(until_eof=True)
        ]
        return bam.header.to_dict(), records


def test_simulated_reads_vary_in_length_and_quality_and_follow_the_read_id() -> None:
    reads = [SimulatedRead.of(f"read-{n}", 4000) for n in range(200)]

    assert len({len(read.bases) // 100 for read in reads}) >= 4
    assert len({int(read.mean_qscore) for read in reads}) >= 10
    assert all(len(read.bases) == len(read.qualities) for read in reads)
    assert SimulatedRead.of("read-7", 4000) == reads[7]
    shares = {barcode_of(read.read_id, 3) for read in reads}
    assert shares == {"barcode01", "barcode02", "barcode03", "unclassified"}
    assert barcode_of("read-1", 0) is None


def test_the_dorado_layout_is_dorados_output_dir_tree_split_by_mean_q(tmp_path: Path) -> None:
    job_input, job_output, expected = make_job(tmp_path, [10, 10, 10])
    ledger = job_ledger(job_input)

    written = basecall(
        job_input, job_output, seconds_per_read=0, reads_format=ReadsFormat.BAM,
        layout=OutputLayout.DORADO, barcodes=3, model="my-model@v1",
    )  # fmt: skip

    seen: dict[str, str] = {}
    for item in written:
        match = DORADO_PATH.match(str(item.path.relative_to(job_output)))
        assert match, item.path
        header, records = bam_records(item.path)
        assert len(records) == item.reads
        (program,) = header["PG"]
        assert (program["ID"], program["PN"]) == ("basecaller", "bcmanager-simulate")
        assert "basecall_model=my-model@v1" in header["RG"][0]["DS"]
        for name, bases, qualities, flag in records:
            read = ledger[name]
            assert (bases, qualities, flag) == (read.bases, read.qualities, 4)
            assert match["barcode"] == barcode_of(name, 3)
            assert (match["verdict"] == "pass") == (read.mean_qscore >= 9)
            seen[name] = match["verdict"]
    assert sorted(seen) == sorted(read for reads in expected.values() for read in reads)
    assert set(seen.values()) == {"pass", "fail"}
    assert sorted(p.name for p in job_output.rglob("*") if p.is_file()) == sorted(
        item.path.name for item in written
    )


def test_the_flat_layout_is_one_calls_file_with_every_read(tmp_path: Path) -> None:
    job_input, job_output, expected = make_job(tmp_path, [3, 4])
    ledger = job_ledger(job_input)

    code = main(
        ["simulate", "basecaller", str(job_input), str(job_output), "--seconds-per-read", "0",
         "--layout", "flat", "--barcodes", "2"]
    )  # fmt: skip

    assert code == 0
    assert [p.name for p in job_output.iterdir()] == ["calls.fastq"]
    records = parse_fastq(job_output / "calls.fastq")
    assert [name for name, _, _ in records] == [r for reads in expected.values() for r in reads]
    for name, bases, qualities in records:
        assert bases == ledger[name].bases
        assert [ord(c) - 33 for c in qualities] == list(ledger[name].qualities)


def test_the_pass_fail_layout_in_bam_keeps_a_file_per_raw_file_and_barcode(tmp_path: Path) -> None:
    job_input, job_output, expected = make_job(tmp_path, [6, 6])

    basecall(
        job_input, job_output, seconds_per_read=0, fail_fraction=1.0,
        reads_format=ReadsFormat.BAM, barcodes=2,
    )  # fmt: skip

    found: dict[str, set[str]] = {}
    for path in job_output.rglob("*.bam"):
        verdict, barcode, name = path.relative_to(job_output).parts
        assert verdict == "fail"
        for read_id, *_ in bam_records(path)[1]:
            assert barcode_of(read_id, 2) == barcode
            found.setdefault(name.removesuffix(".bam"), set()).add(read_id)
    assert found == {stem: set(reads) for stem, reads in expected.items()}


def test_the_same_job_gives_the_same_bytes(tmp_path: Path) -> None:
    job_input, job_output, _ = make_job(tmp_path, [5, 5])
    again = tmp_path / "again"
    again.mkdir()

    for output in (job_output, again):
        basecall(job_input, output, seconds_per_read=0, layout=OutputLayout.DORADO, barcodes=2)

    first = {p.relative_to(job_output): p.read_bytes() for p in job_output.rglob("*.fastq")}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*.fastq")}
    assert first == second and len(first) >= 3


# Dorado's behaviours that lose or change reads. Each test judges the output with its own
# parsing; the helpers of bcmanager.sim only say what the seed chose.

BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
DORADO_TIME = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] "


def dorado_child_id(parent: str, index: int) -> str:
    """Dorado's utils::derive_uuid(parent, to_string(index)), written out here on its own."""
    raw = bytearray(hashlib.sha256(f"{parent}{index}".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def all_bam_records(job_output: Path) -> list[pysam.AlignedSegment]:
    records = []
    for path in sorted(job_output.rglob("*.bam")):
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
            records += list(bam.fetch(until_eof=True))
    return records


def test_the_helpers_follow_seed_and_fraction_and_name_pieces_as_dorado() -> None:
    ids = [f"{uuid.UUID(int=n, version=4)}" for n in range(400)]

    assert all(split_children(read_id, 3, 0.0) == [] for read_id in ids)
    everything = [split_children(read_id, 3, 1.0) for read_id in ids]
    assert {len(children) for children in everything} == {2, 3}
    for read_id, children in zip(ids, everything, strict=True):
        assert children == [dorado_child_id(read_id, n) for n in range(len(children))]
    some = sum(bool(split_children(read_id, 3, 0.25)) for read_id in ids)
    assert 60 < some < 140
    assert [split_children(read_id, 3, 0.25) for read_id in ids[:50]] == [
        split_children(read_id, 3, 0.25) for read_id in ids[:50]
    ]
    assert [split_children(read_id, 4, 0.25) for read_id in ids] != [
        split_children(read_id, 3, 0.25) for read_id in ids
    ]
    stems = [f"run_{n}" for n in range(400)]
    assert not any(file_unreadable(stem, 1, 0.0) for stem in stems)
    assert all(file_unreadable(stem, 1, 1.0) for stem in stems)
    assert 60 < sum(file_unreadable(stem, 1, 0.25) for stem in stems) < 140


def test_unreadable_files_are_named_as_dorado_names_them_and_skipped_with_exit_0(
    tmp_path: Path,
) -> None:
    job_input, job_output, expected = make_job(tmp_path, [2, 3, 2, 3, 2, 3])
    skipped = {stem for stem in expected if file_unreadable(stem, 0, 0.5)}
    assert 0 < len(skipped) < len(expected)  # seed 0 skips some files, not all

    process = run_cli(
        "basecaller", str(job_input), str(job_output), "--seconds-per-read", "0",
        "--unreadable-fraction", "0.5",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    named = re.findall(
        rf"^{DORADO_TIME}\[error\] POD5 Failed to open file - "
        r"'IOError: Invalid signature in file' @ '(.+)'\.$",
        stderr,
        re.MULTILINE,
    )
    assert sorted(named) == sorted(str(job_input / f"{stem}.pod5") for stem in skipped)
    assert fastq_by_stem(job_output, "pass") == {
        stem: reads for stem, reads in expected.items() if stem not in skipped
    }


def test_a_corrupt_pod5_is_skipped_with_skip_unreadable_as_dorado_skips_it(
    tmp_path: Path,
) -> None:
    job_input, job_output, expected = make_job(tmp_path, [2, 2])
    corrupt = job_input / "run_1.pod5"
    data = corrupt.read_bytes()
    (job_input.parent / "run_1.pod5").write_bytes(data[: len(data) // 2])

    process = run_cli(
        "basecaller", str(job_input), str(job_output), "--seconds-per-read", "0",
        "--skip-unreadable",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    line = f"[error] POD5 Failed to open file - 'IOError: Invalid signature in file' @ '{corrupt}'."
    assert [row.split("] ", 1)[1] for row in stderr.splitlines() if "POD5" in row] == [line]
    assert fastq_by_stem(job_output, "pass") == {"run_0": expected["run_0"]}


def test_with_no_file_it_can_open_it_fails_as_dorado_does(tmp_path: Path) -> None:
    job_input, job_output, _ = make_job(tmp_path, [2, 2])

    process = run_cli("basecaller", str(job_input), str(job_output), "--unreadable-fraction", "1")
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert re.search(rf"^{DORADO_TIME}\[error\] No reads found in path: {job_input}$", stderr, re.M)
    assert list(job_output.iterdir()) == []


def test_split_reads_come_out_as_dorados_pieces_with_pi_naming_their_parent(
    tmp_path: Path,
) -> None:
    job_input, job_output, expected = make_job(tmp_path, [10, 10, 10])
    ledger = job_ledger(job_input)

    process = run_cli(
        "basecaller", str(job_input), str(job_output), "--seconds-per-read", "0",
        "--format", "bam", "--split-fraction", "0.4", "--seed", "5",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    whole: list[str] = []
    pieces: dict[str, list[pysam.AlignedSegment]] = defaultdict(list)
    for record in all_bam_records(job_output):
        if record.has_tag("pi"):
            assert record.get_tag("pi") in ledger
            pieces[str(record.get_tag("pi"))].append(record)
        else:
            whole.append(record.query_name or "")
    assert pieces and whole
    assert sorted(whole + list(pieces)) == sorted(r for reads in expected.values() for r in reads)
    for parent, records in pieces.items():
        assert len(records) in (2, 3)
        names = [record.query_name for record in records]
        assert names == [dorado_child_id(parent, n) for n in range(len(records))]
        assert names == split_children(parent, 5, 0.4)
        assert "".join(record.query_sequence or "" for record in records) == ledger[parent].bases
        starts = [record.get_tag("sp") for record in records]
        assert starts[0] == 0 and starts == sorted(set(starts))
    assert all(split_children(read_id, 5, 0.4) == [] for read_id in whole)


def test_split_reads_in_fastq_are_named_as_dorado_names_them_and_carry_no_parent(
    tmp_path: Path,
) -> None:
    job_input, job_output, expected = make_job(tmp_path, [10, 10])
    ledger = job_ledger(job_input)

    basecall(job_input, job_output, seconds_per_read=0, split_fraction=0.5, seed=2)

    split = 0
    for stem, reads in expected.items():
        lines = (job_output / "pass" / f"{stem}.fastq").read_text().splitlines()
        records = [lines[n : n + 4] for n in range(0, len(lines), 4)]
        assert not any("pi:Z:" in header for header, *_ in records)
        by_name = {header[1:].split()[0]: bases for header, bases, *_ in records}
        wanted = []
        for read_id in reads:
            children = split_children(read_id, 2, 0.5) or [read_id]
            split += len(children) > 1
            assert "".join(by_name[child] for child in children) == ledger[read_id].bases
            wanted += children
        assert list(by_name) == wanted
    assert 0 < split < 20


@pytest.mark.parametrize("reads_format", ["fastq", "bam"])
def test_cut_leaves_the_last_reads_file_cut_short_and_exits_0(
    tmp_path: Path, reads_format: str
) -> None:
    job_input, _, _ = make_job(tmp_path, [3, 4])
    outputs = {}
    for name, cut in (("whole", []), ("cut", ["--cut"])):
        outputs[name] = tmp_path / name
        outputs[name].mkdir()
        process = run_cli(
            "basecaller", str(job_input), str(outputs[name]), "--seconds-per-read", "0",
            "--format", reads_format, *cut,
        )  # fmt: skip
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr

    first, last = (f"pass/run_{n}.{reads_format}" for n in (0, 1))
    assert (outputs["cut"] / first).read_bytes() == (outputs["whole"] / first).read_bytes()
    whole, cut_short = ((outputs[name] / last).read_bytes() for name in ("whole", "cut"))
    if reads_format == "bam":
        assert whole.endswith(BGZF_EOF)
        assert cut_short == whole[: -len(BGZF_EOF)]
        with pytest.raises(OSError, match="EOF marker"):
            pysam.AlignmentFile(str(outputs["cut"] / last), "rb", check_sq=False)
    else:
        lines = cut_short.decode().split("\n")
        assert lines[-2:] == ["+", ""] and len(lines) % 4 == 0
        assert whole.decode().split("\n")[:-2] == lines[:-1]


def test_crash_after_dies_mid_batch_with_sigabrts_code_leaving_what_was_done(
    tmp_path: Path,
) -> None:
    job_input, job_output, expected = make_job(tmp_path, [3, 3, 3, 3])

    process = run_cli(
        "basecaller", str(job_input), str(job_output), "--seconds-per-read", "0",
        "--crash-after", "7",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == CRASH_EXIT_CODE == 134
    assert "crashed on purpose after 7 reads" in stderr
    done = {p.stem: [r[0] for r in parse_fastq(p)] for p in job_output.glob("pass/*.fastq")}
    assert done == {"run_0": expected["run_0"], "run_1": expected["run_1"]}
    assert sorted(p.name for p in (job_output / "pass").iterdir()) == [
        ".run_2.fastq.partial", "run_0.fastq", "run_1.fastq"
    ]  # fmt: skip
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(SimulatedCrash):
        basecall(job_input, again, seconds_per_read=0, crash_after=0)
    assert list(again.iterdir()) == []
