"""The run's yield, folded from the agents' bcm-stats.json files: exact for known reads, bounded
whatever the files say, a bad file a one-line reason, and rebuilt after a restart from a record
or from the jobs' log folders."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bcmanager.facility.yieldledger import (
    BARCODES_MAX,
    BASECALLERS_MAX,
    ENGINES_MAX,
    HOUR,
    LENGTH_BINS,
    STATS_MAX,
    YIELD_BUCKETS,
    JobStats,
    RunYield,
    read_job_stats,
    rebuild_yield,
)
from bcmanager.paths import ATTEMPT_FILE, STATS_FILE
from conftest import Read, job_stats, known_reads, n50

BARCODES = (None, "barcode01", "barcode02", "unclassified")
T0 = 1_764_000_000.0  # a Unix time on an hour boundary


def stats(reads: list[Read], **options: Any) -> JobStats:
    return JobStats.model_validate_json(json.dumps(job_stats(reads, **options)))


def jobs_of(reads: list[Read], size: int) -> list[list[Read]]:
    return [reads[start : start + size] for start in range(0, len(reads), size)]


def test_known_reads_add_up_exactly() -> None:
    reads = known_reads(3000, seed=1, barcodes=BARCODES)
    ledger = RunYield()
    for index, job in enumerate(jobs_of(reads, 250)):
        ledger.add(stats(job), T0 + index * 600, engine=f"gpu{index % 3}", busy_seconds=100.0)
    status = ledger.status()

    passed = [read for read in reads if read.passed]
    assert status.jobs == 12
    assert status.reads == 3000
    assert status.bases == sum(read.length for read in reads)
    assert status.pass_reads == len(passed)
    assert status.pass_bases == sum(read.length for read in passed)
    assert status.fail_reads == 3000 - len(passed)
    assert status.fail_bases == status.bases - status.pass_bases
    assert status.pass_fraction == round(len(passed) / 3000, 4)
    assert status.mean_q == pytest.approx(sum(read.q for read in reads) / 3000, abs=0.005)
    # N50 to the bins' resolution: here the start of the 100-base bin that holds the true N50.
    assert status.n50_resolution == 100
    assert status.n50 == n50(read.length for read in reads) // 100 * 100

    for barcode in status.barcodes:
        mine = [read for read in reads if read.barcode == barcode.barcode]
        assert barcode.reads == len(mine)
        assert barcode.bases == sum(read.length for read in mine)
        assert barcode.pass_reads == sum(read.passed for read in mine)
    assert [barcode.barcode for barcode in status.barcodes] == [
        None,
        "barcode01",
        "barcode02",
        "unclassified",
    ]

    assert status.q_histogram.bin_width == 1
    assert status.q_histogram.beyond == 0
    by_q = Counter(int(read.q) for read in reads)
    assert status.q_histogram.counts == [by_q[q] for q in range(max(by_q) + 1)]
    lengths = status.length_histogram
    assert sum(lengths.counts) + lengths.beyond == 3000
    assert len(lengths.counts) <= 100
    assert lengths.counts == [
        sum(read.length // lengths.bin_width == index for read in reads)
        for index in range(len(lengths.counts))
    ]
    assert lengths.beyond <= 0.005 * 3000 + 1

    # Two hours of jobs, every ten minutes: six jobs in each hour.
    assert status.yield_over_time.bucket_seconds == HOUR
    assert status.yield_over_time.start == T0
    bases = [sum(read.length for read in job) for job in jobs_of(reads, 250)]
    assert status.yield_over_time.bases == [sum(bases[:6]), sum(bases[6:])]

    assert {engine.engine: engine.jobs for engine in status.engines} == {
        "gpu0": 4,
        "gpu1": 4,
        "gpu2": 4,
    }
    gpu0 = next(engine for engine in status.engines if engine.engine == "gpu0")
    assert gpu0.bases == sum(bases[0::3])
    assert gpu0.busy_seconds == 400.0
    assert gpu0.bases_per_hour == pytest.approx(gpu0.bases * 9, abs=0.1)
    assert status.models == ["dna_r10.4.1_e8.2_400bps_hac@v5.0.0"]
    assert not status.mixed_models
    assert status.basecallers[0].jobs == 12


def test_the_n50_is_within_one_bin_of_the_exact_figure() -> None:
    """Over 100 runs: always within a bin width, and nearly always the start of the bin that
    holds the exact N50 (the next bin's only when half the bases fall near a bin's edge)."""
    bins_off = Counter()
    for seed in range(100):
        reads = known_reads(1000, seed=seed)
        ledger = RunYield()
        ledger.add(stats(reads), T0)
        exact = n50(read.length for read in reads)
        found = ledger.n50()
        assert found is not None and abs(found - exact) <= 100
        bins_off[found // 100 - exact // 100] += 1
    assert set(bins_off) <= {0, 1} and bins_off[0] >= 95


def test_with_one_base_bins_the_n50_is_exact() -> None:
    reads = known_reads(500, seed=2)
    ledger = RunYield()
    ledger.add(stats(reads, length_bin=1), T0)
    assert ledger.status().n50 == n50(read.length for read in reads)
    assert ledger.status().n50_resolution == 1


def test_jobs_with_other_bin_widths_are_binned_exactly_in_a_common_width() -> None:
    reads = known_reads(600, seed=3)
    ledger = RunYield()
    ledger.add(stats(reads[:200], length_bin=50), T0)
    ledger.add(stats(reads[200:400], length_bin=100), T0)
    assert ledger.lengths.width == 100
    ledger.add(stats(reads[400:], length_bin=300), T0)
    assert ledger.lengths.width == 300
    assert ledger.lengths.counts == dict(Counter(read.length // 300 * 300 for read in reads))


def test_two_models_are_flagged() -> None:
    ledger = RunYield()
    ledger.add(stats(known_reads(10, 4), model="dna_r10.4.1_e8.2_400bps_hac@v5.0.0"), T0)
    ledger.add(stats(known_reads(10, 5), model="dna_r10.4.1_e8.2_400bps_sup@v5.0.0"), T0)
    ledger.add(stats(known_reads(10, 6), model=None), T0)
    status = ledger.status()
    assert status.mixed_models
    assert status.models == [
        "dna_r10.4.1_e8.2_400bps_hac@v5.0.0",
        "dna_r10.4.1_e8.2_400bps_sup@v5.0.0",
    ]
    assert sorted(use.model or "" for use in status.basecallers) == ["", *status.models]


def test_reads_files_the_agent_could_not_read_are_counted_and_named() -> None:
    ledger = RunYield()
    files = [
        {"path": "pass/a.fastq", "reads": 10, "error": None},
        {"path": "pass/b.bam", "reads": None, "error": "pysam is not installed"},
    ]
    ledger.add(stats(known_reads(10, 7), files=files, errors=["odd\nthing"]), T0)
    status = ledger.status()
    assert status.files_unreadable == 1
    assert status.problems == ["pass/b.bam: pysam is not installed", "odd thing"]


def test_a_long_run_gets_wider_buckets_and_keeps_every_base() -> None:
    ledger = RunYield()
    for hour in range(0, 2 * YIELD_BUCKETS, 7):
        ledger.add(stats([Read(1000, 20.0)]), T0 + hour * HOUR)
    series = ledger.status().yield_over_time
    assert series.bucket_seconds == 2 * HOUR
    assert len(series.bases) <= YIELD_BUCKETS
    assert sum(series.bases) == ledger.status().bases == 1000 * len(range(0, 800, 7))


def test_memory_is_bounded_whatever_the_files_say() -> None:
    """Lengths in 5000 distinct bins, 2000 barcodes, 100 models, 500 engines: the ledger holds
    a bounded number of each, and its totals stay exact."""
    ledger = RunYield()
    total_reads = total_bases = 0
    for job in range(100):
        reads = [
            Read(job * 5000 + index * 100, 15.0, f"alias{job * 20 + index}") for index in range(20)
        ] + [Read(length, 12.0) for length in range(job * 50 * 100, (job + 1) * 50 * 100, 100)]
        total_reads += len(reads)
        total_bases += sum(read.length for read in reads)
        ledger.add(stats(reads, model=f"model{job}"), T0 + job, engine=f"pod-{job}-a")
        ledger.add(stats([], model=f"model{job}"), T0 + job, engine=f"pod-{job}-b")
        ledger.add(stats([]), T0 + job, engine=f"pod-{job}-c")
        ledger.add(stats([]), T0 + job, engine=f"pod-{job}-d")
        ledger.add(stats([]), T0 + job, engine=f"pod-{job}-e")
    assert len(ledger.lengths.counts) <= LENGTH_BINS
    assert len(ledger.barcodes) == BARCODES_MAX
    assert len(ledger.basecallers) == BASECALLERS_MAX
    assert len(ledger.engines) == ENGINES_MAX + 1
    status = ledger.status()
    assert (status.reads, status.bases) == (total_reads, total_bases)
    assert (
        sum(barcode.reads for barcode in status.barcodes)
        + (status.more_barcodes.reads if status.more_barcodes else 0)
        == total_reads
    )
    assert sum(engine.reads for engine in status.engines) == total_reads
    assert sum(use.jobs for use in status.basecallers) + status.basecallers_not_listed == 500
    assert sum(status.length_histogram.counts) + status.length_histogram.beyond == total_reads
    assert len(status.model_dump_json()) < 200_000
    assert len(json.dumps(ledger.to_record())) < 200_000


def test_a_record_brings_it_back_after_a_restart() -> None:
    ledger = RunYield()
    for index, job in enumerate(jobs_of(known_reads(900, 8, BARCODES), 100)):
        ledger.add(stats(job), T0 + index * 900, engine="gpu1", busy_seconds=60.5)
    ledger.add_without_stats("123", "no bcm-stats.json")
    record = json.loads(json.dumps(ledger.to_record()))
    assert RunYield.from_record(record).status() == ledger.status()
    again = RunYield.from_record(record)
    again.add(stats([Read(5000, 20.0)]), T0)
    assert again.status().reads == 901


@pytest.mark.parametrize(
    "damage",
    [
        lambda record: None,
        lambda record: [],
        lambda record: {**record, "format": "something else"},
        lambda record: {**record, "jobs": -1},
        lambda record: {**record, "total": [[1, 2]]},
        lambda record: {**record, "lengths": {"width": 0, "counts": []}},
        lambda record: {k: v for k, v in record.items() if k != "engines"},
    ],
)
def test_a_damaged_record_says_so_in_one_line(damage: Any) -> None:
    ledger = RunYield()
    ledger.add(stats(known_reads(10, 9)), T0, engine="gpu1")
    with pytest.raises(ValueError, match=r"^not a run yield record: ") as raised:
        RunYield.from_record(damage(ledger.to_record()))
    assert "\n" not in str(raised.value)


def good_file() -> dict[str, Any]:
    return job_stats([Read(150, 12.5), Read(420, 20.0, passed=False)])


def _with(**changes: Any) -> bytes:
    return json.dumps({**good_file(), **changes}).encode()


def _group(**changes: Any) -> bytes:
    data = good_file()
    data["groups"][0].update(changes)
    return json.dumps(data).encode()


BAD_FILES: dict[str, bytes] = {
    "not JSON": b"{not json",
    "not UTF-8": b'{"format": "\xff\xfe"}',
    "a list": b"[1, 2, 3]",
    "empty": b"",
    "another format": _with(format="bcmanager-job-statistics"),
    "another version": _with(version=2),
    "no groups": json.dumps({k: v for k, v in good_file().items() if k != "groups"}).encode(),
    "a zero bin": _with(length_bin=0),
    "negative reads": _group(reads=-1),
    "reads as text": _group(reads="many"),
    "a huge count": _group(reads=10**30),
    "bases outside the bins": _group(bases=10_000),
    "a histogram short of the reads": _group(length_hist={"100": 0}),
    "a bin off the width": _group(length_hist={"150": 1}, bases=150),
    "a negative bin": _group(length_hist={"-100": 1}),
    "a Q above any read": _group(qscore_sum=1000.0),
    "a NaN Q sum": _with().replace(b'"qscore_sum": 12.5', b'"qscore_sum": NaN'),
    "a Q bin of text": _group(q_hist={"twelve": 1}),
    "a long barcode": _group(barcode="b" * 1000),
    "deep nesting": b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_stats_file_is_a_one_line_reason(tmp_path: Path, name: str) -> None:
    path = tmp_path / STATS_FILE
    path.write_bytes(BAD_FILES[name])
    reason = read_job_stats(path)
    assert isinstance(reason, str), reason
    assert reason.startswith(f"{STATS_FILE} is not valid: ")
    assert "\n" not in reason and len(reason) < 400


def test_the_good_file_of_the_bad_ones_is_read(tmp_path: Path) -> None:
    path = tmp_path / STATS_FILE
    path.write_text(json.dumps(good_file() | {"unknown key": {"any": "thing"}}))
    stats_read = read_job_stats(path)
    assert isinstance(stats_read, JobStats)
    assert [group.reads for group in stats_read.groups] == [1, 1]


def test_missing_odd_and_oversized_files_are_reasons_too(tmp_path: Path) -> None:
    assert read_job_stats(tmp_path / STATS_FILE) == f"no {STATS_FILE}"
    folder = tmp_path / "folder"
    (folder / STATS_FILE).mkdir(parents=True)
    assert read_job_stats(folder / STATS_FILE) == f"{STATS_FILE} is not a regular file"
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "real.json").write_text(json.dumps(good_file()))
    (linked / STATS_FILE).symlink_to(tmp_path / "real.json")
    assert "cannot be opened" in str(read_job_stats(linked / STATS_FILE))
    big = tmp_path / "big"
    big.mkdir()
    data = good_file()
    data["errors"] = ["x" * 1000] * (STATS_MAX // 1000)
    (big / STATS_FILE).write_text(json.dumps(data))
    assert read_job_stats(big / STATS_FILE) == f"{STATS_FILE} is larger than 1024 KiB"


def write_log_folder(
    output_dir: Path,
    jobid: str,
    engine: str,
    stats_file: dict[str, Any] | bytes | None,
    **attempt: Any,
) -> Path:
    folder = output_dir / f"LOGOUTPUT_{jobid}_{engine}"
    folder.mkdir(parents=True)
    if isinstance(stats_file, dict):
        (folder / STATS_FILE).write_text(json.dumps(stats_file))
    elif stats_file is not None:
        (folder / STATS_FILE).write_bytes(stats_file)
    if attempt:
        (folder / ATTEMPT_FILE).write_text(json.dumps(attempt))
    return folder


def test_rebuilt_from_the_log_folders_after_a_restart(tmp_path: Path) -> None:
    reads = known_reads(800, 10, BARCODES)
    folders = [
        write_log_folder(tmp_path, str(100 + i), f"gpu{i % 2}", job_stats(job), seconds=30.0)
        for i, job in enumerate(jobs_of(reads, 100))
    ]
    folders.append(write_log_folder(tmp_path, "900", "gpu0", None))
    folders.append(write_log_folder(tmp_path, "901", "gpu1", b"{broken"))
    folders.append(write_log_folder(tmp_path, "902", "gpu1", job_stats(reads[:5])))
    first_ended = min(os.stat(folder).st_ctime for folder in folders)

    ledger = rebuild_yield(folders)
    status = ledger.status()
    assert status.jobs == 9
    assert status.reads == 805
    assert status.bases == sum(read.length for read in reads) + sum(r.length for r in reads[:5])
    assert status.jobs_without_stats == 2
    assert status.problems[0] == f"job 900: no {STATS_FILE}"
    assert status.problems[1].startswith(f"job 901: {STATS_FILE} is not valid: Invalid JSON")
    engines = {engine.engine: engine for engine in status.engines}
    assert engines["gpu0"].jobs == 4 and engines["gpu0"].busy_seconds == 120.0
    assert engines["gpu1"].jobs == 5 and engines["gpu1"].busy_seconds == 120.0
    # Each job is dated by its folder's status change (the rename that ended it).
    series = status.yield_over_time
    assert series.start == math.floor(first_ended / HOUR) * HOUR
    assert sum(series.bases) == status.bases


def test_an_engines_throughput_counts_only_its_timed_jobs() -> None:
    ledger = RunYield()
    ledger.add(stats([Read(3000, 20.0)]), T0, engine="gpu1", busy_seconds=60.0)
    ledger.add(stats([Read(5000, 20.0)]), T0, engine="gpu1")
    (engine,) = ledger.status().engines
    assert (engine.jobs, engine.bases, engine.busy_seconds) == (2, 8000, 60.0)
    assert engine.bases_per_hour == 3000 * 60
