"""New raw files, announced by the kernel through watchfiles (inotify on Linux).

Only the top of INPUT_DIR is watched: raw files live there, and the symlinks the manager writes
into job folders below it are none of the watcher's business. Network filesystems deliver no
events for writes made on other hosts; the manager's periodic rescan covers them.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import Change, awatch

from bcmanager.paths import is_raw_name, is_utf8, shown

log = logging.getLogger(__name__)

# watchfiles runs on anyio, which imports its asyncio backend when first used: some 10 ms that
# would stall the event loop just as the server starts to answer. Imported with this module.
importlib.import_module("anyio._backends._asyncio")

# watchfiles groups changes until none came for STEP_MS, and for at most DEBOUNCE_MS: a sequencer
# writing without pause must still have its finished files seen well within a second.
STEP_MS = 50
DEBOUNCE_MS = 300


def can_watch(input_dir: Path) -> bool:
    """Whether watchfiles can watch ``input_dir``: it takes only paths in UTF-8. A folder named
    otherwise is left to the rescan, and the log says so."""
    if is_utf8(str(input_dir)):
        return True
    log.warning(
        "INPUT_DIR %s is named in bytes that are not UTF-8, which the watcher cannot watch: new "
        "files are found by the rescan, every BCM_RESCAN_INTERVAL seconds",
        shown(str(input_dir)),
    )
    return False


async def watch_raw_files(
    input_dir: Path, on_change: Callable[[list[str], list[str]], Awaitable[None]]
) -> None:
    """Call ``on_change`` with the names of raw files created or written to, and of those
    deleted or moved away, until cancelled."""
    top = str(input_dir)

    def is_raw_change(change: Change, path: str) -> bool:
        return os.path.dirname(path) == top and is_raw_name(os.path.basename(path))

    async for changes in awatch(
        input_dir,
        watch_filter=is_raw_change,
        recursive=False,
        debounce=DEBOUNCE_MS,
        step=STEP_MS,
        force_polling=False,
    ):
        names = {(change is Change.deleted, os.path.basename(path)) for change, path in changes}
        await on_change(
            sorted(name for gone, name in names if not gone),
            sorted(name for gone, name in names if gone),
        )
