"""The floor for figure 4: find complete raw files in a folder with nothing else going on.

``python bench/bare_detector.py events FOLDER`` waits for inotify events through watchfiles with
the manager's own settings (bcmanager.watcher: non-recursive, same step and debounce);
``python bench/bare_detector.py poll FOLDER SECONDS`` lists the folder every SECONDS instead.
Either way each changed raw file is probed with bcmanager.core.scan.probe, and the first time one is
complete a line ``<name> <time.monotonic()>`` is printed (CLOCK_MONOTONIC is shared by all
processes of the machine, so the benchmark compares it with its own clock).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from watchfiles import Change, awatch

from bcmanager.core.scan import probe
from bcmanager.paths import is_raw_name
from bcmanager.watcher import DEBOUNCE_MS, STEP_MS


def report(folder: Path, names: Iterable[str], seen: set[str]) -> None:
    for name in names:
        if name in seen:
            continue
        found = probe(folder / name)
        if found is not None and found.complete:
            seen.add(name)
            print(name, time.monotonic(), flush=True)


async def events(folder: Path) -> None:
    seen: set[str] = set()

    def is_raw_change(change: Change, path: str) -> bool:
        return change is not Change.deleted and is_raw_name(os.path.basename(path))

    async for changes in awatch(
        folder, watch_filter=is_raw_change, recursive=False, debounce=DEBOUNCE_MS, step=STEP_MS
    ):
        report(folder, sorted({os.path.basename(path) for _, path in changes}), seen)


def poll(folder: Path, interval: float) -> None:
    seen: set[str] = set()
    while True:
        time.sleep(interval)
        with os.scandir(folder) as entries:
            report(folder, [entry.name for entry in entries if is_raw_name(entry.name)], seen)


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    print("ready", time.monotonic(), flush=True)
    if mode == "events":
        asyncio.run(events(folder))
    else:
        poll(folder, float(sys.argv[3]))


if __name__ == "__main__":
    main()
