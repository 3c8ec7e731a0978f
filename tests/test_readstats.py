"""The agent's read statistics: exact against the test's own ledger of the reads it made, for
every format and layout the simulated basecaller writes, calm on hostile output, and written
by a real agent into each job's output, where the manager keeps it with the job's logs."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pod5
import pysam
import pytest

from bcmanager import __version__
from bcmanager.agent.basecaller import Attempt
from bcmanager.agent.client import Assignment, Lease, LeaseEnd
from bcmanager.agent.loop import Agent
from bcmanager.agent.settings import AgentSettings
from bcmanager.facility.yieldledger import rebuild_yield
from bcmanager.paths import ATTEMPT_FILE, STATS_FILE, FolderKind, parse_job_folder
from bcmanager.reads.stats import (
    CUT_SHORT,
    MAX_FILES_LISTED,
    PYSAM_MISSING,
    basecaller_from_command,
    job_stats,
    phred_mean_qscore,
    write_job_stats,
)
from bcmanager.sim.basecaller import OutputLayout, basecall
from bcmanager.sim.reads import MIN_QSCORE, ReadsFormat, SimulatedRead, barcode_of
from bcmanager.sim.sequencer import write_pod5
from conftest import Run, Server, wait_for

MODEL = "dna_r10.4.1_e8.2_400bps_sup@v5.0.0"
BARCODES = 3
Key = tuple[str | None, bool]


def dorado_mean_q(phreds: bytes) -> float:
    """The test's own mean Q-score, as Dorado computes it: the mean error probability of the
    qualities after the first 60 (of a read longer than that), back to phred."""
    kept = phreds[60:] if len(phreds) > 60 else phreds
    if not kept:
        return 0.0
    mean_error = sum(10 ** (-q / 10) for q in kept) / len(kept)
    return round(-10 * math.log10(mean_error), 6)


def pod5_reads(folder: Path) -> list[SimulatedRead]:
    """Every read of the POD5 files in ``folder``, as the simulator calls it."""
    found = []
    for path in sorted(folder.glob("*.pod5")):
        with pod5.Reader(path) as reader:
            found += [SimulatedRead.of(str(r.read_id), r.num_samples) for r in reader.reads()]
    return found


def expected_groups(
    reads: list[SimulatedRead], key: Callable[[SimulatedRead], Key]
) -> dict[Key, dict[str, Any]]:
    """The groups a stats file must hold, from the test's ledger."""
    groups: dict[Key, dict[str, Any]] = {}
    for read in reads:
        group = groups.setdefault(
            key(read),
            {"reads": 0, "bases": 0, "qscore_sum": 0.0, "length_hist": Counter(),
             "q_hist": Counter(), "sha": 0},
        )  # fmt: skip
        q = dorado_mean_q(read.qualities)
        group["reads"] += 1
        group["bases"] += len(read.bases)
        group["qscore_sum"] += q
        group["length_hist"][str(len(read.bases) // 100 * 100)] += 1
        group["q_hist"][str(math.floor(q))] += 1
        group["sha"] += int.from_bytes(hashlib.sha256(read.read_id.encode()).digest(), "big")
    return groups


def assert_groups_match(stats: dict[str, Any], expected: dict[Key, dict[str, Any]]) -> None:
    found = {(g["barcode"], g["pass"]): g for g in stats["groups"]}
    assert found.keys() == expected.keys()
    for key, group in expected.items():
        got = found[key]
        assert (got["reads"], got["bases"]) == (group["reads"], group["bases"]), key
        assert got["qscore_sum"] == pytest.approx(group["qscore_sum"], rel=1e-9), key
        assert got["length_hist"] == dict(group["length_hist"]), key
        assert got["q_hist"] == dict(group["q_hist"]), key
        assert got["read_ids_sha256"] == f"{group['sha'] % (1 << 256):064x}", key


def make_job(tmp_path: Path, files: int = 3, reads: int = 15) -> tuple[Path, Path]:
    job_input, job_output = tmp_path / "in", tmp_path / "out"
    job_input.mkdir()
    job_output.mkdir()
    for index in range(files):
        write_pod5(job_input / f"raw_{index}.pod5", reads, seed=11)
    return job_input, job_output


def file_verdicts(job_output: Path) -> dict[str, bool]:
    """raw stem -> passed, from where the pass-fail layout put each raw file's reads."""
    return {
        path.name.split(".")[0]: path.relative_to(job_output).parts[0] == "pass"
        for path in job_output.rglob("raw_*")
    }


@pytest.mark.parametrize("reads_format", list(ReadsFormat))
@pytest.mark.parametrize("layout", list(OutputLayout))
def test_counts_are_exact_in_every_format_and_layout_with_barcodes(
    tmp_path: Path, reads_format: ReadsFormat, layout: OutputLayout
) -> None:
    job_input, job_output = make_job(tmp_path)
    written = basecall(
        job_input, job_output, seconds_per_read=0, fail_fraction=0.5, seed=2,
        reads_format=reads_format, layout=layout, barcodes=BARCODES, model=MODEL,
    )  # fmt: skip
    ledger = pod5_reads(job_input)
    by_id = {read.read_id: read for read in ledger}

    stats = job_stats(job_output, ["dorado", "basecaller", "hac", str(job_input)])

    if layout is OutputLayout.FLAT:
        expected = expected_groups(ledger, lambda read: (None, True))
    elif layout is OutputLayout.DORADO:
        expected = expected_groups(
            ledger,
            lambda read: (
                barcode_of(read.read_id, BARCODES),
                dorado_mean_q(read.qualities) >= MIN_QSCORE,
            ),
        )
    else:
        verdicts = file_verdicts(job_output)
        assert set(verdicts.values()) == {True, False}
        stem_of = {}
        for path in sorted(job_input.glob("*.pod5")):
            with pod5.Reader(path) as reader:
                stem_of.update({str(r.read_id): path.stem for r in reader.reads()})
        expected = expected_groups(
            ledger,
            lambda read: (
                barcode_of(read.read_id, BARCODES),
                verdicts[stem_of[read.read_id]],
            ),
        )
    assert_groups_match(stats, expected)
    assert sum(g["reads"] for g in stats["groups"]) == len(by_id) == 45
    assert stats["errors"] == []
    assert sorted((f["path"], f["reads"]) for f in stats["files"]) == sorted(
        (str(item.path.relative_to(job_output)), item.reads) for item in written
    )
    if reads_format is ReadsFormat.BAM:
        assert stats["basecaller"] == {
            "name": "bcmanager-simulate", "version": __version__, "model": MODEL,
        }  # fmt: skip
    else:
        assert stats["basecaller"] == {"name": "dorado", "version": None, "model": "hac"}
    assert max(len(g["q_hist"]) for g in stats["groups"]) > 1  # qualities vary between reads
    assert max(len(g["length_hist"]) for g in stats["groups"]) > 1  # and so do lengths
    assert stats["length_bin"] == 100 and stats["q_bin"] == 1


def test_gzip_fastq_counts_as_the_plain_one(tmp_path: Path) -> None:
    job_input, job_output = make_job(tmp_path)
    basecall(
        job_input, job_output, seconds_per_read=0, layout=OutputLayout.DORADO, barcodes=BARCODES
    )
    plain = job_stats(job_output, [])
    for path in list(job_output.rglob("*.fastq")):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()

    zipped = job_stats(job_output, [])

    assert zipped["groups"] == plain["groups"]
    assert all(f["path"].endswith(".fastq.gz") and f["error"] is None for f in zipped["files"])
    assert sum(g["reads"] for g in zipped["groups"]) == 45


def test_the_mean_q_score_is_dorados_own() -> None:
    """Dorado's unit test: "$$////////" (Q3 twice, Q14 eight times) has mean Q 8.79143; the
    first 60 qualities of a longer read do not count."""
    assert phred_mean_qscore(bytes([3, 3] + [14] * 8)) == pytest.approx(8.79143, abs=1e-5)
    assert phred_mean_qscore(bytes([2] * 60 + [20] * 40)) == 20.0
    assert phred_mean_qscore(b"") == 0.0


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_hostile_output_is_listed_with_its_error_and_counts_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = "".join(f"@read{n} x\nACGT\n+\nIIII\n" for n in range(3))
    write(out / "pass" / "good.fastq", good)
    whole = gzip.compress(good.encode() * 50)
    write(out / "pass" / "cut.fastq.gz", whole[: len(whole) - 20])
    write(out / "pass" / "not.bam", b"this is not a BAM file at all\n")
    write(out / "pass" / "empty.fastq", b"")
    write(out / "pass" / "empty.bam", b"")
    write(out / "fail" / "short.fastq", "@r1\nACGT\n+\n")
    write(out / "fail" / "ragged.fastq", "@r1\nACGT\n+\nII\n")
    outside = write(tmp_path / "elsewhere" / "secret.fastq", good)
    (out / "pass" / "link.fastq").symlink_to(outside)
    odd = os.fsdecode(b"caf\xe9.fastq")
    write(out / "pass" / odd, "@odd\nAC\n+\nII\n")
    write(out / "notes.txt", "not reads")

    stats = job_stats(out, [])

    files = {f["path"]: (f["reads"], f["error"]) for f in stats["files"]}
    assert files["pass/good.fastq"] == (3, None)
    assert files["pass/empty.fastq"] == (0, None)
    assert files["pass/caf\\xe9.fastq"] == (1, None)
    assert files["pass/link.fastq"] == (None, "is a symlink: not read")
    for broken in ("pass/cut.fastq.gz", "pass/not.bam", "pass/empty.bam", "fail/short.fastq",
                   "fail/ragged.fastq"):  # fmt: skip
        reads, error = files[broken]
        assert reads is None and error, broken
    assert "cut short" in files["fail/short.fastq"][1]
    assert "differ in length" in files["fail/ragged.fastq"][1]
    assert len(files) == 9  # notes.txt is no reads file
    assert [(g["barcode"], g["pass"], g["reads"], g["bases"]) for g in stats["groups"]] == [
        (None, True, 4, 14)
    ]
    write_job_stats(out, stats)
    assert json.loads((out / STATS_FILE).read_text())["files"] == stats["files"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_an_output_folder_that_is_a_symlink_is_not_entered(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write(real / "pass" / "a.fastq", "@a\nAC\n+\nII\n")
    (tmp_path / "out").symlink_to(real)

    stats = job_stats(tmp_path / "out", [])

    assert stats["groups"] == [] and stats["files"] == []
    assert stats["errors"] == [f"{tmp_path / 'out'} is not a real folder"]


def test_without_pysam_bam_files_are_listed_and_fastq_still_counts(tmp_path: Path) -> None:
    job_input, job_output = make_job(tmp_path, files=1, reads=4)
    basecall(job_input, job_output, seconds_per_read=0, reads_format=ReadsFormat.BAM)
    write(job_output / "pass" / "extra.fastq", "@x\nACG\n+\nIII\n")
    script = (
        "import json, sys; sys.modules['pysam'] = None\n"
        "from pathlib import Path; from bcmanager.reads.stats import job_stats\n"
        f"print(json.dumps(job_stats(Path({str(job_output)!r}), [])))"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    stats = json.loads(done.stdout)
    files = {f["path"]: (f["reads"], f["error"]) for f in stats["files"]}
    assert files == {"pass/raw_0.bam": (None, PYSAM_MISSING), "pass/extra.fastq": (1, None)}
    assert [(g["reads"], g["bases"]) for g in stats["groups"]] == [(1, 3)]


def test_a_cancelled_walk_stops_and_says_so(tmp_path: Path) -> None:
    write(tmp_path / "out" / "pass" / "a.fastq", "@a\nAC\n+\nII\n")
    cancel = threading.Event()
    cancel.set()

    stats = job_stats(tmp_path / "out", [], cancel=cancel)

    assert stats["groups"] == []
    assert stats["errors"] == ["cut short: files after those listed were not looked at"]


def test_the_files_listed_are_bounded(tmp_path: Path) -> None:
    for index in range(MAX_FILES_LISTED + 5):
        write(tmp_path / "out" / "pass" / f"{index}.fastq", "@a\nAC\n+\nII\n")

    stats = job_stats(tmp_path / "out", [])

    assert len(stats["files"]) == MAX_FILES_LISTED
    assert stats["errors"] == ["5 more reads files not listed"]
    assert stats["groups"][0]["reads"] == MAX_FILES_LISTED + 5


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["dorado", "basecaller", "hac", "/in"], ("dorado", "hac")),
        (["/opt/bin/dorado", "basecaller", "-x", "cuda:0", "/models/dna_r10@v5/", "/in"],
         ("dorado", "dna_r10@v5")),
        (["sh", "-c", 'dorado basecaller --kit-name K sup "$1" > "$2/x.bam"', "sh"],
         ("dorado", "sup")),
        (["run_dorado.sh", "/in", "/out", "sup"], (None, None)),
        (["dorado", "basecaller"], ("dorado", None)),
    ],
)  # fmt: skip
def test_the_command_names_the_basecaller_and_its_model(
    words: list[str], expected: tuple[str | None, str | None]
) -> None:
    found = basecaller_from_command(words)
    assert (found.name, found.model) == expected
    assert found.version is None


def test_a_dorado_header_wins_over_the_command(tmp_path: Path) -> None:
    header = {
        "HD": {"VN": "1.6"},
        "PG": [
            {
                "ID": "basecaller",
                "PN": "dorado",
                "VN": "0.9.6+abc",
                "CL": "dorado basecaller sup x",
            },
            {"ID": "samtools", "PN": "samtools", "PP": "basecaller", "VN": "1.17"},
        ],
    }
    path = tmp_path / "out" / "calls.bam"
    path.parent.mkdir()
    with pysam.AlignmentFile(str(path), "wb", header=header) as bam:
        record = pysam.AlignedSegment(bam.header)
        record.query_name, record.flag, record.query_sequence = "r", 4, "ACGT"
        record.query_qualities = pysam.qualitystring_to_array("IIII")
        bam.write(record)

    stats = job_stats(path.parent, ["other", "basecaller", "hac"])

    assert stats["basecaller"] == {"name": "dorado", "version": "0.9.6+abc", "model": "sup"}
    assert stats["groups"][0]["q_hist"] == {"40": 1}


def test_a_real_agent_leaves_stats_that_the_manager_keeps_with_the_logs(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """``bcmanager agent`` with the simulated basecaller writing Dorado's BAM tree: each done
    job's bcm-stats.json ends up in its LOGOUTPUT_ folder (the merge moves only reads files),
    and the jobs' groups add up to the test's ledger."""
    for index in range(4):
        run.add(f"raw_{index}.pod5", 6)
    server = start_server()
    basecaller = (
        f"{sys.executable} -m bcmanager simulate basecaller --seconds-per-read 0 "
        f"--format bam --layout dorado --barcodes 2 --model {MODEL}"
    )
    log = tmp_path / "agent.log"
    with log.open("wb") as sink:
        agent = subprocess.Popen(
            [
                *(sys.executable, "-m", "bcmanager", "agent", "--manager", server.url),
                *("--engine-id", "gpu1", "--batch-size", "2", "--until-empty"),
                *("--command", f"{basecaller} {{input_dir}} {{output_dir}}"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        assert agent.wait(60) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
    wait_for(lambda: server.get("/status").json()["files"]["done"] == 4, 10, "4 done files")

    logs = [
        path for path in run.output_dir.iterdir()
        if (parsed := parse_job_folder(path.name)) and parsed.kind is FolderKind.LOGOUTPUT
    ]  # fmt: skip
    assert len(logs) == 2
    assert not list((run.output_dir / "pass").rglob(STATS_FILE))
    totals: Counter[Key] = Counter()
    for folder in logs:
        stats = json.loads((folder / STATS_FILE).read_text())
        assert stats["format"] == "bcmanager-job-stats" and stats["errors"] == []
        assert stats["basecaller"]["model"] == MODEL
        for group in stats["groups"]:
            totals[(group["barcode"], group["pass"])] += group["reads"]
        assert f"wrote {STATS_FILE}" in log.read_text()
    ledger = pod5_reads(run.input_dir)
    expected = Counter(
        (barcode_of(r.read_id, 2), dorado_mean_q(r.qualities) >= MIN_QSCORE) for r in ledger
    )
    assert totals == expected
    run_yield = rebuild_yield(logs).status()  # the manager's own reading of the files
    assert (run_yield.jobs, run_yield.jobs_without_stats) == (2, 0)
    assert (run_yield.reads, run_yield.bases) == (24, sum(len(r.bases) for r in ledger))
    assert run_yield.pass_reads == sum(n for (_, passed), n in expected.items() if passed)
    merged: Counter[Key] = Counter()
    for path in run.output_dir.glob("*/*/job_id_*.bam"):
        verdict, barcode = path.relative_to(run.output_dir).parts[:2]
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
            merged[(barcode, verdict == "pass")] += sum(1 for _ in bam.fetch(until_eof=True))
    assert merged == expected


async def run_agent(server: Server, command: str, **settings: Any) -> None:
    """An in-process agent with ``command`` against ``server``, until no work is left."""
    values = AgentSettings(
        manager=server.url,  # type: ignore[arg-type]
        engine_id="gpu1",
        command=command,
        until_empty=True,
        poll_interval=0.2,
        **settings,
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        await asyncio.wait_for(Agent(client, values).run(), 30)


WRITES_ONE_READ = 'mkdir -p "$1/pass" && printf \'@r\\nACGT\\n+\\nIIII\\n\' > "$1/pass/x.fastq"'


async def test_statistics_that_cannot_be_written_do_not_fail_the_job(
    run: Run, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run.add("raw_0.pod5", 2)
    server = start_server(BCM_ACCOUNT_READS="false")  # its reads are made up
    blocked = f'{WRITES_ONE_READ} && mkdir "$1/{STATS_FILE}"'

    await run_agent(server, f"sh -c {shlex.quote(blocked)} sh {{output_dir}}")

    assert server.get("/status").json()["files"]["done"] == 1
    assert f"could not write {STATS_FILE}" in caplog.text
    assert "completed DONE" in caplog.text
    (folder,) = [p for p in run.output_dir.iterdir() if p.name.startswith("LOGOUTPUT_")]
    assert not list(folder.glob(".*.partial"))


async def test_no_statistics_when_their_timeout_is_0(
    run: Run, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run.add("raw_0.pod5", 2)
    server = start_server(BCM_ACCOUNT_READS="false")  # its reads are made up

    await run_agent(
        server, f"sh -c {shlex.quote(WRITES_ONE_READ)} sh {{output_dir}}", stats_timeout=0
    )

    (folder,) = [p for p in run.output_dir.iterdir() if p.name.startswith("LOGOUTPUT_")]
    assert {p.name for p in folder.iterdir()} == {ATTEMPT_FILE, "pass"}
    assert "completed DONE" in caplog.text


async def test_statistics_that_take_too_long_are_cut_short_and_the_job_is_done(
    run: Run, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run.add("raw_0.pod5", 2)
    server = start_server(BCM_ACCOUNT_READS="false")  # its reads are made up
    writer = (
        "import pathlib, sys; out = pathlib.Path(sys.argv[1], 'pass'); out.mkdir()\n"
        "records = (f'@r{n}\\nACGT\\n+\\nIIII\\n' for n in range(20000))\n"
        "(out / 'big.fastq').write_text(''.join(records))\n"
        "(out / 'small.fastq').write_text('@s\\nAC\\n+\\nII\\n')"
    )
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(writer)} {{output_dir}}"

    await run_agent(server, command, stats_timeout=0.001)

    assert server.get("/status").json()["files"]["done"] == 1
    (folder,) = [p for p in run.output_dir.iterdir() if p.name.startswith("LOGOUTPUT_")]
    stats = json.loads((folder / STATS_FILE).read_text())
    # Cut short wherever the walk was: big.fastq is marked so, or was not reached at all.
    assert all(entry["error"] == CUT_SHORT for entry in stats["files"] if entry["reads"] is None)
    assert not any(entry["path"] == "pass/big.fastq" and entry["reads"] for entry in stats["files"])
    assert all(g["reads"] < 20000 for g in stats["groups"])
    assert "cut_short=True" in caplog.text


def test_odd_bytes_in_the_command_are_written_escaped(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    model = os.fsdecode(b"/models/m\xe9l")

    out = tmp_path / "out"
    write_job_stats(out, job_stats(out, ["dorado", "basecaller", model, "/in"]))

    written = json.loads((tmp_path / "out" / STATS_FILE).read_text())
    assert written["basecaller"]["model"] == "m\\xe9l"


async def test_a_lease_lost_while_reading_drops_the_job_and_writes_nothing(
    run: Run, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """The manager does not know the job (as after its lease ran out): the keepalive sent
    while the reads are read answers late, long before 20000 reads are counted."""
    server = start_server()
    output = tmp_path / "TMPOUTPUT_1_gpu1"
    write(output / "pass" / "big.fastq", "".join(f"@r{n}\nACGT\n+\nIIII\n" for n in range(20000)))
    settings = AgentSettings(
        manager=server.url,  # type: ignore[arg-type]
        engine_id="gpu1",
        command="true",
    )
    job = Assignment("1", tmp_path, output, 90.0, {})
    attempt = Attempt("1", "gpu1", ["dorado", "basecaller", "hac"], "", 0.0)

    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        lost = await Agent(client, settings)._record_stats(job, Lease(90.0, 1e12), attempt)

    assert lost is LeaseEnd.LATE
    assert sorted(p.name for p in output.iterdir()) == ["pass"]
