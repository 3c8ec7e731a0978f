"""What a POD5 file says about itself, read from real POD5 files; a damaged one gives None."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pod5  # type: ignore[import-untyped]
import pytest

from bcmanager.core.manager import Manager
from bcmanager.core.scan import POD5_SIGNATURE
from bcmanager.facility.pod5facts import Pod5Facts, read_facts
from bcmanager.facility.routing import FACTS_ATTEMPTS
from bcmanager.sim.sequencer import FLOW_CELL_ID, SAMPLE_RATE, RunIdentity, write_pod5
from conftest import Run, serving


def test_a_simulated_file_says_how_it_was_sequenced(tmp_path: Path) -> None:
    path = tmp_path / "a.pod5"
    write_pod5(path, 7, seed=3)
    run = RunIdentity.from_seed(3)

    assert read_facts(path) == Pod5Facts(
        sample_rate=SAMPLE_RATE,
        flow_cell_product="FLO-PRO114M",
        sequencing_kit="SQK-LSK114",  # written lower-case, as MinKNOW does
        flow_cell_id=FLOW_CELL_ID,
        protocol_run_id=run.protocol_run_id,
        acquisition_id=run.acquisition_id,
        reads=7,
    )


def test_the_reads_of_a_file_of_many_batches_are_all_counted(tmp_path: Path) -> None:
    path = tmp_path / "many.pod5"
    write_pod5(path, 2500, samples_per_read=10)  # the writer cuts batches of 1000 reads
    facts = read_facts(path)
    assert facts is not None and facts.reads == 2500


def test_a_truncated_or_foreign_file_gives_none_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = tmp_path / "whole.pod5"
    write_pod5(whole, 3)
    data = whole.read_bytes()
    cases = {
        "half.pod5": data[: len(data) // 2],
        "all_but_the_end.pod5": data[:-8],
        "signature_only.pod5": data[:8],
        "empty.pod5": b"",
        "text.pod5": b"not a pod5 file\n" * 100,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.pod5").mkdir()

    with caplog.at_level(logging.WARNING, logger="bcmanager.facility.pod5facts"):
        for name in [*cases, "folder.pod5", "absent.pod5"]:
            assert read_facts(tmp_path / name) is None, name

    assert len(caplog.records) == len(cases) + 2
    assert all("cannot read the run info of" in record.message for record in caplog.records)


def test_damaged_files_never_take_the_process_down(tmp_path: Path) -> None:
    """Bytes flipped inside a file can make the native library abort the process while it
    converts a damaged string; 1000 damaged copies are read in a child, which must live."""
    write_pod5(tmp_path / "whole.pod5", 5)
    script = textwrap.dedent(
        """
        import logging, random, sys
        from pathlib import Path
        from bcmanager.facility.pod5facts import read_facts
        logging.disable()
        data = Path("whole.pod5").read_bytes()
        damaged = Path("damaged.pod5")
        facts = 0
        for seed in range(1000):
            rng = random.Random(seed)
            copy = bytearray(data)
            for _ in range(rng.choice([1, 5, 20, 100])):
                copy[rng.randrange(8, len(copy) - 8)] = rng.randrange(256)
            damaged.write_bytes(bytes(copy))
            facts += read_facts(damaged) is not None
        print(facts)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert 0 < int(child.stdout) < 1000  # some damage only hit the signal, some the tables


def test_odd_values_are_not_passed_on(tmp_path: Path) -> None:
    """A value that is not a plain name would reach an agent's command line: it is ''."""
    epoch = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    info = pod5.RunInfo(
        acquisition_id="0123abcd",
        acquisition_start_time=epoch,
        adc_max=4095,
        adc_min=-4096,
        context_tags={"sample_frequency": "4000"},
        experiment_name="odd",
        flow_cell_id="PAO\x1b[31m",
        flow_cell_product_code="flo-min114",
        protocol_name="odd",
        protocol_run_id="x" * 101,
        protocol_start_time=epoch,
        sample_id="odd",
        sample_rate=0,
        sequencing_kit="sqk lsk114; rm -rf /",
        sequencer_position="X1",
        sequencer_position_type="MinION",
        software="a test",
        system_name="odd",
        system_type="odd",
        tracking_id={},
    )
    read = pod5.Read(
        read_id=uuid.UUID(int=1, version=4),
        pore=pod5.Pore(channel=1, well=1, pore_type="not_set"),
        calibration=pod5.Calibration(offset=0.0, scale=1.0),
        read_number=0,
        start_sample=0,
        median_before=200.0,
        end_reason=pod5.EndReason.from_reason_with_default_forced(
            pod5.EndReasonEnum.SIGNAL_POSITIVE
        ),
        run_info=info,
        signal=np.zeros(100, dtype=np.int16),
    )
    path = tmp_path / "odd.pod5"
    with pod5.Writer(path) as writer:
        writer.add_reads([read])

    facts = read_facts(path)

    assert facts == Pod5Facts(
        sample_rate=4000,  # from the context tags when the column says 0
        flow_cell_product="FLO-MIN114",
        sequencing_kit="",
        flow_cell_id="",
        protocol_run_id="",
        acquisition_id="0123abcd",
        reads=1,
    )


async def sample_rates(manager: Manager, batches: int) -> list[int | None]:
    """The sample rate that each of ``batches`` one-file batches in turn carries."""
    rates = []
    async with serving(manager) as client:
        for _ in range(batches):
            params = {"engineid": "gpu0", "batchsize": 1}
            rates.append((await client.get("/assignwork", params=params)).json()["sample_rate"])
    return rates


def damage(run: Run, names: list[str]) -> None:
    """Complete files by the manager's rule (the signature at both ends), POD5 by no other."""
    for name in names:
        path = run.input_dir / name
        written = path.stat()
        path.write_bytes(POD5_SIGNATURE + bytes(100) + POD5_SIGNATURE)
        os.utime(path, ns=(written.st_atime_ns, written.st_mtime_ns))  # still the oldest


async def test_the_first_whole_file_among_the_first_batches_gives_the_run_its_facts(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    names = run.add_many(4)
    damage(run, names[:2])  # the oldest, leased first
    with caplog.at_level(logging.WARNING, logger="bcmanager.facility.pod5facts"):
        rates = await sample_rates(Manager(run.settings()), 4)
    assert rates == [None, None, SAMPLE_RATE, SAMPLE_RATE]
    assert len(caplog.records) == 2


async def test_a_run_of_unreadable_files_costs_a_few_reads_not_one_per_batch(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    damage(run, run.add_many(6))
    with caplog.at_level(logging.WARNING, logger="bcmanager.facility.pod5facts"):
        rates = await sample_rates(Manager(run.settings()), 6)
    assert rates == [None] * 6
    assert len(caplog.records) == FACTS_ATTEMPTS
