"""The simulator writes real POD5 files and stands in for a sequencer and a basecaller."""

from __future__ import annotations

import time
from pathlib import Path

import pod5

from bcmanager.simulate import POD5_SIGNATURE, write_pod5


def test_write_pod5_round_trips_read_ids_and_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "reads.pod5"
    started = time.perf_counter()
    read_ids = write_pod5(path, 5, seed=3)
    elapsed = time.perf_counter() - started

    with pod5.Reader(path) as reader:
        assert [str(record.read_id) for record in reader.reads()] == read_ids
    data = path.read_bytes()
    assert data.startswith(POD5_SIGNATURE)
    assert data.endswith(POD5_SIGNATURE)
    assert len(set(read_ids)) == 5
    assert elapsed < 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["reads.pod5"]


def test_write_pod5_ids_follow_seed_and_name(tmp_path: Path) -> None:
    (tmp_path / "again").mkdir()
    first = write_pod5(tmp_path / "a.pod5", 3, seed=1)
    assert write_pod5(tmp_path / "again" / "a.pod5", 3, seed=1) == first
    assert set(write_pod5(tmp_path / "b.pod5", 3, seed=1)).isdisjoint(first)
    assert set(write_pod5(tmp_path / "c.pod5", 3, seed=2)).isdisjoint(first)
