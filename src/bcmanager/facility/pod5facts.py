"""What a POD5 file says about itself: the run it belongs to and how it was sequenced.

MinKNOW writes a run-info table into every POD5 file (sample rate, flow cell, kit, the run's
ids) beside the reads table; both are small, so reading them costs a few milliseconds whatever
the size of the signal, which is never touched. A run's settings can then follow from its data
(the sample rate picks a model), and its report can count the reads that came in.

The file is untrusted input: it may be truncated, damaged or written by anything. Every fault
gives None and one log line, never an exception; the tables are validated before a value is
converted, because the native library aborts the whole process on some damaged strings rather
than raising. A value that is not a plain name (letters, digits and ``._:@+-``, as every kit,
flow cell and id is) is given as "" rather than passed on to an agent's command line.
Blocking I/O: call it from a worker thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pod5  # type: ignore[import-untyped]

from bcmanager.paths import shown

log = logging.getLogger(__name__)

_PLAIN = re.compile(r"[A-Za-z0-9._:@+-]{1,100}")


@dataclass(frozen=True, slots=True)
class Pod5Facts:
    """What one POD5 file's run-info and reads tables say (a file merged from several
    acquisitions: its first)."""

    sample_rate: int | None  # samples per second; None: the file does not say
    flow_cell_product: str  # e.g. FLO-PRO114M
    sequencing_kit: str  # e.g. SQK-LSK114, upper-case as ONT's tools name kits
    flow_cell_id: str  # e.g. PAO12345
    protocol_run_id: str  # MinKNOW's protocol run (a uuid)
    acquisition_id: str  # the run id MinKNOW puts in file names (40 hex digits)
    reads: int  # reads in this file


def read_facts(path: Path, *, quiet: bool = False) -> Pod5Facts | None:
    """The facts of the POD5 file at ``path``; None (logged, unless ``quiet``: a caller that
    reads a run's every file counts them instead) if it cannot be read as one."""
    try:
        with pod5.Reader(path) as reader:
            run_info = reader.run_info_table.read_all()
            run_info.validate(full=True)
            rows = run_info.slice(0, 1).to_pylist()
            table = reader.read_table
            reads = sum(table.get_batch(i).num_rows for i in range(table.num_record_batches))
        if not rows:
            raise ValueError("its run-info table is empty")
        return _facts(rows[0], reads)
    except Exception as error:  # any fault of a file we did not write: it has no facts
        if quiet:
            return None
        log.warning("cannot read the run info of %s: %s", shown(str(path)), _reason(error))
        return None


def _facts(row: Mapping[str, object], reads: int) -> Pod5Facts:
    tags = _tags(row.get("context_tags"))
    sample_rate = row.get("sample_rate")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        frequency = tags.get("sample_frequency", "")
        sample_rate = int(frequency) if frequency.isdigit() and int(frequency) > 0 else None
    kit = _plain(row.get("sequencing_kit")) or _plain(tags.get("sequencing_kit"))
    return Pod5Facts(
        sample_rate=sample_rate,
        flow_cell_product=_plain(row.get("flow_cell_product_code")).upper(),
        sequencing_kit=kit.upper(),
        flow_cell_id=_plain(row.get("flow_cell_id")),
        protocol_run_id=_plain(row.get("protocol_run_id")),
        acquisition_id=_plain(row.get("acquisition_id")),
        reads=reads,
    )


def _tags(value: object) -> dict[str, str]:
    """A map column as Arrow gives it to Python: a list of (key, value) pairs."""
    if not isinstance(value, list):
        return {}
    return {
        key: item
        for pair in value
        if isinstance(pair, tuple) and len(pair) == 2
        for key, item in [pair]
        if isinstance(key, str) and isinstance(item, str)
    }


def _plain(value: object) -> str:
    return value.strip() if isinstance(value, str) and _PLAIN.fullmatch(value.strip()) else ""


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
