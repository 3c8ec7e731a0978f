"""One manager per INPUT_DIR (docs/design.md, invariant 6).

An exclusive ``flock`` on ``INPUT_DIR/.bcmanager.lock``. The kernel drops it when the holder
dies, even by kill -9, so a restart never has to clean up. The file records who holds it, so the
second manager can say so. On NFS, flock is carried by the server's lock manager; Lustre needs
the ``flock`` mount option.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self


class AlreadyManaged(RuntimeError):
    """Another manager holds this INPUT_DIR."""


class RunLock:
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
            raise AlreadyManaged(
                f"{path.parent} is already managed by {holder}; stop that manager first"
            ) from None
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
        """Who holds the lock now, or None when no manager does. Creates nothing."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


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
