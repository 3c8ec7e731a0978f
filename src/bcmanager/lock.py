"""One manager per INPUT_DIR and one per OUTPUT_DIR (docs/design.md, invariant 6).

An exclusive ``flock`` on ``.bcmanager.lock`` in each of the two folders. The kernel drops it
when the holder dies, even by kill -9, so a restart never has to clean up. The file records who
holds it, so the second manager can say so. Two managers of two runs must not share OUTPUT_DIR
either: the second one's start-up would set the first one's running output aside as unclaimed.
On NFS, flock is carried by the server's lock manager; Lustre needs the ``flock`` mount option.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

from bcmanager.paths import RunPaths, shown
from bcmanager.roots import check_roots, make_output_dir


class AlreadyManaged(RuntimeError):
    """Another manager holds this INPUT_DIR or OUTPUT_DIR."""


class _Released(ABC):
    """``with`` releases what it holds, however the block ends."""

    @abstractmethod
    def release(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


class RunLock(_Released):
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path, address: str) -> RunLock:
        """Take the lock or raise AlreadyManaged naming the holder."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise _refusal(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "address": address,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return cls(path, fd)

    @staticmethod
    def holder(path: Path) -> str | None:
        """Who holds the lock now, or None when no manager does (nor can: the folder is not
        there). Creates nothing."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe_holder(fd)
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RunLocks(_Released):
    """The locks of INPUT_DIR and OUTPUT_DIR, held together and released together."""

    def __init__(self, input_lock: RunLock, output_lock: RunLock) -> None:
        self.input_lock = input_lock
        self.output_lock = output_lock

    def release(self) -> None:
        self.output_lock.release()
        self.input_lock.release()


def hold_run(paths: RunPaths, address: str) -> RunLocks:
    """Take the run for this manager: its roots checked (``roots.py``), OUTPUT_DIR made if
    missing, then INPUT_DIR's lock and OUTPUT_DIR's, always in that order. Raises UnusableRoot
    or AlreadyManaged, having released whatever it took.

    A manager that is refused changes nothing on disk: both locks are looked at before a folder
    is made or a lock taken (taking one writes the taker's record). Only when another manager
    takes a lock in the instant between the look and the lock does the lock itself refuse, and
    OUTPUT_DIR or the record of INPUT_DIR's lock file may then stay behind."""
    check_roots(paths)
    for lock_file in (paths.lock_file, paths.output_lock_file):
        holder = RunLock.holder(lock_file)
        if holder is not None:
            raise _refusal(lock_file, holder)
    make_output_dir(paths)
    input_lock = RunLock.acquire(paths.lock_file, address)
    try:
        output_lock = RunLock.acquire(paths.output_lock_file, address)
    except BaseException:
        input_lock.release()
        raise
    return RunLocks(input_lock, output_lock)


def _refusal(path: Path, holder: str) -> AlreadyManaged:
    return AlreadyManaged(
        f"{shown(str(path.parent))} is already managed by {holder}; stop that manager first"
    )


def _describe_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or "pid" not in record:
        return "another manager (its lock file does not say which)"
    return (
        f"pid {record['pid']} on {record.get('host', '?')} "
        f"(serving {record.get('address', '?')}, since {record.get('since', '?')})"
    )
