"""Figure 8: a restart of a root that holds many finished runs, sealed.

Three roots, each with the same live run (MinKNOW's layout, a few raw files pending):
``none`` holds nothing else; ``sealed`` holds 20 finished runs of 2,000 raw files each, every
file basecalled, each run sealed by a manager that served it to the end (its ``bcm-run.json``);
``unsealed`` holds the same 20 finished runs without their seals, so each start reads them back
from their folders (and seals them again: the seals are removed before each of its starts).

Each figure is the median over several starts of a real ``bcmanager serve`` of the seconds from
uvicorn starting the app's lifespan to the first /assignwork that offers a file (as in figure 1).
Target: ``sealed`` within 1.5x of ``none``. ``unsealed`` shows what the seals save.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from _common import (
    RAW_BYTES,
    Row,
    SyntheticRun,
    bcmanager_serve,
    mark_done,
    median,
    ms,
    progress,
    raw_names,
    run_alone,
    write_files,
)
from startup import first_offer

from bcmanager.paths import SEAL_FILE, RunPaths

FINISHED_RUNS = 20
FILES_PER_RUN = 2_000
LIVE_FILES = 10
QUICK_REPEATS = 5
FULL_REPEATS = 11
POLL = 0.005
RUN_FOLDER = "20241201_1200_X{n}_FAS{n:05d}_0123abcd"
SUMMARY = "final_summary_FAS{n:05d}_0123abcd_89abcdef.txt"


def build_root(workdir: Path, label: str, finished: int) -> SyntheticRun:
    """A root with the live run and ``finished`` finished runs (not sealed yet)."""
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix=f"bcm-bench-{label}-", dir=workdir))
    paths = RunPaths(root / "input", root / "output")
    live = paths.input_dir / "exp" / "live" / RUN_FOLDER.format(n=0) / "pod5"
    live.mkdir(parents=True)
    write_files(live, raw_names(LIVE_FILES), RAW_BYTES)
    for n in range(1, finished + 1):
        run = Path("exp") / f"sample{n}" / RUN_FOLDER.format(n=n)
        raw = paths.input_dir / run / "pod5"
        output = paths.output_dir / run
        for folder in (raw, output / "pass", output / "fail"):
            folder.mkdir(parents=True)
        names = raw_names(FILES_PER_RUN, start=n * FILES_PER_RUN)
        write_files(raw, names, RAW_BYTES)
        mark_done(RunPaths(raw, output), names)
        (paths.input_dir / run / SUMMARY.format(n=n)).write_text(
            f"pod5_files_in_final_dest={FILES_PER_RUN}\n"
        )
    files = LIVE_FILES + finished * FILES_PER_RUN
    return SyntheticRun(root, paths, files, files - LIVE_FILES, time.perf_counter() - started)


def seals(root: SyntheticRun) -> list[Path]:
    return sorted(root.paths.output_dir.rglob(SEAL_FILE))


def seal_all(root: SyntheticRun) -> None:
    """Serve the root until every finished run is sealed, then stop."""
    with bcmanager_serve(root) as server:
        server.start()
        deadline = time.monotonic() + 300
        while len(seals(root)) < FINISHED_RUNS:
            server.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seals(root))} runs sealed")
            time.sleep(0.1)


def start(root: SyntheticRun) -> float:
    with bcmanager_serve(root) as server:
        return first_offer(server, POLL).offered


def measure(full: bool, workdir: Path) -> list[Row]:
    repeats = FULL_REPEATS if full else QUICK_REPEATS
    progress(f"sealed runs: building 3 roots ({FINISHED_RUNS} x {FILES_PER_RUN:,} raw files)")
    roots = {
        "none": build_root(workdir, "none", 0),
        "sealed": build_root(workdir, "sealed", FINISHED_RUNS),
        "unsealed": build_root(workdir, "unsealed", FINISHED_RUNS),
    }
    try:
        seal_all(roots["sealed"])
        progress(f"sealed runs: {len(seals(roots['sealed']))} sealed; {repeats} starts of each")
        times: dict[str, list[float]] = {label: [] for label in roots}
        for _ in range(repeats):
            for label, root in roots.items():
                if label == "unsealed":
                    for seal in seals(root):
                        seal.unlink()
                times[label].append(start(root))
    finally:
        for root in roots.values():
            shutil.rmtree(root.root, ignore_errors=True)
    none, sealed, unsealed = (median(times[label]) for label in ("none", "sealed", "unsealed"))
    progress(
        f"sealed runs: first offer after {ms(sealed)} with {FINISHED_RUNS} sealed runs, "
        f"{ms(none)} with none, {ms(unsealed)} with them unsealed"
    )
    finished = f"{FINISHED_RUNS} finished runs of {FILES_PER_RUN:,} files"
    return [
        Row(
            f"start-up to first offer, {finished}, sealed (vs none)",
            ms(sealed),
            ms(none),
            sealed / none,
            "<= 1.5",
            sealed <= 1.5 * none,
        ),
        Row(
            f"start-up to first offer, {finished}, unsealed (vs none)",
            ms(unsealed),
            ms(none),
            unsealed / none,
            "",
            None,
        ),
    ]


if __name__ == "__main__":
    run_alone(__doc__, measure)
