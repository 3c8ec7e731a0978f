"""Small files written whole: the records an agent leaves at the top of a job's output folder,
and those the manager keeps of a run (its seal, its completion command, its report).

Each is read by another process, possibly while it is written, and possibly after a crash: so
each is complete or absent, never half written.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path


def write_record(folder: Path, name: str, text: str, *, durable_name: bool = False) -> None:
    """Write ``text`` as ``folder/name``: complete or not at all (a temporary name, fsynced,
    renamed into place, removed if that fails). Never creates ``folder``: if it is gone (the
    lease ran out and the manager set it aside), it is no longer this agent's to write in.
    ``durable_name``: the folder is fsynced too, so the rename itself survives a power cut."""
    data = text.encode()
    partial = folder / f".{name}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, folder / name)
    except BaseException:
        with suppress(OSError):
            os.unlink(partial)
        raise
    if durable_name:
        fsync_folder(folder)


def fsync_folder(folder: Path) -> None:
    """Make the names in ``folder`` (a rename, a removal) durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
