"""Figure 5: resident memory per tracked file.

A real ``bcmanager serve`` loads a run of N raw files; its VmRSS (from /proc) once /ready says
every file is known, less the VmRSS of the same service on an empty run (one raw file), divided
by N. Two shapes of run: every file pending, and half of them done (each done job is remembered
too, so that a retried completion is answered).

The baseline is the least a Python process can hold per file: a bare interpreter that reads the
same folder and keeps a dict from each raw file name to one value, measured the same way (its
VmRSS after, less before). File names are MinKNOW's (about 45 characters), which set much of
both figures. Target: under 300 bytes per file above the empty service.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from _common import (
    Row,
    SyntheticRun,
    bcmanager_serve,
    build_run,
    progress,
    run_alone,
)

QUICK_SIZE = 100_000
FULL_SIZE = 1_000_000
TARGET_BYTES = 300
SETTLE_SECONDS = 2.0  # after /ready, for the start-up's temporary lists to be freed

BARE_DICT = """
import os, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = rss()
names = dict.fromkeys(n for n in os.listdir(sys.argv[1]) if n.endswith(".pod5"))
print(rss() - before, len(names))
"""


def service_rss(run: SyntheticRun) -> tuple[int, int]:
    """VmRSS of ``bcmanager serve`` on ``run`` once every file is known, and its peak."""
    with bcmanager_serve(run) as server:
        server.start()
        server.wait_answering("/ready")
        time.sleep(SETTLE_SECONDS)
        return server.rss_bytes(), server.peak_rss_bytes()


def bare_dict_bytes(run: SyntheticRun) -> int:
    result = subprocess.run(
        [sys.executable, "-c", BARE_DICT, str(run.paths.input_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    grown, count = (int(value) for value in result.stdout.split())
    assert count == run.raw, (count, run.raw)
    return grown


def measure(full: bool, workdir: Path) -> list[Row]:
    size = FULL_SIZE if full else QUICK_SIZE
    empty = build_run(workdir, raw=1, label="mem-empty")
    try:
        empty_rss, _ = service_rss(empty)
    finally:
        empty.remove()
    rows = []
    for done, shape in ((0, "pending"), (size // 2, "half done")):
        progress(f"memory: building {size:,} raw files, {shape}")
        run = build_run(workdir, raw=size, done=done, label="mem")
        try:
            rss, peak = service_rss(run)
            bare = bare_dict_bytes(run)
        finally:
            run.remove()
        per_file = (rss - empty_rss) / size
        progress(
            f"memory {size:,} {shape}: service {rss / 2**20:.0f} MiB (peak {peak / 2**20:.0f}"
            f" MiB), empty service {empty_rss / 2**20:.0f} MiB, bare dict {bare / 2**20:.0f} MiB"
        )
        rows.append(
            Row(
                f"resident memory per file, {size:,} {shape}",
                f"{per_file:.0f} B/file",
                f"{bare / size:.0f} B/file",
                per_file / (bare / size),
                f"< {TARGET_BYTES} B/file",
                per_file < TARGET_BYTES,
            )
        )
    return rows


if __name__ == "__main__":
    run_alone(__doc__, measure)
