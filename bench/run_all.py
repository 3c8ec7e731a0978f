"""``make bench``: every figure of docs/benchmarks.md in one table.

The quick set by default (a few minutes on 2 cores); ``--full`` runs the sizes that the document
records. Each row sets bcmanager beside a baseline measured in the same run.
"""

from __future__ import annotations

import time
from dataclasses import replace

import account
import detection
import loop_lag
import memory
import request_cost
import root_status
import schedule
import sealed
import startup
import throughput
from _common import Row, arguments, machine, print_table, progress

FIGURES = (
    startup,
    throughput,
    request_cost,
    detection,
    memory,
    loop_lag,
    schedule,
    sealed,
    account,
    root_status,
)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    began = time.perf_counter()
    rows: list[Row] = []
    for number, figure in enumerate(FIGURES, start=1):
        progress(figure.__doc__.splitlines()[0])
        measured = figure.measure(args.full, args.workdir)
        rows += [replace(row, figure=f"{number}. {row.figure}") for row in measured]
    print(machine())
    print_table(rows)
    targets = [row for row in rows if row.passed is not None]
    met = sum(row.passed for row in targets)
    print(f"{met} of {len(targets)} targets met in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
